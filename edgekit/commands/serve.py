"""`edgekit serve`: the Ollama- and OpenAI-compatible HTTP server over the model store."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=11434, show_default=True, help="Port (Ollama's).")
@click.option("--api-key", envvar="EDGEKIT_API_KEY",
              help="Require Authorization: Bearer KEY on every route but HEAD /.")
@click.option("--keep-alive", default="5m", show_default=True,
              help="How long a model stays loaded after a request (0 = unload at once, negative = forever).")
@click.option("--max-loaded", type=click.IntRange(min=1), default=2, show_default=True,
              help="Models loaded at once; the least recently used is unloaded beyond this.")
@click.option("--origins", multiple=True, help="Allow cross-origin browser requests from this origin (repeatable).")
@click.option("--max-body", type=click.IntRange(min=1024), default=16 << 20, show_default=True,
              help="Largest request body in bytes (blob uploads excepted); larger ones get 413.")
@click.option("--parallel", type=click.IntRange(1, 64), default=None,
              help="GGUF sequences decoded together per model (continuous batching; each holds num_ctx tokens). "
                   "[default: 4]")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests waiting for a free sequence per model; beyond it the server answers 503 with Retry-After.")
@click.option("--json", "as_json", is_flag=True, help="Log one JSON object per line.")
def serve_cmd(host: str, port: int, api_key: str | None, keep_alive: str, max_loaded: int, origins: tuple[str, ...],
              max_body: int, parallel: int | None, max_queue: int, as_json: bool) -> None:
    """Serve the models of the store ($EDGEKIT_HOME) over Ollama's and OpenAI's HTTP APIs."""
    import json
    import logging
    import sys

    import uvicorn

    from edgekit.errors import EdgekitError
    from edgekit.serve.app import Settings, create_app
    from edgekit.serve.models import parse_keep_alive
    from edgekit.serve.store import Store

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"edgekit: warning: serving on {host} without --api-key: anyone who can reach it can use it",
                   err=True)
    try:
        keep = parse_keep_alive(keep_alive, 300.0)
    except EdgekitError as err:
        raise EdgekitError(f"--keep-alive: {err.what}", err.fix) from None
    _check_port(host, port)
    store = Store()
    app = create_app(store, Settings(api_key=api_key, origins=origins, keep_alive=keep, max_loaded=max_loaded,
                                     body_limit=max_body, parallel=parallel, max_queue=max_queue))
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        class JsonFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                                   "message": record.getMessage()})
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s edgekit serve: %(message)s"))
    logger = logging.getLogger("edgekit.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("store %s; listening on http://%s:%d", store.root, host if ":" not in host else f"[{host}]", port)
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # in-flight generations end at their next step (each stream gets its last line, done_reason
            # "cancelled"), so the graceful shutdown finds the connections finished instead of cancelling them
            app.fastapi.state.models.drain()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                          timeout_graceful_shutdown=3)).run()


def _check_port(host: str, port: int) -> None:
    """Fail with one line before starting when the address cannot be bound (uvicorn would log and exit 1)."""
    import socket

    from edgekit.errors import EdgekitError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise EdgekitError(f"cannot resolve --host {host} ({err.strerror})", "pass an address such as 127.0.0.1") \
            from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as err:
            raise EdgekitError(f"cannot listen on {host}:{port} ({err.strerror})",
                               "choose another --port, or stop what is using it") from None
