"""What a path holds when it is not what a command expected: a Hugging Face checkpoint, a folder of
artifacts, or nothing edgekit knows; and what an artifact holds (``edgekit inspect`` on a GGUF file or
an ONNX / Core ML directory), read from its metadata or manifest without loading the model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

GGUF_MAGIC = b"GGUF"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def is_checkpoint(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (
        any((directory / f).exists() for f in WEIGHT_FILES) or any(directory.glob("*.safetensors")))


def is_artifact_dir(directory: Path) -> bool:
    return directory.is_dir() and ((directory / "edgekit.json").is_file() or (directory / "model.onnx").is_file()
                                   or directory.suffix == ".mlpackage")


def find_artifacts(directory: Path) -> list[Path]:
    """GGUF files and artifact directories directly inside ``directory``."""
    found = []
    for child in sorted(directory.iterdir()):
        if child.is_file() and child.suffix == ".gguf" and is_gguf(child):
            found.append(child)
        elif is_artifact_dir(child):
            found.append(child)
    return found


def not_an_artifact(path: Path, command: str = "run") -> EdgekitError:
    """The error for a directory ``edgekit run`` cannot run, saying what it holds and what to type."""
    if is_checkpoint(path):
        weights = [f for f in WEIGHT_FILES if (path / f).exists()] or sorted(p.name for p in path.glob("*.safetensors"))
        return EdgekitError(f"{path} is a Hugging Face checkpoint (config.json, {', '.join(weights[:3])}), "
                            "not an artifact edgekit runs",
                            f"convert it first: edgekit convert {path} --to gguf (or onnx, coreml), "
                            f"then edgekit {command} the output")
    try:
        found = find_artifacts(path)
    except OSError:
        found = []
    if found:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:6]) + (" ..." if len(found) > 6 else "")
        return EdgekitError(f"{path} is a folder of {len(found)} artifact{'s' if len(found) > 1 else ''} "
                            f"({names}), not one artifact", f"{command} one of them: edgekit {command} {found[0]}")
    return EdgekitError(f"{path} holds no model.onnx, model.mlpackage or edgekit.json",
                        "pass a .gguf file or a directory written by edgekit convert")


# -- inspect ----------------------------------------------------------------------------------------

def inspect_gguf(path: Path) -> dict[str, Any]:
    """Metadata of a GGUF file: architecture, tensors and their types, context, tokenizer, chat template,
    quantization, and what edgekit recorded at convert time (``edgekit.*`` keys)."""
    from gguf import GGUFReader, GGUFValueType, LlamaFileType

    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # the reader raises many types on a damaged header
        raise EdgekitError(f"{path} has a corrupt GGUF header ({type(err).__name__}: {str(err)[:100]})",
                           "re-create it with edgekit convert --to gguf") from None
    fields = reader.fields

    def get(key: str) -> Any:
        field = fields.get(key)
        if field is None:
            return None
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            return field.contents()
        return field.contents()

    arch = get("general.architecture")
    types: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    for t in reader.tensors:
        types[t.tensor_type.name] += 1
        elements[t.tensor_type.name] += int(t.n_elements)
    file_type = get("general.file_type")
    try:
        name = None if file_type is None else LlamaFileType(file_type).name
        quant = None if name is None else name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        quant = str(file_type)
    tokens = fields.get("tokenizer.ggml.tokens")
    check = get("edgekit.tokenizer_check")
    stops = get("edgekit.stop_token_ids")
    return {
        "path": str(path), "format": "gguf", "bytes": path.stat().st_size,
        "gguf_version": int(get("GGUF.version") or 0) or None,
        "architecture": arch, "name": get("general.name"),
        "tensors": len(reader.tensors), "parameters": sum(elements.values()),
        "tensor_types": dict(types.most_common()), "type_elements": dict(elements.most_common()),
        "quantization": quant,
        "context_length": get(f"{arch}.context_length"),
        "layers": get(f"{arch}.block_count"), "embedding_length": get(f"{arch}.embedding_length"),
        "tokenizer": {
            "model": get("tokenizer.ggml.model"), "pre": get("tokenizer.ggml.pre"),
            "vocab_size": len(tokens.data) if tokens is not None else None,
            "bos_token_id": get("tokenizer.ggml.bos_token_id"), "eos_token_id": get("tokenizer.ggml.eos_token_id"),
            "add_bos": get("tokenizer.ggml.add_bos_token"),
            "add_space_prefix": get("tokenizer.ggml.add_space_prefix"),
        },
        "chat_template": get("tokenizer.chat_template") is not None,
        "stop_token_ids": json.loads(stops) if isinstance(stops, str) else stops,
        "tokenizer_check": json.loads(check) if isinstance(check, str) else None,
        "edgekit_version": get("edgekit.version"), "source_sha256": get("edgekit.source_sha256"),
    }


def inspect_directory(path: Path) -> dict[str, Any]:
    """An ONNX or Core ML directory, from its ``edgekit.json`` manifest."""
    manifest_path = path / "edgekit.json"
    if not manifest_path.is_file():
        raise EdgekitError(f"{path} has no edgekit.json manifest", "re-create it with edgekit convert")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise EdgekitError(f"{manifest_path} is not valid JSON ({err})",
                           "re-create the artifact with edgekit convert") from None
    files = manifest.get("files") or {}
    tokenizer = manifest.get("tokenizer") or {}
    return {
        "path": str(path), "format": manifest.get("format"), "architecture": manifest.get("architecture"),
        "source": manifest.get("source"), "source_sha256": manifest.get("source_sha256"),
        "quantization": manifest.get("quant"), "context_length": manifest.get("context_length"),
        "files": len(files), "bytes": sum(int(f.get("bytes", 0)) for f in files.values() if isinstance(f, dict)),
        "tokenizer": {k: tokenizer.get(k) for k in ("kind", "byte_level", "vocab_size") if k in tokenizer},
        "chat_template": bool(manifest.get("chat_template")),
        "stop_token_ids": manifest.get("stop_token_ids"), "tokenizer_check": manifest.get("tokenizer_check"),
        "edgekit_version": manifest.get("edgekit_version"),
        "details": {k: manifest[k] for k in ("onnx", "coreml") if k in manifest},
    }


def human_size(n: float) -> str:
    """Bytes as people read them (decimal units, as `ls -h --si` and the README do)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def check_line(check: dict[str, Any] | None) -> str:
    if not check:
        return "not recorded (converted by an older edgekit)"
    if check.get("ok"):
        return f"ok: {check.get('tokens')} probe tokens identical to transformers"
    if check.get("ok") is None:
        return str(check.get("detail", "not checked"))
    return f"MISMATCH: {check.get('detail')}"


