"""`edgekit cp SOURCE DEST`: another name for a store model (the blobs are shared)."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("cp")
@click.argument("source")
@click.argument("dest")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cp_cmd(source: str, dest: str, as_json: bool) -> None:
    """Copy the store model SOURCE to DEST."""
    from edgekit.serve.store import Store

    manifest = Store().copy(source, dest)
    emit({"name": manifest["name"], "digest": manifest["digest"]}, as_json, f"copied {source} to {manifest['name']}")
