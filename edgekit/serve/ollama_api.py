"""Ollama's API (docs/api.md): generate, chat, embed, tags, ps, show, create, copy, delete, pull, version,
blobs; NDJSON streaming (``stream`` defaults to true, as in Ollama)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from edgekit.errors import EdgekitError
from edgekit.serve import modelfile as mf_module
from edgekit.serve import names
from edgekit.serve.engine import Runner, Unsupported
from edgekit.serve.jobs import Job, Outcome
from edgekit.serve.models import parse_keep_alive
from edgekit.serve.options import OLLAMA_DEFAULTS, resolve
from edgekit.serve.schemas import (
    ChatRequest,
    CopyRequest,
    CreateRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ModelRequest,
)
from edgekit.serve.store import Layer, ModelNotFound, check_layer_path, normalize_digest

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


# -- models ------------------------------------------------------------------------------------------
def details(manifest: dict[str, Any]) -> dict[str, Any]:
    config = manifest.get("config", {})
    info = config.get("model_info") or {}
    arch = info.get("general.architecture") or ""
    count = info.get("general.parameter_count")
    conversion = config.get("conversion") or {}
    artifact = config.get("artifact_manifest") or {}
    quant = conversion.get("outtype") or conversion.get("dtype") or conversion.get("precision")
    if not quant and isinstance(artifact.get("quant"), dict):
        quant = artifact["quant"].get("method")
    if not quant and artifact.get("file_type") is not None:
        quant = _FILE_TYPES.get(artifact["file_type"], "")
    return {"parent_model": config.get("from") if config.get("from") and names.is_valid(config.get("from")) else "",
            "format": manifest.get("format"), "family": arch, "families": [arch] if arch else None,
            "parameter_size": _size_label(count) if count else "",
            "quantization_level": (quant or "").upper()}


_FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
               12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
               32: "bf16"}


def _size_label(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def model_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    from edgekit.serve.store import Store

    return {"name": manifest["name"], "model": manifest["name"], "modified_at": manifest.get("modified_at"),
            "size": Store.size(manifest), "digest": manifest["digest"].split(":")[-1], "details": details(manifest)}


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    store, _ = _state(request)
    return JSONResponse({"models": [model_entry(m) for m in store.list() if "error" not in m]})


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    _, models = _state(request)
    out = []
    for entry in models.ps():
        loaded = models.loaded.get(entry["name"])
        out.append({**entry, "details": details(loaded.manifest) if loaded else {}})
    return JSONResponse({"models": out})


def _model_name(body: ModelRequest) -> str:
    name = body.model or body.name
    if not name:
        raise EdgekitError("model is required", "pass {\"model\": NAME}")
    return name


def parameters_text(parameters: dict[str, Any]) -> str:
    lines = []
    for name, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{name:<20} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


def show_body(store: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    config = manifest.get("config", {})
    template = config.get("template") or config.get("artifact_template") or ""
    capabilities = ["completion"] + (["embedding"] if manifest.get("format") == "gguf" else [])
    origin = config.get("from")
    modelfile = (f"# Modelfile of {manifest['name']}" + (f", created from {origin}" if origin else "") + "\n"
                 "# FROM names the stored model: edgekit create NEW -f <this file> derives from it\n"
                 + mf_module.render(manifest["name"], config))
    return {"modelfile": modelfile,
            "parameters": parameters_text(config.get("parameters") or {}), "template": template,
            "system": config.get("system") or "", "license": "\n".join(config.get("license") or []),
            "details": details(manifest), "model_info": config.get("model_info") or {},
            "capabilities": capabilities, "modified_at": manifest.get("modified_at"),
            "messages": config.get("messages") or [],
            "edgekit": {"format": manifest.get("format"), "digest": manifest["digest"],
                        "layers": manifest["layers"], "adapters": manifest.get("adapters", []),
                        "artifact_manifest": config.get("artifact_manifest"),
                        "conversion": config.get("conversion"), "from": config.get("from")}}


@router.post("/api/show")
async def show(body: ModelRequest, request: Request) -> Response:
    store, _ = _state(request)
    name = _model_name(body)
    request.state.model = name
    return JSONResponse(show_body(store, store.read(name)))


@router.post("/api/copy")
async def copy(body: CopyRequest, request: Request) -> Response:
    store, models = _state(request)
    request.state.model = body.source
    names.parse(body.destination)
    await asyncio.get_running_loop().run_in_executor(models.executor, store.copy, body.source, body.destination)
    return JSONResponse({"status": "success"})


@router.delete("/api/delete")
async def delete(body: ModelRequest, request: Request) -> Response:
    store, models = _state(request)
    name = str(names.parse(_model_name(body)))
    request.state.model = name
    store.read(name)  # 404 before anything is touched
    await models.unload(name)
    await asyncio.get_running_loop().run_in_executor(models.executor, store.remove, name)
    return JSONResponse({"status": "success"})


async def _progress(stream: bool, statuses: list[dict[str, Any]]) -> Response:
    if not stream:
        return JSONResponse(statuses[-1])
    payload = "".join(json.dumps(s) + "\n" for s in statuses).encode()
    return Response(payload, media_type=NDJSON)


@router.post("/api/create")
async def create(body: CreateRequest, request: Request) -> Response:
    """Create from a stored model (``from``) or from uploaded blobs (``files``: name -> digest), with the
    Modelfile settings as fields. Server-side paths are never read: a client uploads with /api/blobs."""
    from edgekit.serve import build
    from edgekit.serve.modelfile import Modelfile, coerce_parameter

    store, models = _state(request)
    name = body.model or body.name
    if not name:
        raise EdgekitError("model is required", "pass {\"model\": NAME, \"from\": ...} or files")
    target = names.parse(name)
    request.state.model = str(target)
    if body.quantize:
        raise Unsupported("quantize is applied at conversion", "create from a checkpoint with QUANTIZE in a Modelfile "
                                                               "(edgekit create)")
    if body.modelfile:
        mf = mf_module.parse(body.modelfile)
    else:
        mf = Modelfile(source=body.from_)
    if body.template is not None:
        mf.template = body.template
    if body.system is not None:
        mf.system = body.system
    if body.license is not None:
        mf.license = [body.license] if isinstance(body.license, str) else list(body.license)
    if body.parameters:
        for key, value in body.parameters.items():
            if key == "stop":
                mf.parameters["stop"] = [value] if isinstance(value, str) else list(value)
            else:
                mf.parameters[key] = coerce_parameter(key, value)
    if body.messages is not None:
        mf.messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]
    loop = asyncio.get_running_loop()
    if body.adapters and not body.files:
        raise Unsupported("adapters need the base model's files in the same request",
                          "upload the GGUF and the adapter, then send both files and adapters")
    if body.files:
        manifest = await loop.run_in_executor(models.executor, _create_from_files, store, target, body.files, mf,
                                              body.adapters or {})
    else:
        if not mf.source:
            raise EdgekitError("from or files is required", "name a stored model in from, or upload files")
        manifest = await loop.run_in_executor(
            models.executor, lambda: build.create(store, str(target), mf, progress=False, allow_paths=False))
    return await _progress(body.stream, [{"status": "using existing layers"},
                                         {"status": "writing manifest", "digest": manifest["digest"]},
                                         {"status": "success"}])


def _uploaded(store: Any, files: dict[str, str]) -> list[Layer]:
    layers = []
    for path, digest in files.items():
        check_layer_path(path)
        digest = normalize_digest(digest)
        if not store.has_blob(digest):
            raise EdgekitError(f"blob {digest} for {path} is not on the server",
                               "upload it first: POST /api/blobs/DIGEST")
        layers.append(Layer(path, digest, store.blob_path(digest).stat().st_size))
    return layers


def _create_from_files(store: Any, target: Any, files: dict[str, str], mf: Any,
                       adapters: dict[str, str]) -> dict[str, Any]:
    import runtimes
    from edgekit.serve.build import artifact_facts

    layers = _uploaded(store, files)
    extra = _uploaded(store, adapters)
    if len(extra) > 1:
        raise Unsupported("more than one LoRA adapter", "merge them into one adapter")
    for a in extra:
        with store.blob_path(a.digest).open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise EdgekitError(f"adapter {a.path} is not a GGUF adapter", "convert it with edgekit convert "
                                   "--adapter DIR --adapter-only --to gguf")
    if len(layers) == 1 and layers[0].path.endswith(".gguf"):
        fmt = runtimes.artifact_kind(store.blob_path(layers[0].digest))
        artifact = store.blob_path(layers[0].digest)
        if fmt != "gguf":
            raise EdgekitError(f"{layers[0].path} is not a GGUF file", "upload the .gguf written by edgekit convert")
    else:
        probe = {"name": str(target), "format": "dir", "layers": [x.as_dict() for x in layers]}
        artifact = store.artifact(probe)
        fmt = runtimes.artifact_kind(artifact)
    config = {**{k: v for k, v in mf.config().items() if v not in (None, [], {})}, **artifact_facts(artifact, fmt),
              "from": "upload"}
    if extra and fmt != "gguf":
        raise Unsupported(f"a LoRA adapter file cannot apply to a {fmt} model", "merge it at conversion")
    return store.create(target, fmt, layers, config, [Layer(f"adapter-{i}.gguf", a.digest, a.size)
                                                      for i, a in enumerate(extra)])


@router.post("/api/pull")
async def pull(body: ModelRequest, request: Request) -> Response:
    """Pull a Hugging Face checkpoint (``org/name``), convert it to GGUF f16 and store it under that name."""
    from edgekit.serve import build

    store, models = _state(request)
    hub_id = _model_name(body)
    request.state.model = hub_id
    if hub_id.count("/") != 1 or not names.is_valid(hub_id.split("@")[0]):
        raise ModelNotFound(f"cannot pull {hub_id[:80]!r}: not a Hugging Face id", "pass org/name")
    try:
        manifest = await asyncio.get_running_loop().run_in_executor(
            models.executor, lambda: build.pull(store, hub_id, progress=False))
    except ModelNotFound:
        raise
    except EdgekitError as err:
        raise ModelNotFound(f"cannot pull {hub_id}: {err.what}", err.fix) from None
    return await _progress(body.stream, [{"status": "pulling manifest"}, {"status": "converting"},
                                         {"status": "writing manifest", "digest": manifest["digest"]},
                                         {"status": "success"}])


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str, request: Request) -> Response:
    store, _ = _state(request)
    try:
        found = store.has_blob(digest)
    except EdgekitError:
        return Response(status_code=400)
    return Response(status_code=200 if found else 404)


@router.post("/api/blobs/{digest}")
async def blob_upload(digest: str, request: Request) -> Response:
    """Stream the body to a temporary file in blobs/, hashing as it comes; keep it only if it matches."""
    store, _ = _state(request)
    expected = normalize_digest(digest)
    if store.has_blob(expected):
        return Response(status_code=200)
    store._ensure()
    tmp = store.blobs / store._tmp_name()
    h = hashlib.sha256()
    try:
        with tmp.open("xb") as fh:
            async for chunk in request.stream():
                h.update(chunk)
                fh.write(chunk)
        actual = f"sha256:{h.hexdigest()}"
        if actual != expected:
            raise EdgekitError(f"the uploaded bytes hash to {actual}, not {expected}", "upload the file you named")
        store._commit_blob(tmp, expected)
    finally:
        if tmp.exists():
            os.unlink(tmp)
    return Response(status_code=201)


@router.get("/api/version")
async def version() -> Response:
    from edgekit import __version__

    return JSONResponse({"version": __version__})


@router.get("/")
async def root() -> Response:
    return PlainTextResponse("edgekit is running (Ollama-compatible API)")


@router.head("/", include_in_schema=False)
async def root_head() -> Response:
    return PlainTextResponse("")

