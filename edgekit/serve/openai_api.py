"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings, with SSE
streaming (``data: {...}`` events ending in ``data: [DONE]``) and ``stream_options.include_usage``."""

from __future__ import annotations

import base64
import calendar
import json
import logging
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgekit.errors import EdgekitError
from edgekit.serve import names
from edgekit.serve.engine import Runner, Unsupported
from edgekit.serve.jobs import Job, Outcome
from edgekit.serve.ollama_api import chat_history, embed_texts
from edgekit.serve.options import OPENAI_DEFAULTS, resolve
from edgekit.serve.schemas import ChatCompletionRequest, CompletionRequest, OAIEmbeddingRequest, _OAISampling

log = logging.getLogger("edgekit.serve")
router = APIRouter()


def _options(body: _OAISampling, max_tokens: int | None) -> dict[str, Any]:
    if body.n not in (None, 1):
        raise Unsupported("n must be 1", "ask for one choice per request")
    if max_tokens is not None and max_tokens < 1:
        raise EdgekitError("max_tokens must be at least 1", "pass a positive max_tokens")
    return {k: v for k, v in {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
                              "presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty,
                              "stop": body.stop, "num_predict": max_tokens, "top_k": body.top_k,
                              "min_p": body.min_p, "repeat_penalty": body.repeat_penalty}.items() if v is not None}


def _finish(out: Outcome) -> str:
    return "stop" if out.done_reason in ("stop", "cancelled") else "length"


def _usage(out: Outcome) -> dict[str, int]:
    g = out.generation
    prompt = g.prompt_tokens if g else len(out.prompt)
    completion = g.eval_count if g else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def _run(request: Request, body: _OAISampling, build: Any, max_tokens: int | None, schema: dict | None,
               json_mode: bool, kind: str) -> Response:
    models = request.app.state.models
    request.state.model = body.model
    manifest = models.manifest(body.model)
    opts = resolve(OPENAI_DEFAULTS, manifest["config"].get("parameters"), _options(body, max_tokens))
    job = await Job.start(models, body.model, build, opts, schema, json_mode, "default", request.state._state)
    ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    obj = "chat.completion" if kind == "chat" else "text_completion"
    if not body.stream:
        out = await job.result()
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(out), "logprobs": None}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": out.text}
        else:
            choice["text"] = out.text
        return JSONResponse({"id": ident, "object": obj, "created": created, "model": body.model,
                             "system_fingerprint": "edgekit", "choices": [choice], "usage": _usage(out)})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunk_obj = obj + (".chunk" if kind == "chat" else "")

    def chunk(delta: Any, finish: str | None) -> dict[str, Any]:
        c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if kind == "chat":
            c["delta"] = delta
        else:
            c["text"] = delta
        out = {"id": ident, "object": chunk_obj, "created": created, "model": body.model,
               "system_fingerprint": "edgekit", "choices": [c]}
        if include_usage:
            out["usage"] = None
        return out

    async def events() -> AsyncIterator[bytes]:
        try:
            if kind == "chat":
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
            async for item in job.stream():
                if isinstance(item, Outcome):
                    yield _sse(chunk({} if kind == "chat" else "", _finish(item)))
                    if include_usage:
                        yield _sse({"id": ident, "object": chunk_obj, "created": created, "model": body.model,
                                    "system_fingerprint": "edgekit", "choices": [], "usage": _usage(item)})
                else:
                    yield _sse(chunk({"content": item} if kind == "chat" else item, None))
        except EdgekitError as err:
            yield _sse({"error": {"message": str(err), "type": "invalid_request_error", "param": None, "code": None}})
        except Exception as err:  # a bug: the client gets an error event, the log gets the traceback
            log.exception("generation failed on %s", request.url.path)
            yield _sse({"error": {"message": f"internal error: {type(err).__name__}: {str(err)[:200]}",
                                  "type": "server_error", "param": None, "code": None}})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.type != "text":
            raise Unsupported(f"content part type {part.type!r} is not supported", "send text parts only")
        parts.append(part.text or "")
    return "".join(parts)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    messages = [{"role": m.role, "content": _content(m.content)} for m in body.messages]
    if not messages:
        raise EdgekitError("messages must not be empty", "send at least one message")
    schema, json_mode = None, False
    if body.response_format is not None:
        if body.response_format.type == "json_object":
            json_mode = True
        elif body.response_format.type == "json_schema":
            js = body.response_format.json_schema
            if js is None or js.schema_ is None:
                raise EdgekitError("response_format json_schema needs json_schema.schema", "pass the schema object")
            schema = js.schema_

    def build(runner: Runner, config: dict[str, Any]) -> list[int]:
        return runner.chat_prompt(chat_history(config, messages), config.get("template"))

    return await _run(request, body, build, body.max_completion_tokens or body.max_tokens, schema, json_mode, "chat")


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise Unsupported("one prompt per request", "send prompt as a string")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    if body.echo or body.suffix:
        raise Unsupported("echo and suffix are not supported", "drop them")

    def build(runner: Runner, config: dict[str, Any]) -> list[int]:
        return runner.tokenize(prompt)

    return await _run(request, body, build, 16 if body.max_tokens is None else body.max_tokens, None, False,
                      "completion")


def _model(manifest: dict[str, Any]) -> dict[str, Any]:
    created = calendar.timegm(time.strptime(manifest["modified_at"][:19], "%Y-%m-%dT%H:%M:%S")) \
        if manifest.get("modified_at") else 0  # modified_at is UTC
    return {"id": manifest["name"], "object": "model", "created": created, "owned_by": "edgekit"}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    store = request.app.state.store
    return JSONResponse({"object": "list", "data": [_model(m) for m in store.list() if "error" not in m]})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> Response:
    store = request.app.state.store
    request.state.model = model
    return JSONResponse(_model(store.read(model)))


@router.post("/v1/embeddings")
async def create_embeddings(body: OAIEmbeddingRequest, request: Request) -> Response:
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise EdgekitError("input must not be empty", "send a string or a list of strings")
    names.parse(body.model)
    vectors, count, *_ = await embed_texts(request, body.model, texts, True, None)
    if body.dimensions is not None:
        if body.dimensions < 1:
            raise EdgekitError("dimensions must be positive", "pass a positive number or omit it")
        vectors = [v[:body.dimensions] for v in vectors]
        vectors = [[x / (sum(y * y for y in v) ** 0.5 or 1.0) for x in v] for v in vectors]
    data = []
    for i, v in enumerate(vectors):
        value: Any = v
        if body.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append({"object": "embedding", "embedding": value, "index": i})
    return JSONResponse({"object": "list", "data": data, "model": body.model,
                         "usage": {"prompt_tokens": count, "total_tokens": count}})