def format_text(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_gguf` / :func:`inspect_directory`."""
    tok = info["tokenizer"]
    if info["format"] == "gguf":
        types = ", ".join(f"{k} {v}" for k, v in info["tensor_types"].items())
        lines = [
            f"artifact      {info['path']} (GGUF v{info['gguf_version']}, {human_size(info['bytes'])})",
            f"architecture  {info['architecture']}" + (f" ({info['name']})" if info["name"] else ""),
            f"tensors       {info['tensors']} ({info['parameters']:,} parameters): {types}",
            f"quantization  {info['quantization']}",
            f"context       {info['context_length']} tokens" + (f", {info['layers']} layers" if info["layers"] else ""),
            f"tokenizer     {tok['model']} (pre {tok['pre']}), {tok['vocab_size']} tokens, bos {tok['bos_token_id']}, "
            f"eos {tok['eos_token_id']}" + (f", add_space_prefix {tok['add_space_prefix']}"
                                            if tok["add_space_prefix"] is not None else ""),
        ]
    else:
        quant = info["quantization"] or {}
        q = ", ".join(f"{k} {v}" for k, v in quant.items()) if isinstance(quant, dict) else str(quant)
        lines = [
            f"artifact      {info['path']} ({info['format']}, {info['files']} files, {human_size(info['bytes'])})",
            f"architecture  {info['architecture']}",
            f"source        {info['source']}",
            f"quantization  {q}",
            f"context       {info['context_length']} tokens",
            f"tokenizer     {tok.get('kind')}" + (f", {tok['vocab_size']} tokens" if tok.get("vocab_size") else ""),
        ]
    lines.append(f"chat template {'yes' if info['chat_template'] else 'no'}")
    stops = info.get("stop_token_ids")
    lines.append(f"stop tokens   {stops if stops is not None else 'not recorded'}")
    lines.append(f"tokenizer check {check_line(info.get('tokenizer_check'))}")
    return "\n".join(lines)


def warning_for(info: dict[str, Any]) -> str | None:
    """The one warning line ``inspect`` prints when the artifact's tokenizer disagrees with transformers."""
    check = info.get("tokenizer_check")
    if check and not check.get("ok"):
        return f"edgekit: warning: {info['path']}: its tokenizer does not match transformers: {check.get('detail')}"
    return None


def inspect_artifact(path: Path) -> dict[str, Any] | None:
    """:func:`inspect_gguf` / :func:`inspect_directory` when ``path`` is an artifact, else None (a checkpoint,
    which :func:`edgekit.inspect.inspect` describes). A folder of artifacts is an error listing them."""
    if path.is_file():
        if is_gguf(path):
            return inspect_gguf(path)
        raise EdgekitError(f"{path} is not a GGUF file",
                           "inspect a .gguf file, an ONNX / Core ML directory, or a Hugging Face checkpoint directory")
    if path.is_dir() and is_artifact_dir(path) and not is_checkpoint(path):
        return inspect_directory(path)
    if path.is_dir() and not (path / "config.json").exists() and find_artifacts(path):
        raise not_an_artifact(path, "inspect")
    return None  # a checkpoint, or nothing: the checkpoint reader says what is missing
