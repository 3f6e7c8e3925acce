"""`edgekit ps`: the models a running `edgekit serve` has loaded."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("ps")
@click.option("--host", default="http://127.0.0.1:11434", show_default=True, envvar="EDGEKIT_HOST",
              help="The server to ask.")
@click.option("--api-key", envvar="EDGEKIT_API_KEY", help="The server's API key, if it has one.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ps_cmd(host: str, api_key: str | None, as_json: bool) -> None:
    """List the models loaded by the server at --host (size and when each unloads)."""
    import httpx

    from edgekit.errors import EdgekitError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = host if "://" in host else f"http://{host}"
    try:
        r = httpx.get(url.rstrip("/") + "/api/ps", headers=headers, timeout=10)
    except httpx.HTTPError as err:
        raise EdgekitError(f"no server at {url} ({type(err).__name__})",
                           "start one with edgekit serve, or pass --host") from None
    if r.status_code != 200:
        raise EdgekitError(f"{url} answered {r.status_code}: {r.text[:200]}", "check --host and --api-key")
    models = r.json().get("models", [])
    lines = [f"{'NAME':<32} {'FORMAT':<7} {'SIZE':>10}  UNTIL"]
    lines += [f"{m['name']:<32} {m.get('format') or '':<7} {m['size'] / 1e6:>8.1f}MB  {m['expires_at']}"
              for m in models]
    emit(models, as_json, "\n".join(lines))
