"""GGUF code a family needs beyond its description, one module each, registered by model_type.

As in llama.cpp's ``conversion/`` package, a module registers its :class:`~converters.gguf.model.Model`
subclass with ``@register("llama", ...)``; :data:`MODULES` says which module holds a model_type so only
that one is imported. Families without a module (their description says all llama.cpp needs) use
:class:`Model` itself. :data:`CANNOT` is where GGUF states what llama.cpp cannot represent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from converters.gguf.model import Model
from edgekit.errors import EdgekitError

MODULES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "phi3": "phi3",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen2_moe",
}
# model_type -> (does llama.cpp fail this spec?, why); llama.cpp scales gemma3's attention by 1/sqrt(head_dim)
# (hidden/heads for its 62-layer 27B) whatever query_pre_attn_scalar says
CANNOT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "gemma3_text": (lambda s: float(s.extra.get("query_pre_attn_scalar", s.head_dim)) != (
        s.hidden_size / s.num_heads if s.num_layers == 62 else s.head_dim),
        "llama.cpp fixes gemma3's attention scale at 1/sqrt(head_dim), not this config's query_pre_attn_scalar"),
}
_REGISTRY: dict[str, type[Model]] = {}


def register(*model_types: str) -> Callable[[type[Model]], type[Model]]:
    def add(cls: type[Model]) -> type[Model]:
        for name in model_types:
            _REGISTRY[name] = cls
        return cls

    return add


def get(spec: Any) -> type[Model]:
    """The Model class converting ``spec``'s family."""
    fam = spec.family
    if not fam.gguf_arch:
        raise EdgekitError(f"architecture {spec.architecture!r} has no GGUF converter", "convert it to onnx instead")
    if spec.architecture in CANNOT and CANNOT[spec.architecture][0](spec):
        raise EdgekitError(CANNOT[spec.architecture][1], "convert it to onnx instead")
    if spec.architecture not in MODULES:
        return Model
    importlib.import_module(f"{__name__}.{MODULES[spec.architecture]}")
    return _REGISTRY[spec.architecture]
