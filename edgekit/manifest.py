"""``edgekit.json``: what an artifact is and where it came from (DESIGN.md, "Artifacts and the store")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "edgekit.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def build(*, format: str, source: str, source_sha256: str | None, quant: dict[str, Any] | None,
          tokenizer: dict[str, Any] | None, chat_template: str | None, context_length: int | None,
          files: list[Path], root: Path, adapter: str | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest dict; ``files`` are hashed and recorded relative to ``root``."""
    from edgekit import __version__

    return {
        "edgekit_version": __version__, "format": format, "source": source, "source_sha256": source_sha256,
        "adapter": adapter, "quant": quant or {"method": "none"}, "tokenizer": tokenizer,
        "chat_template": chat_template, "context_length": context_length,
        "files": {str(f.relative_to(root)): {"sha256": file_sha256(f), "bytes": f.stat().st_size}
                  for f in sorted(files)},
        **extra,
    }


def write(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def read(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None
