"""`edgekit inspect`: describe a checkpoint."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("inspect")
@click.argument("model")
@click.option("--adapter", metavar="DIR", help="PEFT LoRA adapter to merge on the fly.")
@click.option("--allow-pickle", is_flag=True, help="Read pytorch_model.bin (torch.load weights_only=True).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(model: str, adapter: str | None, allow_pickle: bool, as_json: bool) -> None:
    """Describe MODEL: a Hugging Face checkpoint (local directory or hub id org/name[@rev]), or an artifact
    (a .gguf file, an ONNX / Core ML directory from edgekit convert)."""
    from pathlib import Path

    from edgekit import artifacts
    from edgekit.inspect import format_text, inspect

    art = artifacts.inspect_artifact(Path(model).expanduser()) if Path(model).expanduser().exists() else None
    if art is not None:
        emit(art, as_json, artifacts.format_text(art))
        warning = artifacts.warning_for(art)
        if warning:
            click.echo(warning, err=True)
        return
    info = inspect(model, adapter=adapter, allow_pickle=allow_pickle)
    emit(info, as_json, format_text(info))
