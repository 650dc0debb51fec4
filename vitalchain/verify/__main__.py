"""``python -m vitalchain.verify BUNDLE.json ...``: the verifier without the vitalchain CLI."""

from .cli import verify_command

verify_command(prog_name="vitalchain-verify")
