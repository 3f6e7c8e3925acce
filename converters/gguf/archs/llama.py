"""Llama and Mistral: Q/K rows permuted to llama.cpp's interleaved rope order; llama3 rope factors."""

from __future__ import annotations

import math

import gguf
import numpy as np

from converters.gguf.archs import register
from converters.gguf.model import Job, Model, permute_qk


@register("LlamaForCausalLM", "MistralForCausalLM")
class Llama(Model):
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def transform(self, name: str, t):
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_qk(t, self.spec.num_heads)
        if name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_qk(t, self.spec.num_heads, self.spec.num_kv_heads)
        return t

    def lora_b(self, name: str):
        # delta = B @ A; permuting delta's rows is permuting B's rows
        return lambda b, n=name: self.transform(n, b)

    def extra_jobs(self) -> list[Job]:
        rope = self.spec.rope
        if rope is None or rope.scaling != "llama3":
            return []
        factors = llama3_rope_factors(rope.theta, self.spec.head_dim, rope.factor or 8.0, rope.extra,
                                      rope.original_context or 8192)
        return [Job(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", (), lambda: factors)]


def llama3_rope_factors(theta: float, dim: int, factor: float, extra: dict, old_context: int):
    """Per-frequency divisors of Llama 3.1 rope scaling, as llama.cpp's converter computes them."""
    low, high = float(extra.get("low_freq_factor", 1.0)), float(extra.get("high_freq_factor", 4.0))
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)
