"""`edgekit rm NAME...`: remove store models; blobs no other model uses are deleted."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("rm")
@click.argument("names", nargs=-1)
@click.option("--prune", is_flag=True, help="Only collect garbage: unreferenced blobs and a crashed writer's files.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rm_cmd(names: tuple[str, ...], prune: bool, as_json: bool) -> None:
    """Remove the store models NAMES (and the blobs only they used)."""
    from edgekit.errors import EdgekitError
    from edgekit.serve.store import Store

    store = Store()
    if not names and not prune:
        raise EdgekitError("no model named", "pass NAME (see edgekit list), or --prune")
    results = []
    for name in names:
        freed = store.remove(name)
        results.append({"name": name, **freed})
    if prune or not names:
        results.append({"name": None, **store.gc()})
    text = "\n".join(f"deleted {r['name']}" + (f" ({r['freed_bytes'] / 1e6:.1f} MB freed)" if r["freed_bytes"] else "")
                     if r["name"] else f"pruned {len(r['removed_blobs'])} blobs ({r['freed_bytes'] / 1e6:.1f} MB)"
                     for r in results)
    emit(results, as_json, text)
