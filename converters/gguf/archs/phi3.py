"""Phi-3: fused qkv_proj and gate_up_proj are what llama.cpp wants (attn_qkv, ffn_up); longrope factors."""

from __future__ import annotations

import math

import gguf
import numpy as np

from converters.gguf.archs import register
from converters.gguf.model import Job, Model


@register("phi3")
class Phi3(Model):

    def _orig_ctx(self) -> int:
        r = self.spec.rope
        return int((r.original_context if r else None) or self.config.get("original_max_position_embeddings")
                   or self.spec.context_length)

    def set_params(self, w: gguf.GGUFWriter) -> None:
        super().set_params(w)
        w.add_rope_scaling_orig_ctx_len(self._orig_ctx())
        if not self.spec.sliding_window:
            w.add_sliding_window(0)  # llama.cpp's converter always writes it for phi3

    def extra_jobs(self) -> list[Job]:
        r = self.spec.rope
        if r is None or r.scaling != "longrope" or not r.extra.get("long_factor"):
            return []
        scale = self.spec.context_length / self._orig_ctx()
        self.attn_factor = math.sqrt(1 + math.log(scale) / math.log(self._orig_ctx())) if scale > 1.0 else 1.0
        long_f = np.array(r.extra["long_factor"], dtype=np.float32)
        short_f = np.array(r.extra["short_factor"], dtype=np.float32)
        names = gguf.TENSOR_NAMES
        return [Job(names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", (), lambda: long_f),
                Job(names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", (), lambda: short_f)]

    def set_rope_scaling(self, w: gguf.GGUFWriter) -> None:
        super().set_rope_scaling(w)
        if hasattr(self, "attn_factor"):
            w.add_rope_scaling_attn_factors(self.attn_factor)
