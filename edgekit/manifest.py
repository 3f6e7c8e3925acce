"""``edgekit.json``: what an artifact is and where it came from (DESIGN.md, "Artifacts and the store").

Directory artifacts (ONNX, Core ML) carry it as ``edgekit.json``; a GGUF file carries the same fields
in its metadata, one ``edgekit.<field>`` key each (strings and numbers as GGUF values, objects and
lists as JSON text under ``edgekit.<field>.json``). :func:`load` reads either back as the same dict.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json

MANIFEST = "edgekit.json"
FIELDS = ("edgekit_version", "format", "source", "source_sha256", "adapter", "quant", "tokenizer", "chat_template",
          "context_length", "files")
_GGUF_PREFIX = "edgekit."


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def build(*, format: str, source: str, source_sha256: str | None, quant: dict[str, Any] | None,
          tokenizer: dict[str, Any] | None, chat_template: str | None, context_length: int | None,
          files: list[Path], root: Path | None, adapter: str | None = None,
          hashed: dict[Path, str | None] | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest dict; ``files`` are hashed and recorded relative to ``root`` (none for a GGUF file,
    which cannot hold its own hash); ``hashed``: files whose sha256 the writer computed as it wrote them."""
    from edgekit import __version__

    known = {Path(f): h for f, h in (hashed or {}).items() if h}
    return {
        "edgekit_version": __version__, "format": format, "source": source, "source_sha256": source_sha256,
        "adapter": adapter, "quant": quant or {"method": "none"}, "tokenizer": tokenizer,
        "chat_template": chat_template, "context_length": context_length,
        "files": {str(f.relative_to(root)): {"sha256": known.get(f) or file_sha256(f), "bytes": f.stat().st_size}
                  for f in sorted(files)} if root is not None else {},
        **extra,
    }


def write(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def _gguf_key(field: str) -> str:
    return _GGUF_PREFIX + ("version" if field == "edgekit_version" else field)


def write_gguf(w: Any, manifest: dict[str, Any]) -> None:
    """Add ``manifest`` to a ``gguf.GGUFWriter`` as ``edgekit.*`` keys (None values are left out)."""
    for field, value in manifest.items():
        key = _gguf_key(field)
        if value is None:
            continue
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_int64(key, value)
        elif isinstance(value, float):
            w.add_float64(key, value)
        else:
            w.add_string(key + ".json", json.dumps(value, default=str, sort_keys=True))


def read_gguf(path: Path) -> dict[str, Any]:
    """The manifest held in a GGUF file's ``edgekit.*`` keys."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise EdgekitError(f"{path} is not a readable GGUF file ({exc})", "re-create it with edgekit convert") from None
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    for key, field in reader.fields.items():
        if not key.startswith(_GGUF_PREFIX):
            continue
        name = key[len(_GGUF_PREFIX):]
        value = field.contents()
        if name.endswith(".json"):
            name, value = name[:-len(".json")], json.loads(value)
        out["edgekit_version" if name == "version" else name] = value
    if out["format"] is None:
        raise EdgekitError(f"{path} carries no edgekit manifest", "convert it with edgekit convert --to gguf")
    return out


def load(artifact: str | Path) -> dict[str, Any]:
    """The manifest of an artifact: a GGUF file (its ``edgekit.*`` keys) or a directory (``edgekit.json``)."""
    path = Path(artifact)
    if path.is_dir():
        if not (path / MANIFEST).exists():
            raise EdgekitError(f"{path} has no {MANIFEST}", "pass a directory written by edgekit convert")
        return read_json(path / MANIFEST, "manifest")
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(4) == b"GGUF":
                return read_gguf(path)
    raise EdgekitError(f"{path} is neither a GGUF file nor an artifact directory", "pass what edgekit convert wrote")
