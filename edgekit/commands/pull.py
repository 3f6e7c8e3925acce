"""`edgekit pull ORG/NAME`: download a Hugging Face checkpoint, convert it and put it in the store."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("pull")
@click.argument("hub_id")
@click.option("--name", help="Store name (default: the hub id, lowercased).")
@click.option("--to", "fmt", type=click.Choice(["gguf", "onnx", "coreml"]), default="gguf", show_default=True,
              help="Artifact format.")
@click.option("--quantize", help="The converter's tensor type (gguf: f16, q8_0, ...; default f16).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pull_cmd(hub_id: str, name: str | None, fmt: str, quantize: str | None, as_json: bool) -> None:
    """Pull HUB_ID (org/name[@revision]) into the store."""
    from edgekit.serve import build
    from edgekit.serve.store import Store

    manifest = build.pull(Store(), hub_id, name=name, fmt=fmt, quantize=quantize, progress=not as_json)
    emit({"name": manifest["name"], "digest": manifest["digest"], "format": manifest["format"]}, as_json,
         f"pulled {hub_id} as {manifest['name']} ({manifest['format']})")
