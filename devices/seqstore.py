"""Per-device sequence numbers that never repeat, even across a crash.

A reading's ``(device_id, seq)`` is its identity downstream (dedup, proofs), so a restarted
simulator must continue above every seq it ever used. Writing the counter after every reading
would cost an fsync per reading; instead a device *reserves* a block: the file records the first
seq not yet reserved, and is rewritten (atomically, fsync'd) before the block runs out. After a
crash the device resumes at the reserved mark, skipping at most one block; a clean ``close``
records the exact next seq so a normal restart leaves no gap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vitalchain.config import Settings

DEFAULT_BLOCK = 64


def seq_dir(settings: Settings) -> Path:
    return settings.state_dir / "devices" / "seq"


class SeqCounter:
    """The seq source of one device, backed by ``<state_dir>/devices/seq/<device_id>.json``."""

    def __init__(self, path: Path, block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = path
        self.block = block
        self._next = self._read()
        self._reserved = self._next

    @classmethod
    def for_device(cls, settings: Settings, device_id: str, block: int = DEFAULT_BLOCK) -> SeqCounter:
        return cls(seq_dir(settings) / f"{device_id}.json", block)

    def _read(self) -> int:
        if not self.path.is_file():
            return 0
        try:
            value = json.loads(self.path.read_text())["next_seq"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path} is corrupt ({exc}); refusing to reuse seq numbers") from exc
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{self.path}: next_seq must be a non-negative integer")
        return value

    def _write(self, value: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump({"next_seq": value}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    @property
    def peek(self) -> int:
        """The seq the next call to ``take`` returns."""
        return self._next

    def take(self) -> int:
        if self._next >= self._reserved:
            self._reserved = self._next + self.block
            self._write(self._reserved)
        value = self._next
        self._next += 1
        return value

    def close(self) -> None:
        """Record the exact next seq (only ever lowers the mark to what was really used)."""
        if self._reserved != self._next:
            self._write(self._next)
            self._reserved = self._next
