"""`edgekit list`: the models in the store."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List the models in the store ($EDGEKIT_HOME)."""
    from edgekit.serve.store import Store

    store = Store()
    rows = []
    for m in store.list():
        if "error" in m:
            rows.append({"name": m["name"], "error": m["error"]})
        else:
            rows.append({"name": m["name"], "format": m["format"], "digest": m["digest"], "size": store.size(m),
                         "modified_at": m["modified_at"]})
    lines = [f"{'NAME':<32} {'FORMAT':<7} {'ID':<12} {'SIZE':>10}  MODIFIED"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<32} damaged: {r['error']}")
        else:
            lines.append(f"{r['name']:<32} {r['format']:<7} {r['digest'][7:19]:<12} {r['size'] / 1e6:>8.1f}MB  "
                         f"{r['modified_at'][:19].replace('T', ' ')}")
    emit(rows, as_json, "\n".join(lines))
