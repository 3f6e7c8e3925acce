"""Gemma 3 (text): Gemma 2's sandwich norms, scaled embeddings and query_pre_attn_scalar, plus per-head
q/k RMSNorm (also stored as w - 1), no softcapping, and two kinds of layers: local ones with a sliding
window and their own rope base (``rope_local_base_freq``, 10000), global ones every
``sliding_window_pattern``-th layer (6) with the global rope (base 1e6, possibly linearly scaled).
transformers 5 spells the layer kinds out in ``layer_types`` and the two ropes in ``rope_parameters``;
transformers 4 configs carry the pattern and the two bases."""

from __future__ import annotations

from typing import Any

from edgekit.archs import register
from edgekit.archs.gemma2 import Gemma2


@register("gemma3_text")
class Gemma3(Gemma2):
    qk_norm = True
    hf_class = "Gemma3ForCausalLM"
    transformers_module = "gemma3"
    gguf_arch = "GEMMA3"
    genai_type = None  # onnxruntime-genai's gemma3 type is the multimodal model; the text decoder runs as "decoder"

    def layer_types(self, config: dict[str, Any], num_layers: int) -> tuple[str, ...]:
        if isinstance(config.get("layer_types"), list):
            return super(Gemma2, self).layer_types(config, num_layers)
        pattern = int(config.get("sliding_window_pattern") or 6)
        window = self.window(config)
        return tuple("sliding" if window and (i + 1) % pattern else "full" for i in range(num_layers))

    def rope_parameters(self, config: dict[str, Any], layer_type: str) -> tuple[float | None, dict[str, Any] | None]:
        theta, scaling = super().rope_parameters(config, layer_type)
        params = config.get("rope_parameters")
        if layer_type == "sliding" and not (isinstance(params, dict) and "sliding_attention" in params):
            return float(config.get("rope_local_base_freq") or 10000.0), None  # transformers 4: local rope unscaled
        return theta, scaling
