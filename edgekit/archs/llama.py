"""Llama and Mistral: the reference layout every other family departs from.

llama.cpp's LLAMA architecture applies rope to interleaved pairs, so its converter permutes the q/k rows;
Mistral's sliding window (when its config has one) applies to every layer."""

from __future__ import annotations

from edgekit.archs import register
from edgekit.archs.base import Family


@register("llama", "mistral")
class Llama(Family):
    gguf_rope_permute = True
    gguf_arch = "LLAMA"

    @property
    def hf_class(self) -> str:  # type: ignore[override]
        return {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}[self.model_type]

    @property
    def genai_type(self) -> str:  # type: ignore[override]
        return self.model_type
