"""Qwen2-MoE: Qwen2 attention; sparse layers (every ``decoder_sparse_step``-th, minus ``mlp_only_layers``)
route over experts beside a shared expert with a sigmoid gate."""

from __future__ import annotations

from typing import Any

from edgekit.archs import register
from edgekit.archs.qwen2 import QwenWindow


@register("qwen2_moe")
class Qwen2Moe(QwenWindow):
    qkv_bias = True
    moe = "qwen2_moe"
    hf_class = "Qwen2MoeForCausalLM"
    gguf_arch = "QWEN2MOE"

    def moe_spec(self, config: dict[str, Any], dims: dict[str, Any]) -> Any:
        from edgekit.spec import MoESpec

        step = int(config.get("decoder_sparse_step", 1) or 1)
        dense_only = set(config.get("mlp_only_layers") or [])
        n_experts = int(config["num_experts"])
        sparse = tuple(i for i in range(dims["num_layers"])
                       if i not in dense_only and n_experts > 0 and (i + 1) % step == 0)
        return MoESpec(experts=n_experts, experts_per_token=int(config["num_experts_per_tok"]),
                       expert_intermediate=int(config["moe_intermediate_size"]),
                       shared_expert_intermediate=int(config.get("shared_expert_intermediate_size") or 0),
                       norm_topk_prob=bool(config.get("norm_topk_prob", False)), sparse_layers=sparse)
