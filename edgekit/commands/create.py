"""`edgekit create NAME[:TAG] -f Modelfile`: build a store model from an artifact, a stored model or a checkpoint."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("create")
@click.argument("name")
@click.option("-f", "--file", "modelfile", default="Modelfile", show_default=True, type=click.Path(dir_okay=False),
              help="The Modelfile (FROM, PARAMETER, TEMPLATE, SYSTEM, MESSAGE, ADAPTER, LICENSE, FORMAT, QUANTIZE).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create_cmd(name: str, modelfile: str, as_json: bool) -> None:
    """Create (or replace) the store model NAME from a Modelfile."""
    from pathlib import Path

    from edgekit.errors import EdgekitError
    from edgekit.serve import build, names
    from edgekit.serve.modelfile import parse
    from edgekit.serve.store import Store

    names.parse(name)  # before any work
    path = Path(modelfile)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EdgekitError(f"cannot read {path} ({getattr(err, 'strerror', None) or err})",
                           "pass the Modelfile with -f") from None
    manifest = build.create(Store(), name, parse(text), base_dir=path.resolve().parent, progress=not as_json)
    emit({"name": manifest["name"], "digest": manifest["digest"], "format": manifest["format"],
          "size": Store.size(manifest)}, as_json,
         f"created {manifest['name']} ({manifest['format']}, {Store.size(manifest) / 1e6:.1f} MB, "
         f"{manifest['digest'][7:19]})")
