"""``vitalchain audit --from T1 --to T2``.

Exit status: 0 clean, 1 findings (something altered, deleted, inserted, missing or unanchored),
2 could not run (or bad arguments), 3 nothing sealed in the range (nothing judged).  Sequence
gaps are information only (docs/DEVICES.md allows them) and never change the status.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from vitalchain.config import Settings

EXIT_FINDINGS = 1
EXIT_CANNOT_RUN = 2
EXIT_NOTHING_SEALED = 3


class _ProgressLine:
    """``windows checked N/M`` on stderr, rewritten in place on a terminal, every 5% otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_step = -1

    def __call__(self, done: int, total: int) -> None:
        if self.quiet or total == 0:
            return
        step = done * 20 // total
        if self.tty:
            click.echo(f"\rwindows checked {done}/{total}", err=True, nl=done == total)
        elif step != self.last_step or done == total:
            click.echo(f"windows checked {done}/{total}", err=True)
        self.last_step = step


@click.command("audit")
@click.option("--from", "start", required=True, metavar="T1",
              help="Start of the range: ISO 8601 (naive = UTC) or epoch microseconds.")
@click.option("--to", "end", required=True, metavar="T2", help="End of the range (inclusive).")
@click.option("--rpc", default=None, metavar="URL",
              help="Ethereum JSON-RPC endpoint [default: settings.eth_rpc_url].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Also write the machine-readable report to FILE.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--settle", default=10.0, show_default=True, type=click.FloatRange(0, 600),
              metavar="SECONDS", help="How long to wait for writes a running stream has in "
              "flight at the horizon before calling them findings.")
@click.pass_obj
def audit_command(settings: Settings, start: str, end: str, rpc: str | None,
                  json_path: Path | None, quiet: bool, settle: float) -> None:
    """Check every reading, window and checkpoint of a time range against ledger and chain.

    Judges the window log as it was when the audit started (the horizon, printed); windows a
    running stream seals meanwhile are counted, not judged.  Exit status: 0 clean, 1 findings,
    2 could not run, 3 nothing sealed in the range.  Sequence gaps are reported as information.
    """
    from vitalchain.audit.engine import AuditUnavailable, run_audit
    from vitalchain.audit.timearg import parse_range
    from vitalchain.core.timeutil import TimeArgError

    try:
        start_us, end_us = parse_range(start, end)
    except TimeArgError as exc:
        raise click.UsageError(str(exc)) from exc
    if rpc is not None and not rpc.startswith(("http://", "https://")):
        raise click.UsageError(f"--rpc {rpc!r} must be an http(s):// URL")
    try:
        report = asyncio.run(run_audit(settings, start_us, end_us, rpc_url=rpc,
                                       progress=_ProgressLine(quiet), settle_s=settle))
    except AuditUnavailable as exc:
        click.echo(f"audit could not run: {exc}", err=True)
        sys.exit(EXIT_CANNOT_RUN)
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as exc:
            click.echo(f"cannot write {json_path}: {exc.strerror}", err=True)
            sys.exit(EXIT_CANNOT_RUN)
    click.echo(report.to_text())
    if report.exit_code:
        sys.exit(report.exit_code)


def register(main: click.Group) -> None:
    main.add_command(audit_command)
