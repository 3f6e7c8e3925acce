"""Architecture families, one module each, registered by the Hugging Face classes they convert.

As in llama.cpp's ``conversion/`` package, a module registers its :class:`~converters.gguf.model.Model`
subclass with ``@register("LlamaForCausalLM", ...)``; :data:`MODULES` says which module holds a
class so only that one is imported. A new family is one module plus its lines in MODULES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from converters.gguf.model import Model
from edgekit.errors import EdgekitError

MODULES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "Gemma2ForCausalLM": "gemma2",
    "GPT2LMHeadModel": "gpt2",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
}
# model_type -> class, for configs whose "architectures" list is missing or names a head we do not know
BY_MODEL_TYPE: dict[str, str] = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "gpt2": "GPT2LMHeadModel", "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
}
_REGISTRY: dict[str, type[Model]] = {}


def register(*hf_classes: str) -> Callable[[type[Model]], type[Model]]:
    def add(cls: type[Model]) -> type[Model]:
        cls.hf_classes = hf_classes
        for name in hf_classes:
            _REGISTRY[name] = cls
        return cls

    return add


def get(hf_class: str, model_type: str) -> type[Model]:
    """The Model class converting ``hf_class`` (falling back on ``model_type``)."""
    if hf_class not in MODULES:
        if model_type not in BY_MODEL_TYPE:
            raise EdgekitError(f"architecture {hf_class or model_type!r} has no GGUF converter",
                               f"supported: {', '.join(sorted(MODULES))}")
        hf_class = BY_MODEL_TYPE[model_type]
    importlib.import_module(f"{__name__}.{MODULES[hf_class]}")
    return _REGISTRY[hf_class]
