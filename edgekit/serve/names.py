"""Model names ``[namespace/]model[:tag]``: parsed, normalised and refused when they could escape the store.

A component starts with a letter or digit and holds only letters, digits, ``.``, ``_`` and ``-``, so
``..``, absolute paths, separators other than the one ``/`` and NUL can never reach the filesystem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.errors import EdgekitError

DEFAULT_TAG = "latest"
MAX_NAME = 200  # characters of the whole name:tag
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,79}")


@dataclass(frozen=True)
class ModelName:
    name: str          # "model" or "namespace/model" (lowercase)
    tag: str

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def parse(text: object) -> ModelName:
    """``text`` as a ModelName; raises EdgekitError (one line) when it is not a safe model name."""
    if not isinstance(text, str) or not text:
        raise EdgekitError("a model name is required", "pass NAME or NAME:TAG, e.g. tiny:latest")
    shown = text if len(text) <= 60 and text.isprintable() else repr(text[:60]) + ("..." if len(text) > 60 else "")
    if len(text) > MAX_NAME:
        raise EdgekitError(f"model name {shown} is longer than {MAX_NAME} characters", "choose a shorter name")
    name, sep, tag = text.rpartition(":")
    if not sep:
        name, tag = text, DEFAULT_TAG
    parts = name.split("/")
    if len(parts) > 2 or not all(_PART.fullmatch(p) for p in parts) or not _TAG.fullmatch(tag):
        raise EdgekitError(f"invalid model name {shown}",
                           "use [namespace/]model[:tag] with letters, digits, '.', '_' and '-' "
                           "(each part starting with a letter or digit)")
    return ModelName(name.lower(), tag)


def is_valid(text: object) -> bool:
    try:
        parse(text)
    except EdgekitError:
        return False
    return True
