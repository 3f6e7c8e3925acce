"""Where ``make llama-tools`` (benchmarks/llama_tools.sh) put llama.cpp's reference binaries.

They are built once per machine from the llama.cpp source vendored in the installed llama-cpp-python's sdist,
into ``$EDGEKIT_CACHE`` (default ``~/.cache/edgekit``) ``/llama.cpp-<llama-cpp-python version>/bin``.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

TOOLS = ("llama-perplexity", "llama-imatrix", "llama-quantize", "llama-bench", "llama-server")


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")).expanduser()


def bin_dir() -> Path:
    """The directory the tools of the installed llama-cpp-python version live in (present or not)."""
    return cache_dir() / f"llama.cpp-{importlib.metadata.version('llama_cpp_python')}" / "bin"


def find(tool: str) -> Path | None:
    """Path of ``tool`` (e.g. "llama-perplexity") if built, else None."""
    if tool not in TOOLS:
        raise ValueError(f"{tool} is not one of the tools make llama-tools builds: {', '.join(TOOLS)}")
    try:
        path = bin_dir() / tool
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if os.access(path, os.X_OK) else None


def require(tool: str) -> Path:
    """Path of ``tool``, or skip the calling test with the command that builds it."""
    path = find(tool)
    if path is None:
        import pytest

        pytest.skip(f"{tool} not built; run `make llama-tools` (builds llama.cpp's tools once per machine)")
    return path
