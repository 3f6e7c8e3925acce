"""Phi-3: fused qkv_proj and gate_up_proj (gate first); longrope scaling."""

from __future__ import annotations

from edgekit.archs import register
from edgekit.archs.base import Family


@register("phi3")
class Phi3(Family):
    fused_qkv = True
    hf_class = "Phi3ForCausalLM"
    gguf_arch = "PHI3"
    genai_type = "phi3"
