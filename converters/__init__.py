"""Artifact writers: one subpackage per format (gguf/, onnx/, coreml/), each with per-architecture
mapping tables over a shared base. Input is a model reference (checkpoint + optional LoRA adapter);
output is an artifact plus its edgekit.json manifest, written all-or-nothing.

A format is one subpackage plus one line in :data:`FORMATS`. Each subpackage exposes
``OPTIONS`` (the option names it accepts beyond the common ones) and
``convert(model, output, *, adapter, allow_pickle, force, progress, **options) -> dict``, returning
a JSON-serialisable summary.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from edgekit.errors import EdgekitError

FORMATS: dict[str, str] = {
    "gguf": "converters.gguf",
    "onnx": "converters.onnx",
    "coreml": "converters.coreml",
}


def get(fmt: str) -> ModuleType:
    """The converter module for ``fmt`` (imported on first use, so the CLI starts fast)."""
    if fmt not in FORMATS:
        raise EdgekitError(f"unknown format {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    try:
        return importlib.import_module(FORMATS[fmt])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(FORMATS[fmt]):
            raise EdgekitError(f"the {fmt} converter is not available in this build of edgekit",
                               "choose one of the available formats") from None
        raise


def default_output(model: str, tag: str) -> Path:
    """Where ``convert`` writes without ``-o``: ``<model name>-<tag>`` in the working directory."""
    name = Path(str(model).rstrip("/")).name or "model"
    return Path.cwd() / f"{name}-{tag}"
