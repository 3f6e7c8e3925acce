"""The ASGI application of ``edgekit serve`` (FastAPI on uvicorn): middleware, error shapes, lifespan.

Error bodies are ``{"error": "..."}`` on the Ollama routes and OpenAI's ``{"error": {"message": ...}}``
under ``/v1``; malformed JSON and wrong types are 400 (not FastAPI's 422), an unknown model 404, a body
over the limit 413, a missing or wrong key 401. The routes live in ollama_api.py,
store_api.py and openai_api.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgekit.errors import EdgekitError
from edgekit.serve.engine import Busy
from edgekit.serve.middleware import ApiKey, BodyLimit, RequestLog, error_body
from edgekit.serve.models import Models
from edgekit.serve.store import ModelDamaged, ModelNotFound, Store

log = logging.getLogger("edgekit.serve")
DEFAULT_BODY_LIMIT = 16 << 20


@dataclass
class Settings:
    api_key: str | None = None
    origins: tuple[str, ...] = ()
    keep_alive: float | None = 300.0
    max_loaded: int = 2
    body_limit: int = DEFAULT_BODY_LIMIT
    parallel: int | None = None          # GGUF sequences per model (None: DEFAULT_PARALLEL)
    max_queue: int | None = None         # requests waiting for a slot before 503 (None: DEFAULT_MAX_QUEUE)


def status_of(err: EdgekitError) -> int:
    if isinstance(err, (ModelNotFound, ModelDamaged)):
        return 404
    return 400


def error_response(request: Request, status: int, message: str) -> Response:
    return Response(error_body(request.url.path, status, message), status_code=status, media_type="application/json")


def _validation_message(err: RequestValidationError) -> str:
    errors = err.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse the body')}"
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    return f"invalid request: {where}: {first.get('msg', 'invalid value')}"


def create_app(store: Store | None = None, settings: Settings | None = None) -> Any:
    """The ASGI app wrapped in its middleware (log -> CORS -> API key -> body limit -> routes)."""
    from edgekit import __version__
    from edgekit.serve import metrics, ollama_api, openai_api, store_api

    store = store or Store()
    settings = settings or Settings()
    models = Models(store, settings.keep_alive, settings.max_loaded, settings.parallel, settings.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models.start()
        try:
            yield
        finally:
            await models.shutdown()

    app = FastAPI(title="edgekit serve", version=__version__, lifespan=lifespan,
                  description="Ollama- and OpenAI-compatible server over GGUF, ONNX and Core ML artifacts.")
    app.state.store, app.state.models, app.state.settings = store, models, settings

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> Response:
        return error_response(request, 400, _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        message = {404: f"no route {request.method} {request.url.path}", 405: f"method {request.method} not allowed "
                   f"on {request.url.path}"}.get(err.status_code, str(err.detail))
        return error_response(request, err.status_code, message)

    @app.exception_handler(EdgekitError)
    async def user_error(request: Request, err: EdgekitError) -> Response:
        if isinstance(err, Busy):
            response = error_response(request, 503, str(err))
            response.headers["Retry-After"] = str(err.retry_after)
            return response
        return error_response(request, status_of(err), str(err))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(request, 500, f"internal error: {type(err).__name__}: {str(err)[:200]}")

    app.include_router(ollama_api.router)
    app.include_router(store_api.router)
    app.include_router(openai_api.router)
    app.include_router(metrics.router)

    wrapped: Any = BodyLimit(app, settings.body_limit)
    wrapped = ApiKey(wrapped, settings.api_key)
    if settings.origins:
        from starlette.middleware.cors import CORSMiddleware

        wrapped = CORSMiddleware(wrapped, allow_origins=list(settings.origins), allow_methods=["*"],
                                 allow_headers=["*"])
    wrapped = RequestLog(wrapped)
    wrapped.fastapi = app  # tests and tools reach the FastAPI app (openapi()) through the wrapper
    return wrapped

