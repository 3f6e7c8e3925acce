"""Llama and Mistral: Llama 3.1 rope scaling becomes llama.cpp's rope_freqs tensor."""

from __future__ import annotations

import gguf

from converters.gguf.archs import register
from converters.gguf.model import Job, Model
from edgekit.rope import llama3_factors


@register("llama", "mistral")
class Llama(Model):
    def extra_jobs(self) -> list[Job]:
        rope = self.spec.rope
        if rope is None or rope.scaling != "llama3":
            return []
        factors = llama3_factors(rope.theta, self.spec.head_dim, rope.factor or 8.0, rope.extra,
                                 rope.original_context or 8192)
        return [Job(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", (), lambda: factors)]
