"""Ollama's generation API (docs/api.md): generate, chat, embed (+ the legacy embeddings route); NDJSON
streaming (``stream`` defaults to true, as in Ollama). The model-management routes are in store_api.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgekit.errors import EdgekitError
from edgekit.serve import names
from edgekit.serve.engine import Runner, Unsupported
from edgekit.serve.jobs import Job, Outcome
from edgekit.serve.models import parse_keep_alive
from edgekit.serve.options import OLLAMA_DEFAULTS, resolve
from edgekit.serve.schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
)

log = logging.getLogger("edgekit.serve")
router = APIRouter()
NDJSON = "application/x-ndjson"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _state(request: Request) -> tuple[Any, Any]:
    return request.app.state.store, request.app.state.models


def format_constraint(fmt: Any) -> tuple[dict | None, bool]:
    """(schema, json_mode) from Ollama's ``format``: "" / None -> free text, "json" -> any JSON object,
    an object -> that JSON schema."""
    if fmt in (None, ""):
        return None, False
    if fmt == "json":
        return None, True
    if isinstance(fmt, dict):
        return fmt, False
    raise EdgekitError("format must be \"json\" or a JSON schema object", "fix format")


def chat_history(config: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Modelfile's SYSTEM (unless the request has its own) and MESSAGEs, then the request's messages."""
    out: list[dict[str, Any]] = []
    if config.get("system") and not any(m.get("role") == "system" for m in messages):
        out.append({"role": "system", "content": config["system"]})
    out.extend(config.get("messages") or [])
    out.extend(messages)
    return out


def _check_ids(ids: list[int], runner: Runner) -> None:
    vocab = runner.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise EdgekitError(f"context holds token ids outside the vocabulary (0..{vocab - 1})",
                           "send back the context a previous response returned")


def _timings(out: Outcome) -> dict[str, Any]:
    g = out.generation
    return {"total_duration": _ns(out.total_seconds), "load_duration": _ns(out.load_seconds),
            "prompt_eval_count": g.prompt_tokens if g else len(out.prompt),
            "prompt_eval_duration": _ns(g.prompt_seconds) if g else 0,
            "eval_count": g.eval_count if g else 0, "eval_duration": _ns(g.eval_seconds) if g else 0}


async def _load_only(request: Request, name: str, keep_alive: Any, kind: str) -> Response:
    """An empty prompt / message list loads the model (or, with keep_alive 0, unloads it), as in Ollama."""
    _, models = _state(request)
    request.state.model = name
    keep = parse_keep_alive(keep_alive, models.default_keep_alive)
    if keep == 0:
        models.manifest(name)
        await models.unload(str(names.parse(name)))
        reason = "unload"
    else:
        loaded = await models.acquire(name)
        models.release(loaded, keep)
        reason = "load"
    body: dict[str, Any] = {"model": name, "created_at": now_iso(), "done": True, "done_reason": reason}
    body.update({"response": ""} if kind == "generate" else {"message": {"role": "assistant", "content": ""}})
    return JSONResponse(body)


async def _respond(request: Request, job: Job, stream: bool, piece: Any, final: Any) -> Response:
    if not stream:
        out = await job.result()
        return JSONResponse(final(out, out.text))

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for item in job.stream():
                if isinstance(item, Outcome):
                    yield (json.dumps(final(item, "")) + "\n").encode()
                else:
                    yield (json.dumps(piece(item)) + "\n").encode()
        except EdgekitError as err:
            yield (json.dumps({"error": str(err)}) + "\n").encode()
        except Exception as err:  # a bug: the client gets an error line, the log gets the traceback
            log.exception("generation failed on %s", request.url.path)
            yield (json.dumps({"error": f"internal error: {type(err).__name__}: {str(err)[:200]}"}) + "\n").encode()

    return StreamingResponse(lines(), media_type=NDJSON)


