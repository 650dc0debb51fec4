"""``vitalchain verify``: check proof bundles from files or stdin.

Exit status is the worst over all bundles: 0 valid or pending, 1 invalid, 2 unreadable input.
:func:`register` adds it to the ``vitalchain`` command (``vitalchain/app/cli.py``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from vitalchain.core.verify import VerificationReport, verify_bundle


class _InputError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _InputError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two readers could pick different values; refuse rather than guess.
            raise _InputError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_json(text: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys (raises ``ValueError``)."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def verify_source(name: str, rpc_url: str | None) -> VerificationReport:
    """Read and verify one bundle from a path, or ``-`` for stdin."""
    label = "<stdin>" if name == "-" else name
    try:
        if name == "-":
            data: bytes = sys.stdin.buffer.read()
        else:
            with open(name, "rb") as fh:
                data = fh.read()
        bundle = load_json(data)
    except OSError as exc:
        return VerificationReport(source=label, error=f"cannot read: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        return VerificationReport(source=label, error=f"not valid JSON: {exc}")
    return verify_bundle(bundle, rpc_url, source=label)


_MARK = {True: "ok  ", False: "FAIL", None: "skip"}


def format_report(report: VerificationReport) -> str:
    """Human-readable lines for one report."""
    head = f"{report.source}: {report.status.upper()}"
    if report.error is not None:
        return f"{head}: {report.error}"
    if report.failed_step:
        head += f" (failed step: {report.failed_step})"
    elif report.status == "valid" and not report.anchor_checked:
        head += " (offline: hashes valid, anchor not checked)"
    lines = [head, f"  verdict: {report.summary}"]
    lines += [f"  {_MARK[s.ok]}  {s.step:<18} {s.detail}" for s in report.steps]
    return "\n".join(lines)


@click.command("verify")
@click.argument("bundles", nargs=-1, metavar="[BUNDLE.json ...]")
@click.option("--rpc", "rpc_url", metavar="URL", default=None,
              help="Ethereum JSON-RPC URL; also check the anchor transaction on chain.")
@click.option("--json", "as_json", is_flag=True, help="Print per-bundle step results as JSON.")
def verify_command(bundles: tuple[str, ...], rpc_url: str | None, as_json: bool) -> None:
    """Verify vitalchain-proof/1 bundles (files, or '-' / nothing for stdin).

    Exit status: 0 all valid (or pending: valid but not anchored yet), 1 some bundle is
    invalid, 2 some input is unreadable.
    """
    reports = [verify_source(name, rpc_url) for name in (bundles or ("-",))]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for r in reports:
            click.echo(format_report(r))
    sys.exit(max(r.exit_code for r in reports))


def register(cli_group: click.Group) -> None:
    """Add the ``verify`` command to ``cli_group`` (the ``vitalchain`` click group)."""
    cli_group.add_command(verify_command, name="verify")
