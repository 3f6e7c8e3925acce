"""Mixtral: Llama attention, every layer's MLP a router over ``num_local_experts`` SwiGLU experts."""

from __future__ import annotations

from typing import Any

from edgekit.archs import register
from edgekit.archs.llama import Llama


@register("mixtral")
class Mixtral(Llama):
    moe = "mixtral"
    hf_class = "MixtralForCausalLM"  # type: ignore[assignment]
    genai_type = None  # type: ignore[assignment]

    def moe_spec(self, config: dict[str, Any], dims: dict[str, Any]) -> Any:
        from edgekit.spec import MoESpec

        return MoESpec(experts=int(config["num_local_experts"]), experts_per_token=int(config["num_experts_per_tok"]),
                       expert_intermediate=dims["intermediate_size"], sparse_layers=tuple(range(dims["num_layers"])))