@router.post("/api/generate")
async def generate(body: GenerateRequest, request: Request) -> Response:
    _, models = _state(request)
    request.state.model = body.model
    if body.images:
        raise Unsupported("images are not supported (edgekit serves text models)", "send text only")
    if body.suffix:
        raise Unsupported("suffix (fill-in-the-middle) is not supported", "send the prompt alone")
    keep = parse_keep_alive(body.keep_alive, models.default_keep_alive)
    if not body.prompt and not body.context:
        return await _load_only(request, body.model, body.keep_alive, "generate")
    schema, json_mode = format_constraint(body.format)
    options = body.options.model_dump(exclude_none=True) if body.options else {}

    def build(runner: Runner, config: dict[str, Any]) -> list[int]:
        prompt = body.prompt or ""
        system = body.system if body.system is not None else config.get("system")
        template = body.template or config.get("template")
        if body.raw:
            tokens = runner.tokenize(prompt, add_special=not body.context) if prompt else []
        elif template or runner.has_template:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [*(config.get("messages") or []), {"role": "user", "content": prompt}]
            tokens = runner.chat_prompt(messages, template)
        else:
            tokens = runner.tokenize((system + "\n\n" if system else "") + prompt, add_special=not body.context)
        if body.context:
            _check_ids(body.context, runner)
            tokens = list(body.context) + tokens
        return tokens

    manifest = models.manifest(body.model)
    opts = resolve(OLLAMA_DEFAULTS, manifest["config"].get("parameters"), options)
    job = await Job.start(models, body.model, build, opts, schema, json_mode, keep, request.state._state)

    def piece(text: str) -> dict[str, Any]:
        return {"model": body.model, "created_at": now_iso(), "response": text, "done": False}

    def final(out: Outcome, text: str) -> dict[str, Any]:
        g = out.generation
        context = list(out.prompt) + (list(g.tokens) if g else [])
        return {"model": body.model, "created_at": now_iso(), "response": text, "done": True,
                "done_reason": out.done_reason, "context": context, **_timings(out)}

    return await _respond(request, job, body.stream, piece, final)


@router.post("/api/chat")
async def chat(body: ChatRequest, request: Request) -> Response:
    _, models = _state(request)
    request.state.model = body.model
    if body.tools:
        raise Unsupported(f"{body.model} does not support tools", "send the request without tools")
    if any(m.images for m in body.messages):
        raise Unsupported("images are not supported (edgekit serves text models)", "send text only")
    keep = parse_keep_alive(body.keep_alive, models.default_keep_alive)
    if not body.messages:
        return await _load_only(request, body.model, body.keep_alive, "chat")
    schema, json_mode = format_constraint(body.format)
    options = body.options.model_dump(exclude_none=True) if body.options else {}
    messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]

    def build(runner: Runner, config: dict[str, Any]) -> list[int]:
        return runner.chat_prompt(chat_history(config, messages), config.get("template"))

    manifest = models.manifest(body.model)
    opts = resolve(OLLAMA_DEFAULTS, manifest["config"].get("parameters"), options)
    job = await Job.start(models, body.model, build, opts, schema, json_mode, keep, request.state._state)

    def piece(text: str) -> dict[str, Any]:
        return {"model": body.model, "created_at": now_iso(), "message": {"role": "assistant", "content": text},
                "done": False}

    def final(out: Outcome, text: str) -> dict[str, Any]:
        return {"model": body.model, "created_at": now_iso(), "message": {"role": "assistant", "content": text},
                "done": True, "done_reason": out.done_reason, **_timings(out)}

    return await _respond(request, job, body.stream, piece, final)


async def embed_texts(request: Request, name: str, texts: list[str], truncate: bool, keep_alive: Any,
                      options: dict[str, Any] | None = None) -> tuple[list[list[float]], int, float, float]:
    """(vectors, prompt tokens, load seconds, total seconds) for ``texts`` on model ``name``."""
    _, models = _state(request)
    request.state.model = name
    keep = parse_keep_alive(keep_alive, models.default_keep_alive)
    started = time.perf_counter()
    num_ctx = (options or {}).get("num_ctx")
    loaded = await models.acquire(name, num_ctx)
    load_seconds = time.perf_counter() - started
    loop = asyncio.get_running_loop()
    try:
        vectors, count = await loop.run_in_executor(models.executor, lambda: loaded.runner.embed(texts, truncate))
    finally:
        models.release(loaded, keep)
    request.state.tokens = (count, 0)
    return vectors, count, load_seconds, time.perf_counter() - started


@router.post("/api/embed")
async def embed(body: EmbedRequest, request: Request) -> Response:
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    options = body.options.model_dump(exclude_none=True) if body.options else {}
    vectors, count, load_s, total_s = await embed_texts(request, body.model, texts, body.truncate, body.keep_alive,
                                                        options)
    if body.dimensions is not None:
        if body.dimensions < 1:
            raise EdgekitError("dimensions must be positive", "pass a positive number or omit it")
        vectors = [_renorm(v[:body.dimensions]) for v in vectors]
    return JSONResponse({"model": body.model, "embeddings": vectors, "total_duration": _ns(total_s),
                         "load_duration": _ns(load_s), "prompt_eval_count": count})


def _renorm(v: list[float]) -> list[float]:
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v] if norm > 0 else v


@router.post("/api/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
    """The legacy single-prompt route."""
    options = body.options.model_dump(exclude_none=True) if body.options else {}
    if not body.prompt:
        return JSONResponse({"embedding": []})
    vectors, *_ = await embed_texts(request, body.model, [body.prompt], True, body.keep_alive, options)
    return JSONResponse({"embedding": vectors[0]})
