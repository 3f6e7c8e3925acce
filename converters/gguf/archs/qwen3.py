"""Qwen3: Qwen2 without biases, with per-head RMSNorm on Q and K and an explicit head_dim."""

from __future__ import annotations

import gguf

from converters.gguf.archs import register
from converters.gguf.model import Model


@register("Qwen3ForCausalLM")
class Qwen3(Model):
    gguf_arch = gguf.MODEL_ARCH.QWEN3

    def set_params(self, w: gguf.GGUFWriter) -> None:
        super().set_params(w)
        if "head_dim" not in self.config:  # set_params writes it only when the config names it
            w.add_key_length(self.spec.head_dim)
            w.add_value_length(self.spec.head_dim)
