"""``vitalchain verify``: check proof documents of every kind from files or stdin.

Kinds: reading bundles, consistency documents and access-entry proofs (docs/PROOFS.md), chosen by
each document's ``format``. Exit status is the worst over all inputs: 0 valid or pending, 1 invalid,
2 unreadable input.
"""

from __future__ import annotations

import json
import sys

import click

from vitalchain.core.verify import JsonInputError, VerificationReport, load_json, verify_document


def verify_text(data: bytes | str, label: str, rpc_url: str | None, *,
                expect: str | None = None) -> VerificationReport:
    """Parse (strictly) and verify one document; ``expect`` pins its format."""
    try:
        doc = load_json(data)
    except JsonInputError as exc:
        return VerificationReport(source=label, error=str(exc))
    if expect is not None and (not isinstance(doc, dict) or doc.get("format") != expect):
        got = doc.get("format") if isinstance(doc, dict) else None
        return VerificationReport(source=label, error=f"format is {got!r}, expected {expect!r}")
    rpc = None
    if rpc_url is not None:
        from vitalchain.storage.chainrpc import JsonRpc  # web3 only when the chain is asked

        rpc = JsonRpc(rpc_url)
    return verify_document(doc, rpc, source=label)


def verify_source(name: str, rpc_url: str | None) -> VerificationReport:
    """Read and verify one document from a path, or ``-`` for stdin."""
    label = "<stdin>" if name == "-" else name
    try:
        if name == "-":
            data: bytes = sys.stdin.buffer.read()
        else:
            with open(name, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        return VerificationReport(source=label, error=f"cannot read: {exc.strerror or exc}")
    return verify_text(data, label, rpc_url)


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
@click.argument("documents", nargs=-1, metavar="[DOCUMENT.json ...]")
@click.option("--rpc", "rpc_url", metavar="URL", default=None,
              help="Ethereum JSON-RPC URL; also check the anchor transactions on chain.")
@click.option("--json", "as_json", is_flag=True, help="Print per-document step results as JSON.")
def verify_command(documents: tuple[str, ...], rpc_url: str | None, as_json: bool) -> None:
    """Verify proof documents (files, or '-' / nothing for stdin): reading bundles
    (vitalchain-proof/1), consistency documents (vitalchain-consistency/1) and access-entry proofs
    (vitalchain-access-proof/1).

    Exit status: 0 all valid (or pending: valid but not anchored yet), 1 some document is
    invalid, 2 some input is unreadable.
    """
    reports = [verify_source(name, rpc_url) for name in (documents or ("-",))]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for r in reports:
            click.echo(format_report(r))
    sys.exit(max(r.exit_code for r in reports))


def register(cli_group: click.Group) -> None:
    """Add the ``verify`` command to ``cli_group`` (the ``vitalchain`` click group)."""
    cli_group.add_command(verify_command, name="verify")
