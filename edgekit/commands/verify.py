"""`edgekit verify`: check an artifact byte for byte against the digests it records."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("verify")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_cmd(artifact: str, as_json: bool) -> None:
    """Verify ARTIFACT (a .gguf file, or an ONNX / Core ML directory from edgekit convert): every file's
    size, header and digest against its manifest (edgekit.json's sha256 values, or the GGUF's edgekit.data_blake3;
    edgekit.data_sha256 in GGUF files written before it)."""
    from pathlib import Path

    from edgekit.errors import EdgekitError
    from edgekit.integrity import check

    if not Path(artifact).exists():
        raise EdgekitError(f"{artifact} does not exist", "pass a .gguf file or an artifact directory")
    result = check(artifact, full=True)
    emit({**result, "ok": True}, as_json,
         f"ok: {artifact} ({result['format']}, {result['files']} file{'s' if result['files'] != 1 else ''}, "
         f"{result['checked']} matches)")
