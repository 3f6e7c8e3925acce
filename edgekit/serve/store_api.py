"""Ollama's model-management API over the store: tags, ps, show, create (from a stored model or uploaded
blobs), copy, delete, pull, blobs, version, and the root liveness routes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from edgekit.errors import EdgekitError
from edgekit.serve import modelfile as mf_module
from edgekit.serve import names
from edgekit.serve.engine import Unsupported
from edgekit.serve.schemas import CopyRequest, CreateRequest, ModelRequest
from edgekit.serve.store import Layer, ModelNotFound, check_layer_path, normalize_digest

router = APIRouter()
NDJSON = "application/x-ndjson"


def _state(request: Request) -> tuple[Any, Any]:
    return request.app.state.store, request.app.state.models

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
