"""One description per architecture family, read by :mod:`edgekit.spec`, every converter and the quantizers.

As in llama.cpp's ``conversion/`` package, each family is one module whose :class:`~edgekit.archs.base.Family`
subclass registers itself with ``@register("model_type", ...)``; :data:`MODULES` says which module holds
a model_type, so only that one is imported. Adding a family is one module plus its line here (and, where
a format cannot convert it yet, one line where that format states what it cannot do).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    from edgekit.archs.base import Family

MODULES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gpt2": "gpt2",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen2_moe",
}
_REGISTRY: dict[str, Family] = {}


def register(*model_types: str) -> Callable[[type[Family]], type[Family]]:
    def add(cls: type[Family]) -> type[Family]:
        for model_type in model_types:
            _REGISTRY[model_type] = cls(model_type)
        return cls

    return add


def supported() -> list[str]:
    return sorted(MODULES)


def get(model_type: str | None) -> Family:
    """The description of ``model_type``; EdgekitError naming the supported ones for any other."""
    if model_type not in MODULES:
        raise EdgekitError(f"model_type {model_type!r} is not supported", f"supported: {', '.join(supported())}")
    importlib.import_module(f"{__name__}.{MODULES[model_type]}")
    return _REGISTRY[model_type]
