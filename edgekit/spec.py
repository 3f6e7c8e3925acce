"""ModelSpec: the architecture-neutral description every converter and runtime reads.

Built from a checkpoint's ``config.json`` alone. Both config styles are read: the transformers 4
one most published checkpoints carry (``rope_theta`` + ``rope_scaling``) and the transformers 5 one
(``rope_parameters``). Per-family differences live in :data:`FAMILIES`, one entry per model_type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Family:
    """What a model_type fixes that its config.json does not say."""

    norm: str = "rms"  # "rms" | "layer"
    gated_mlp: bool = True  # gate/up/down (SwiGLU-like) vs fc/proj
    qkv_bias: bool = False  # default when the config has no attention_bias key
    qk_norm: bool = False  # per-head RMSNorm on q and k (qwen3)
    norms_per_layer: int = 2
    norm_offset: bool = False  # gemma: weight stored as (w - 1), applied as (1 + w)
    learned_positions: bool = False  # gpt2: absolute position embeddings
    moe: str | None = None  # "mixtral" | "qwen2_moe"
    default_act: str = "silu"


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qk_norm=True),
    "phi3": Family(),
    "gemma2": Family(norms_per_layer=4, norm_offset=True, default_act="gelu_pytorch_tanh"),
    "gpt2": Family(norm="layer", gated_mlp=False, qkv_bias=True, learned_positions=True, default_act="gelu_new"),
    "mixtral": Family(moe="mixtral"),
    "qwen2_moe": Family(qkv_bias=True, moe="qwen2_moe"),
}


@dataclass(frozen=True)
class RopeSpec:
    theta: float = 10000.0
    scaling: str | None = None  # None | linear | dynamic | yarn | llama3 | longrope
    factor: float | None = None
    original_context: int | None = None
    partial_rotary_factor: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # type-specific keys (beta_fast, long_factor, ...)


@dataclass(frozen=True)
class MoESpec:
    experts: int
    experts_per_token: int
    expert_intermediate: int
    shared_expert_intermediate: int = 0
    norm_topk_prob: bool = True
    sparse_layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    architecture: str  # model_type
    hf_class: str  # e.g. LlamaForCausalLM
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    activation: str
    norm: str
    norm_eps: float
    rope: RopeSpec | None
    context_length: int
    tied_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None
    moe: MoESpec | None
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    pad_token_id: int | None
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific (softcapping, scalars)

    @property
    def family(self) -> Family:
        return FAMILIES[self.architecture]

    def parameter_count(self) -> int:
        """Parameters of the transformers model this spec describes (tied embeddings counted once)."""
        h, d, L = self.hidden_size, self.head_dim, self.num_layers
        q_out, kv_out = self.num_heads * d, self.num_kv_heads * d
        fam = self.family
        n = self.vocab_size * h
        if fam.learned_positions:
            n += self.context_length * h
        norm_params = h * (2 if self.norm == "layer" else 1)
        attn = h * q_out + 2 * h * kv_out + q_out * h
        if self.attention_bias:
            attn += q_out + 2 * kv_out
            if fam.learned_positions:  # gpt2's c_proj carries a bias as well
                attn += h
        if self.qk_norm:
            attn += 2 * d
        per_layer_norms = fam.norms_per_layer * norm_params
        for layer in range(L):
            n += attn + per_layer_norms + self._mlp_params(layer)
        n += norm_params
        if not self.tied_embeddings:
            n += self.vocab_size * h
        return n

    def _mlp_params(self, layer: int) -> int:
        h, i = self.hidden_size, self.intermediate_size
        if not self.family.gated_mlp:
            return 2 * h * i + (i + h if self.mlp_bias else 0)
        dense = 3 * h * i + (2 * i + h if self.mlp_bias else 0)
        moe = self.moe
        if moe is None or layer not in moe.sparse_layers:
            return dense
        n = h * moe.experts + moe.experts * 3 * h * moe.expert_intermediate
        if moe.shared_expert_intermediate:
            n += 3 * h * moe.shared_expert_intermediate + h  # shared expert and its sigmoid gate
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def supported() -> list[str]:
    return sorted(FAMILIES)


def _first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


def _rope(config: dict[str, Any], family: Family) -> RopeSpec | None:
    if family.learned_positions:
        return None
    params = config.get("rope_parameters")  # transformers 5
    if isinstance(params, dict) and "full_attention" in params and isinstance(params["full_attention"], dict):
        params = params["full_attention"]  # per-layer-type form (gemma-style); take the global layers'
    scaling = config.get("rope_scaling")  # transformers 4
    theta = _first(config, "rope_theta", default=None)
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        scaling = params
    kind = None
    extra: dict[str, Any] = {}
    factor = original = None
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "default":
            kind = None
        factor = scaling.get("factor")
        original = scaling.get("original_max_position_embeddings")
        skip = {"rope_type", "type", "factor", "original_max_position_embeddings", "rope_theta",
                "partial_rotary_factor"}
        extra = {k: v for k, v in scaling.items() if k not in skip}
        if kind is not None and kind not in ("linear", "dynamic", "yarn", "llama3", "longrope", "su"):
            raise EdgekitError(f"rope scaling type {kind!r} is not supported",
                               "supported: linear, dynamic, yarn, llama3, longrope")
        if kind == "su":
            kind = "longrope"
    if original is None and kind == "longrope":
        original = config.get("original_max_position_embeddings")
    partial = _first(config, "partial_rotary_factor", default=None)
    if partial is None and isinstance(params, dict):
        partial = params.get("partial_rotary_factor")
    return RopeSpec(theta=float(theta if theta is not None else 10000.0), scaling=kind,
                    factor=float(factor) if factor is not None else None, original_context=original,
                    partial_rotary_factor=float(partial if partial is not None else 1.0), extra=extra)


def from_config(config: dict[str, Any]) -> ModelSpec:
    """Describe the model a config.json defines. Raises EdgekitError for an unsupported model_type."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise EdgekitError(f"model_type {model_type!r} is not supported",
                           f"supported: {', '.join(supported())}")
    fam = FAMILIES[model_type]
    archs = config.get("architectures") or []
    hf_class = archs[0] if archs else ""
    try:
        if model_type == "gpt2":
            hidden = int(config["n_embd"])
            heads = int(config["n_head"])
            spec_kw = dict(
                vocab_size=int(config["vocab_size"]), hidden_size=hidden, num_layers=int(config["n_layer"]),
                num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
                intermediate_size=int(config.get("n_inner") or 4 * hidden),
                activation=config.get("activation_function", fam.default_act),
                norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
                context_length=int(config.get("n_positions", 1024)),
                attention_bias=True, mlp_bias=True, sliding_window=None,
            )
        else:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            kv = int(config.get("num_key_value_heads") or heads)
            window = config.get("sliding_window")
            if model_type in ("qwen2", "qwen2_moe", "qwen3") and not config.get("use_sliding_window", False):
                window = None
            spec_kw = dict(
                vocab_size=int(config["vocab_size"]), hidden_size=hidden,
                num_layers=int(config["num_hidden_layers"]), num_heads=heads, num_kv_heads=kv,
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
                activation=_first(config, "hidden_activation", "hidden_act", default=fam.default_act),
                norm_eps=float(_first(config, "rms_norm_eps", "layer_norm_eps", default=1e-6)),
                context_length=int(config.get("max_position_embeddings", 2048)),
                attention_bias=bool(config.get("attention_bias", fam.qkv_bias)),
                mlp_bias=bool(config.get("mlp_bias", False)),
                sliding_window=int(window) if window else None,
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgekitError(f"config.json for {model_type} is missing or has a bad value for {exc}",
                           "restore config.json from the model's source") from None
    moe = None
    if fam.moe == "mixtral":
        moe = MoESpec(experts=int(config["num_local_experts"]), experts_per_token=int(config["num_experts_per_tok"]),
                      expert_intermediate=spec_kw["intermediate_size"],
                      sparse_layers=tuple(range(spec_kw["num_layers"])))
    elif fam.moe == "qwen2_moe":
        step = int(config.get("decoder_sparse_step", 1) or 1)
        dense_only = set(config.get("mlp_only_layers") or [])
        n_experts = int(config["num_experts"])
        sparse = tuple(i for i in range(spec_kw["num_layers"])
                       if i not in dense_only and n_experts > 0 and (i + 1) % step == 0)
        moe = MoESpec(experts=n_experts, experts_per_token=int(config["num_experts_per_tok"]),
                      expert_intermediate=int(config["moe_intermediate_size"]),
                      shared_expert_intermediate=int(config.get("shared_expert_intermediate_size") or 0),
                      norm_topk_prob=bool(config.get("norm_topk_prob", False)), sparse_layers=sparse)
    extra = {k: config[k] for k in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
                                    "original_max_position_embeddings", "scale_attn_weights")
             if config.get(k) is not None}
    tied_default = model_type in ("gpt2", "gemma2")
    return ModelSpec(
        architecture=model_type, hf_class=hf_class, norm=fam.norm, rope=_rope(config, fam),
        tied_embeddings=bool(config.get("tie_word_embeddings", tied_default)), qk_norm=fam.qk_norm, moe=moe,
        bos_token_id=config.get("bos_token_id"), eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"), extra=extra, **spec_kw,
    )
