"""``vitalchain anchor ...`` and ``vitalchain proof ...`` commands."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from vitalchain.config import Settings


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


@click.group("anchor")
def anchor_group() -> None:
    """Anchor checkpoints of the window log on Ethereum."""


@anchor_group.command("deploy")
@click.option("--force", is_flag=True, help="Deploy a new contract even if one is recorded.")
@click.pass_obj
def deploy_command(settings: Settings, force: bool) -> None:
    """Deploy VitalAnchor and record its address in <state_dir>/settings.env."""
    from vitalchain.anchor.chain import AnchorKeyError, ChainError
    from vitalchain.anchor.deploy import deploy

    try:
        result = deploy(settings, force=force)
    except (AnchorKeyError, ChainError) as exc:
        _fail(exc)
    click.echo(result.message)
    if result.deployed:
        click.echo(f"  tx {result.tx_hash} block {result.block_number} gas {result.gas_used}")


@anchor_group.command("compile")
@click.option("--check", is_flag=True, help="Only compare with the committed artifact (exit 1 if it differs).")
def compile_command(check: bool) -> None:
    """Recompile VitalAnchor.sol with the pinned solc; write (or --check) the committed artifact."""
    from vitalchain.anchor.compile import ARTIFACT_PATH, compile_source, matches_committed, write_artifact
    from vitalchain.app.stack import tools

    artifact = compile_source(tools.solcjs())
    if check:
        same = matches_committed(artifact)
        click.echo("committed artifact matches the source" if same else
                   "committed artifact DIFFERS from what the source compiles to")
        sys.exit(0 if same else 1)
    write_artifact(artifact)
    click.echo(f"wrote {ARTIFACT_PATH} ({len(artifact['deployedBytecode']) // 2 - 1} bytes deployed)")


@anchor_group.command("run")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds between steps.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_obj
def run_command(settings: Settings, poll: float, quiet: bool) -> None:
    """Follow the window log and anchor checkpoints until interrupted (SIGINT/SIGTERM)."""
    from vitalchain.app.preflight import require

    require(settings, "eth")  # before importing web3: seconds on a loaded machine
    from vitalchain.anchor.chain import AnchorKeyError, ChainError
    from vitalchain.anchor.worker import LedgerDivergedError, Progress, WorkerLockedError, run_worker
    from vitalchain.app.workers import register_worker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    last_error: list[str | None] = [None]

    def report(progress: Progress) -> None:
        if progress.error and progress.error != last_error[0]:
            click.echo(f"chain step failed (retrying): {progress.error}", err=True)
        last_error[0] = progress.error
        if not quiet:
            for event in progress.events:
                click.echo(f"{event}  [{progress.line()}]")

    record = register_worker(settings, "anchor")
    try:
        run_worker(settings, stop, report, poll_interval=poll)
    except (AnchorKeyError, ChainError, LedgerDivergedError, WorkerLockedError) as exc:
        _fail(exc)
    finally:
        record.remove()


@anchor_group.command("status")
@click.pass_obj
def status_command(settings: Settings) -> None:
    """Checkpoint counts by status and the latest anchored checkpoint (JSON)."""
    from vitalchain.anchor.chain import ChainError
    from vitalchain.anchor.worker import status

    try:
        click.echo(json.dumps(status(settings), indent=2))
    except ChainError as exc:
        _fail(exc)


class _ReadingDefault(click.Group):
    """``vitalchain proof DEVICE SEQ`` means ``vitalchain proof reading DEVICE SEQ``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["reading", *args]
        return super().parse_args(ctx, args)


def _write(doc: dict[str, Any], output: Path | None) -> None:
    from vitalchain.anchor.proofs import dumps

    text = dumps(doc)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


@click.group("proof", cls=_ReadingDefault)
def proof_group() -> None:
    """Proofs: `proof DEVICE SEQ`, `proof --at TS_US DEVICE`, `proof consistency S1 S2`."""


@proof_group.command("reading")
@click.argument("device_id")
@click.argument("seq", required=False, type=click.IntRange(min=0))
@click.option("--at", "ts_us", type=click.IntRange(min=0), default=None,
              help="Find the reading by its timestamp (UTC microseconds) instead of SEQ.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the bundle here instead of stdout.")
@click.pass_obj
def proof_reading(settings: Settings, device_id: str, seq: int | None, ts_us: int | None,
                  output: Path | None) -> None:
    """The vitalchain-proof/1 bundle of one reading (status on stderr)."""
    from vitalchain.anchor.proofs import ProofService, ProofUnavailable

    if (seq is None) == (ts_us is None):
        raise click.UsageError("give SEQ or --at TS_US (exactly one)")
    try:
        with ProofService(settings) as service:
            result = service.proof(device_id, seq, ts_us)
    except (ProofUnavailable, ValueError) as exc:
        _fail(exc)
    _write(result.bundle, output)
    click.echo(result.summary(), err=True)


@proof_group.command("consistency")
@click.argument("size1", type=click.IntRange(min=1), required=False)
@click.argument("size2", type=click.IntRange(min=1), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_obj
def proof_consistency(settings: Settings, size1: int | None, size2: int | None,
                      output: Path | None) -> None:
    """Proof that anchored checkpoint SIZE1 is a prefix of anchored checkpoint SIZE2.

    Without sizes: the first and the latest anchored checkpoints (`anchor status` lists them).
    """
    from vitalchain.anchor.proofs import ProofUnavailable, build_consistency

    if (size1 is None) != (size2 is None):
        raise click.UsageError("give both SIZE1 and SIZE2, or neither (first and latest anchored)")
    if size1 is None or size2 is None:
        size1, size2 = _first_and_latest_anchored(settings)
    try:
        doc = build_consistency(settings, size1, size2)
    except (ProofUnavailable, ValueError) as exc:
        _fail(exc)
    _write(doc, output)


def _first_and_latest_anchored(settings: Settings) -> tuple[int, int]:
    from vitalchain.storage.anchors import AnchorStore

    if not settings.anchor_contract:
        raise click.ClickException("no anchor contract configured: run `vitalchain anchor deploy` first")
    from vitalchain.anchor.chain import contract_address

    with AnchorStore(settings.ledger_target) as store:
        sizes = [c.size for c in store.checkpoints(contract_address(settings), "anchored")]
    if not sizes:
        raise click.ClickException("no checkpoint is anchored yet (`vitalchain anchor run` anchors "
                                   "them; `vitalchain anchor status` shows where it is)")
    click.echo(f"anchored checkpoints {min(sizes)} and {max(sizes)} (of {len(sizes)})", err=True)
    return min(sizes), max(sizes)


@proof_group.command("verify-consistency")
@click.argument("document", type=click.File("rb"), default="-")
@click.option("--rpc", "rpc_url", default=None, metavar="URL",
              help="Also check both anchors on chain.")
def proof_verify_consistency(document: Any, rpc_url: str | None) -> None:
    """Verify a vitalchain-consistency/1 document (the same as `vitalchain verify`, which accepts
    every proof kind: exit 0 valid/pending, 1 invalid, 2 unreadable)."""
    from vitalchain.app.commands.verify import format_report, verify_text
    from vitalchain.core.verify import CONSISTENCY_FORMAT

    name = getattr(document, "name", "-")
    report = verify_text(document.read(), name, rpc_url, expect=CONSISTENCY_FORMAT)
    click.echo(format_report(report))
    sys.exit(report.exit_code)


def register(main: click.Group) -> None:
    main.add_command(anchor_group)
    main.add_command(proof_group)
