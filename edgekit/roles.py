"""Tensor roles: which checkpoint tensor is which part of the transformer, for every format and quantizer.

The module paths transformers uses across families map to roles here; a family whose names mean something
else says so in its description (``Family.roles``, e.g. gemma's post_attention_layernorm).

A role names what a weight does, independent of how a family spells it: ``q k v o qkv`` (attention
projections; ``qkv`` fused), ``gate up down gate_up`` (MLP; ``gate_up`` fused), ``embed pos_embed head``,
norms ``attn_norm ffn_norm post_attn_norm post_ffn_norm q_norm k_norm final_norm``, MoE ``router
expert_gate expert_up expert_down expert_gate_up shared_gate shared_up shared_down shared_router``.
:data:`NORM_FEEDS` says which linear roles read a norm's output (AWQ folds scales into that norm).
"""

from __future__ import annotations

import re

from edgekit import archs

LINEAR = frozenset({"q", "k", "v", "o", "qkv", "gate", "up", "down", "gate_up", "head", "expert_gate", "expert_up",
                    "expert_down", "expert_gate_up", "shared_gate", "shared_up", "shared_down"})
NORMS = frozenset({"attn_norm", "ffn_norm", "post_attn_norm", "post_ffn_norm", "q_norm", "k_norm", "final_norm"})
NORM_FEEDS: dict[str, tuple[str, ...]] = {
    "attn_norm": ("q", "k", "v", "qkv"),
    "ffn_norm": ("gate", "up", "gate_up", "router", "expert_gate", "expert_up", "expert_gate_up", "shared_gate",
                 "shared_up", "shared_router"),
    "final_norm": ("head",),
}

# module path (the part of the name after the layer index, without .weight/.bias) -> role
_LAYER_ROLES: dict[str, str] = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
    "self_attn.qkv_proj": "qkv", "attn.c_attn": "qkv", "attn.c_proj": "o",
    "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down", "mlp.gate_up_proj": "gate_up",
    "mlp.c_fc": "up", "mlp.c_proj": "down",
    "input_layernorm": "attn_norm", "ln_1": "attn_norm", "post_attention_layernorm": "ffn_norm", "ln_2": "ffn_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffn_norm",
    "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm",
    "block_sparse_moe.gate": "router", "mlp.gate": "router", "mlp.shared_expert_gate": "shared_router",
    "mlp.shared_expert.gate_proj": "shared_gate", "mlp.shared_expert.up_proj": "shared_up",
    "mlp.shared_expert.down_proj": "shared_down",
    "mlp.experts.gate_up_proj": "expert_gate_up", "mlp.experts.down_proj": "expert_down",
}
_EXPERT_ROLES = {"w1": "expert_gate", "w3": "expert_up", "w2": "expert_down", "gate_proj": "expert_gate",
                 "up_proj": "expert_up", "down_proj": "expert_down"}
_GLOBAL_ROLES = {"model.embed_tokens": "embed", "transformer.wte": "embed", "wte": "embed",
                 "transformer.wpe": "pos_embed", "wpe": "pos_embed", "lm_head": "head", "model.norm": "final_norm",
                 "transformer.ln_f": "final_norm", "ln_f": "final_norm"}
_LAYER = re.compile(r"^(?:.*?\.)?(?:layers|h)\.(\d+)\.(.+?)(?:\.(weight|bias))?$")
_EXPERT = re.compile(r"^(?:block_sparse_moe|mlp)\.experts\.\d+\.(\w+)$")


def role_of(hf_name: str, architecture: str = "") -> tuple[str | None, int | None]:
    """(role, layer index) of a checkpoint tensor; (None, None) for one that has no role (rotary buffers)."""
    m = _LAYER.match(hf_name)
    if m is None:
        base = re.sub(r"\.(weight|bias)$", "", hf_name)
        return _GLOBAL_ROLES.get(base), None
    layer, path = int(m.group(1)), m.group(2)
    if architecture in archs.MODULES and path in archs.get(architecture).roles:
        return archs.get(architecture).roles[path], layer
    if path in _LAYER_ROLES:
        return _LAYER_ROLES[path], layer
    e = _EXPERT.match(path)
    if e and e.group(1) in _EXPERT_ROLES:
        return _EXPERT_ROLES[e.group(1)], layer
    return None, layer
