"""Qwen2: neox rope (no Q/K permutation), Q/K/V biases, usually tied embeddings."""

from __future__ import annotations

import gguf

from converters.gguf.archs import register
from converters.gguf.model import Model


@register("Qwen2ForCausalLM")
class Qwen2(Model):
    gguf_arch = gguf.MODEL_ARCH.QWEN2
