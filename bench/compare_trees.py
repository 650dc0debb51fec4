"""How the ``--compare`` benches report each tree's rounds: its short commit and its median.

Shared by ``bench_bridge_cpu.py`` and ``bench_stream_cpu.py`` (run as scripts from this folder),
so two trees' figures of one interleaved run are always printed the same way.
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path


def tree_commit(tree: Path) -> str:
    """The short commit ``tree`` has checked out ('' if it is not a git work tree)."""
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()


def tree_summary(tree: Path, values: Sequence[float]) -> str:
    """One line: the tree, its commit, the median of its rounds and every round's figure."""
    return (f"  {tree} ({tree_commit(tree)}): median {statistics.median(values):.1f} "
            f"(all {', '.join(f'{v:.1f}' for v in values)})")
