"""Put models into the store: ``create`` from a Modelfile, ``pull`` from the hub, and what both need
(resolving FROM, converting a checkpoint, reading the artifact's own facts for ``show``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.serve import names
from edgekit.serve.modelfile import Modelfile
from edgekit.serve.store import ModelNotFound, Store

DEFAULT_FORMAT = "gguf"
DEFAULT_QUANT = {"gguf": "f16", "onnx": None, "coreml": None}   # a checkpoint FROM becomes GGUF f16 by default
QUANT_OPTION = {"gguf": "outtype", "onnx": "dtype", "coreml": "precision"}


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and not (path / "edgekit.json").exists() \
        and not (path / "model.onnx").exists()


def artifact_facts(path: Path, fmt: str) -> dict[str, Any]:
    """What ``show`` reports about an artifact: its edgekit manifest and model info (architecture, sizes)."""
    info: dict[str, Any] = {}
    manifest: dict[str, Any] | None = None
    template: str | None = None
    if fmt == "gguf":
        gguf_file = path if path.is_file() else next(iter(sorted(path.glob("*.gguf"))), None)
        if gguf_file is not None:
            try:
                from gguf import GGUFReader, GGUFValueType

                reader = GGUFReader(str(gguf_file))
                if "tokenizer.chat_template" in reader.fields:
                    template = reader.fields["tokenizer.chat_template"].contents()
                edgekit_keys: dict[str, Any] = {}
                for key, fld in reader.fields.items():
                    if key.startswith("tokenizer.ggml.") or key == "tokenizer.chat_template":
                        continue
                    if not fld.types or fld.types[0] == GGUFValueType.ARRAY:
                        continue
                    value = fld.contents()
                    if key.startswith("edgekit."):
                        edgekit_keys[key[len("edgekit."):]] = value
                    elif not key.startswith("GGUF."):
                        info[key] = value
                info["general.parameter_count"] = int(sum(int(t.n_elements) for t in reader.tensors))
                file_type = info.get("general.file_type")
                manifest = {"format": "gguf", **edgekit_keys, "file_type": file_type}
            except Exception as err:  # a file llama.cpp may still load: show what we could not read
                info["error"] = f"cannot read GGUF metadata: {type(err).__name__}"
    else:
        root = path if path.is_dir() else path.parent
        try:
            manifest = json.loads((root / "edgekit.json").read_text())
        except (OSError, ValueError):
            manifest = None
        try:
            from runtimes.hftokenizer import HFTokenizer

            template = HFTokenizer(root).chat_template
        except Exception:  # no tokenizer: show says so by an empty template
            template = None
        try:
            config = json.loads((root / "config.json").read_text())
            arch = config.get("model_type", "")
            info["general.architecture"] = arch
            for key in ("max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "vocab_size", "intermediate_size"):
                if key in config:
                    info[f"{arch}.{key}"] = config[key]
        except (OSError, ValueError):
            pass
    return {"model_info": info, "artifact_manifest": manifest, "artifact_template": template}


def _convert(store: Store, checkpoint: str, fmt: str, quantize: str | None, adapter: str | None,
             progress: bool) -> tuple[Path, Path, dict[str, Any]]:
    """Convert a checkpoint into a work directory of the store; returns (artifact, workdir, summary)."""
    import converters

    module = converters.get(fmt)
    options: dict[str, Any] = {}
    quant = quantize or DEFAULT_QUANT[fmt]
    if quant:
        options[QUANT_OPTION[fmt]] = quant
    work = store.workdir()
    out = work / ("model.gguf" if fmt == "gguf" else "model")
    try:
        summary = module.convert(checkpoint, str(out), adapter=adapter, allow_pickle=False, force=False,
                                 progress=progress, **options)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Path(summary.get("output") or out), work, summary


def create(store: Store, name: str, mf: Modelfile, base_dir: Path | None = None, progress: bool = True,
           allow_paths: bool = True) -> dict[str, Any]:
    """Create (or replace) ``name`` from the Modelfile ``mf``; relative paths resolve against ``base_dir``.

    ``allow_paths=False`` (the HTTP API) accepts only store names in FROM: a client must not make the
    server read its own files."""
    target = names.parse(name)
    source = mf.source or ""
    base_dir = base_dir or Path.cwd()
    settings = {k: v for k, v in mf.config().items() if v not in (None, [], {})}

    base: dict[str, Any] | None = None
    if names.is_valid(source) and not source.startswith((".", "/", "~")):
        try:
            base = store.read(source)
        except ModelNotFound:
            base = None
    if base is not None:
        if mf.quantize or mf.format:
            raise EdgekitError("QUANTIZE and FORMAT apply to a checkpoint FROM, not to a stored model",
                               "convert the checkpoint again, or drop them")
        if mf.adapters:
            raise EdgekitError("ADAPTER on a stored model is not supported",
                               "FROM the checkpoint with ADAPTER, so the LoRA is merged at conversion")
        missing = store.missing_blobs(base)
        if missing:
            raise EdgekitError(f"model '{base['name']}' is damaged: blob {missing[0]} is missing",
                               "re-create that model first")
        config = dict(base.get("config", {}))
        params = dict(config.get("parameters") or {})
        params.update(settings.pop("parameters", {}))
        config.update(settings)
        config["parameters"] = params
        config["from"] = base["name"]
        from edgekit.serve.store import Layer

        layers = [Layer(x["path"], x["digest"], x["size"]) for x in base["layers"]]
        adapters = [Layer(x["path"], x["digest"], x["size"]) for x in base.get("adapters", [])]
        return store.create(target, base["format"], layers, config, adapters)
    if not allow_paths:
        raise ModelNotFound(f"model '{source}' not found", "create it first, or upload files with /api/blobs")

    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists() and "/" not in source:
        raise ModelNotFound(f"FROM {source}: no model of that name in the store and no such path ({path})",
                            "see edgekit list, or FROM an artifact, a checkpoint directory or a hub id org/name")
    adapters = [(Path(a).expanduser() if Path(a).expanduser().is_absolute() else base_dir / a) for a in mf.adapters]
    for a in adapters:
        if not a.exists():
            raise EdgekitError(f"ADAPTER {a} does not exist", "pass a PEFT LoRA directory or a GGUF adapter file")
    work: Path | None = None
    try:
        if path.exists() and not _is_checkpoint(path):
            import runtimes

            if mf.quantize or mf.format:
                raise EdgekitError("QUANTIZE and FORMAT apply to a checkpoint FROM, not to a converted artifact",
                                   "convert the checkpoint in the Modelfile's FROM instead")
            fmt = runtimes.artifact_kind(path)
            gguf_adapters = []
            for a in adapters:
                if fmt != "gguf" or not a.is_file():
                    raise EdgekitError(f"ADAPTER {a} cannot apply to a {fmt} artifact",
                                       "FROM the checkpoint with ADAPTER (the LoRA is merged at conversion), or "
                                       "use a GGUF adapter with a GGUF FROM")
                with a.open("rb") as fh:
                    if fh.read(4) != b"GGUF":
                        raise EdgekitError(f"ADAPTER {a} is not a GGUF adapter file",
                                           "convert it with edgekit convert --adapter DIR --adapter-only --to gguf")
                gguf_adapters.append(a)
            if len(gguf_adapters) > 1:
                raise EdgekitError("more than one ADAPTER on a GGUF", "merge them into one adapter")
            artifact, move = path, False
            adapter_files = gguf_adapters
            summary: dict[str, Any] = {}
        else:
            fmt = mf.format or DEFAULT_FORMAT
            if len(adapters) > 1:
                raise EdgekitError("more than one ADAPTER for a checkpoint", "merge them first, or pass one")
            if adapters and not adapters[0].is_dir():
                raise EdgekitError(f"ADAPTER {adapters[0]} is not a PEFT LoRA directory",
                                   "a checkpoint FROM takes the adapter directory (adapter_config.json)")
            checkpoint = str(path) if path.exists() else source
            artifact, work, summary = _convert(store, checkpoint, fmt, mf.quantize,
                                               str(adapters[0]) if adapters else None, progress)
            move, adapter_files = True, []
        facts = artifact_facts(artifact, fmt)
        config = {**settings, **facts, "from": source}
        if summary:
            config["conversion"] = {k: summary.get(k) for k in ("format", "outtype", "dtype", "precision", "adapter",
                                                                "source_sha256", "seconds") if summary.get(k)}
        return store.create_from_artifact(target, artifact, fmt, config, adapters=adapter_files, move=move,
                                          progress=progress)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def pull(store: Store, hub_id: str, name: str | None = None, fmt: str = DEFAULT_FORMAT, quantize: str | None = None,
         progress: bool = True) -> dict[str, Any]:
    """Download a Hugging Face checkpoint, convert it, store it as ``name`` (default: the repo's name)."""
    from edgekit.checkpoint import resolve

    if not isinstance(hub_id, str) or hub_id.startswith((".", "/", "~")) or hub_id.count("/") != 1:
        raise EdgekitError(f"{hub_id!r} is not a hub id", "pass org/name[@revision]")
    local = resolve(hub_id)  # one clear line when offline or the id does not exist
    repo = hub_id.partition("@")[0]
    target = name or repo.split("/")[-1].lower()
    names.parse(target)
    mf = Modelfile(source=str(local), format=fmt, quantize=quantize)
    manifest = create(store, target, mf, progress=progress)
    config = manifest["config"]
    config["from"] = hub_id
    return store.create(target, manifest["format"],
                        [_layer(x) for x in manifest["layers"]], config,
                        [_layer(x) for x in manifest.get("adapters", [])])


def _layer(x: dict[str, Any]) -> Any:
    from edgekit.serve.store import Layer

    return Layer(x["path"], x["digest"], x["size"])
