"""Gemma 2: RMSNorm weights stored as (w - 1) get +1; softcapping and sliding window metadata; tied head."""

from __future__ import annotations

import gguf
import numpy as np

from converters.gguf.archs import register
from converters.gguf.model import Model


@register("Gemma2ForCausalLM")
class Gemma2(Model):
    gguf_arch = gguf.MODEL_ARCH.GEMMA2

    def skip(self, name: str) -> bool:
        return name == "lm_head.weight" or super().skip(name)  # llama.cpp's gemma2 always uses token_embd

    def transform(self, name: str, t):
        # Gemma2RMSNorm computes x * (1 + w); llama.cpp multiplies by the stored weight
        return t.astype(np.float32) + 1 if name.endswith("norm.weight") else t

    def lora_b(self, name: str):
        return None if name.endswith("norm.weight") else (lambda b: b)

    def set_params(self, w: gguf.GGUFWriter) -> None:
        super().set_params(w)
        w.add_key_length(self.spec.head_dim)
        w.add_value_length(self.spec.head_dim)
        extra = self.spec.extra
        if extra.get("attn_logit_softcapping") is not None:
            w.add_attn_logit_softcapping(float(extra["attn_logit_softcapping"]))
        if extra.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(float(extra["final_logit_softcapping"]))
