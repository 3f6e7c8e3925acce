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
    """Describe MODEL (a local Hugging Face directory or hub id org/name[@rev])."""
    from edgekit.inspect import format_text, inspect

    info = inspect(model, adapter=adapter, allow_pickle=allow_pickle)
    emit(info, as_json, format_text(info))
