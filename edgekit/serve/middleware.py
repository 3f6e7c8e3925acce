"""ASGI middleware of the server: one log line per request, the API key, and the body size limit.

Plain ASGI (not Starlette's BaseHTTPMiddleware) so streamed responses pass through untouched and the
log line is written when the last byte of a stream has gone, with the token counts the route recorded.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

log = logging.getLogger("edgekit.serve")

Scope = dict[str, Any]


def error_body(path: str, status: int, message: str) -> bytes:
    """``{"error": "..."}`` (Ollama) or ``{"error": {"message": ..., "type": ...}}`` (OpenAI, under /v1)."""
    if path.startswith("/v1/"):
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    return json.dumps({"error": message}).encode()


async def send_error(send: Any, path: str, status: int, message: str, headers: list | None = None) -> None:
    body = error_body(path, status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestLog:
    """``METHOD /route model=NAME status=200 tokens=PROMPT+GENERATED 0.123s``, one line when a request ends."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 0, "logged": False}

        def write() -> None:
            if status["logged"]:
                return
            pending = state.get("pending")  # a generation still stopping (client left): log when it has
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _: write())
                return
            status["logged"] = True
            tokens = state.get("tokens")
            log.info("%s %s model=%s status=%s tokens=%s %.3fs%s", scope["method"], scope["path"],
                     state.get("model", "-"), status["code"] or "-",
                     f"{tokens[0]}+{tokens[1]}" if tokens else "-", time.perf_counter() - started,
                     " (client left)" if state.get("cancelled") else "")

        async def logged_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                write()

        try:
            await self.app(scope, receive, logged_send)
        finally:
            write()


class ApiKey:
    """With a key set, every route but ``HEAD /`` needs ``Authorization: Bearer KEY`` (constant-time compare)."""

    def __init__(self, app: Any, key: str | None) -> None:
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.key is None or (scope["method"] == "HEAD" and scope["path"] == "/"):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            return await send_error(send, scope["path"], 401,
                                    "missing or wrong API key; send Authorization: Bearer KEY",
                                    [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before the route reads them. A declared
    Content-Length over the limit is refused at once; a chunked body is read up to the limit and refused
    when it goes past it. Blob uploads (``/api/blobs/``) are streamed to disk by their route instead."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/blobs/"):
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_error(send, scope["path"], 400, "invalid Content-Length")
        too_big = f"request body over {self.limit} bytes; send a smaller request"
        if declared is not None and declared > self.limit:
            return await send_error(send, scope["path"], 413, too_big, [(b"connection", b"close")])
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await send_error(send, scope["path"], 413, too_big, [(b"connection", b"close")])
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would say it

        return await self.app(scope, replay, send)
