"""GPT-2: LayerNorm, learned positions, Conv1D weights stored (in, out) with a fused c_attn, biases
everywhere, an ungated GELU MLP, tied head, its own config keys (n_embd, n_layer, ...)."""

from __future__ import annotations

from typing import Any

from edgekit.archs import register
from edgekit.archs.base import Family


@register("gpt2")
class GPT2(Family):
    norm = "layer"
    gated_mlp = False
    qkv_bias = True
    learned_positions = True
    conv1d = True
    default_act = "gelu_new"
    tied_default = True
    hf_class = "GPT2LMHeadModel"
    gguf_arch = "GPT2"
    gguf_tied_head = True
    genai_type = "gpt2"

    def dims(self, config: dict[str, Any]) -> dict[str, Any]:
        hidden, heads = int(config["n_embd"]), int(config["n_head"])
        return dict(
            vocab_size=int(config["vocab_size"]), hidden_size=hidden, num_layers=int(config["n_layer"]),
            num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
            intermediate_size=int(config.get("n_inner") or 4 * hidden),
            activation=config.get("activation_function", self.default_act),
            norm_eps=float(config.get("layer_norm_epsilon", 1e-5)), context_length=int(config.get("n_positions", 1024)),
            attention_bias=True, mlp_bias=True,
        )

    def window(self, config: dict[str, Any]) -> int | None:
        return None

    def attn_scale(self, spec: Any, config: dict[str, Any], layer: int) -> float:
        scale = spec.head_dim ** -0.5 if config.get("scale_attn_weights", True) else 1.0
        return scale / (layer + 1) if config.get("scale_attn_by_inverse_layer_idx") else scale
