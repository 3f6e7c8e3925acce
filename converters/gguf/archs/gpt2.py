"""GPT-2: Conv1D weights are stored (in, out) and transposed; learned positions; tied head."""

from __future__ import annotations

import gguf

from converters.gguf.archs import register
from converters.gguf.model import Model

_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


@register("GPT2LMHeadModel")
class GPT2(Model):
    gguf_arch = gguf.MODEL_ARCH.GPT2

    def skip(self, name: str) -> bool:
        return name == "lm_head.weight" or super().skip(name)

    def transform(self, name: str, t):
        return t.T if name.endswith(_CONV1D) else t
