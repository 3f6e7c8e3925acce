"""`edgekit show NAME`: a store model's settings, template, model info and artifact manifest."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("show")
@click.argument("name")
@click.option("--modelfile", is_flag=True, help="Print a Modelfile that re-creates the model.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_cmd(name: str, modelfile: bool, as_json: bool) -> None:
    """Show the store model NAME."""
    from edgekit.serve.store import Store
    from edgekit.serve.store_api import show_body

    store = Store()
    body = show_body(store, store.read(name))
    if modelfile:
        emit({"modelfile": body["modelfile"]}, as_json, body["modelfile"].rstrip("\n"))
        return
    d = body["details"]
    lines = [f"  format          {d['format']}", f"  architecture    {d['family']}",
             f"  parameters      {d['parameter_size']}", f"  quantization    {d['quantization_level']}",
             f"  digest          {body['edgekit']['digest']}"]
    if body["parameters"]:
        lines += ["", "  Parameters"] + ["    " + p for p in body["parameters"].splitlines()]
    if body["system"]:
        lines += ["", "  System", "    " + body["system"]]
    lines += ["", "  Template (" + ("Modelfile" if store.read(name)["config"].get("template") else "the artifact's own")
              + ")", *("    " + t for t in (body["template"] or "(none)").splitlines()[:12])]
    emit(body, as_json, "\n".join(lines))
