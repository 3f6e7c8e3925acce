"""Qwen3: Qwen2 without biases, with per-head RMSNorm on q and k and an explicit head_dim."""

from __future__ import annotations

from edgekit.archs import register
from edgekit.archs.qwen2 import QwenWindow


@register("qwen3")
class Qwen3(QwenWindow):
    qk_norm = True
    explicit_head_dim = True
    hf_class = "Qwen3ForCausalLM"
    gguf_arch = "QWEN3"
    genai_type = "qwen3"
