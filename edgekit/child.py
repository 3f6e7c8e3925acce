"""The environment of a Python child process this package starts (``[sys.executable, ...]``): the parent's, with
this checkout importable in the child exactly as the parent sees it (a source tree run without installing)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def env(**extra: str) -> dict[str, str]:
    """``os.environ`` plus ``extra``, with this package's root first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **extra, "PYTHONPATH": path}
