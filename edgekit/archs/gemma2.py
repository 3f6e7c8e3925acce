"""Gemma 2: sandwich norms stored as (w - 1), scaled embeddings, query_pre_attn_scalar, logit softcapping,
sliding window on every other layer (the even-indexed ones), tied head."""

from __future__ import annotations

from typing import Any

from edgekit.archs import register
from edgekit.archs.base import Family


@register("gemma2")
class Gemma2(Family):
    norms_per_layer = 4
    norm_offset = True
    sandwich_norms = True
    embed_scale = True
    explicit_head_dim = True
    default_act = "gelu_pytorch_tanh"
    tied_default = True
    hf_class = "Gemma2ForCausalLM"
    gguf_arch = "GEMMA2"
    gguf_tied_head = True
    genai_type = "gemma2"
    roles = {"post_attention_layernorm": "post_attn_norm"}  # normalises the attention output (sandwich)

    def layer_types(self, config: dict[str, Any], num_layers: int) -> tuple[str, ...]:
        if self.window(config) and not isinstance(config.get("layer_types"), list):
            return tuple("sliding" if (i + 1) % 2 else "full" for i in range(num_layers))
        return super().layer_types(config, num_layers)

    def attn_scale(self, spec: Any, config: dict[str, Any], layer: int) -> float:
        return float(spec.extra.get("query_pre_attn_scalar", spec.head_dim)) ** -0.5
