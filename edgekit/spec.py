"""ModelSpec: the architecture-neutral description every converter and runtime reads.

Built from a checkpoint's ``config.json`` alone. Both config styles are read: the transformers 4
one most published checkpoints carry (``rope_theta`` + ``rope_scaling``) and the transformers 5 one
(``rope_parameters``). Per-family differences live in the family's description (:mod:`edgekit.archs`).
Defaults are read here rather than through transformers' config classes: the GGUF path runs without
importing transformers or torch (2-3 s of a conversion that takes a few).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit import archs
from edgekit.archs.base import Family, bad_config
from edgekit.errors import EdgekitError


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
    layer_types: tuple[str, ...] = ()  # "full" | "sliding" per layer (the family's sliding-window rule)
    rope_local: RopeSpec | None = None  # the sliding layers' rope, where it differs from the global one (gemma3)

    @property
    def family(self) -> Family:
        return archs.get(self.architecture)

    def rope_for(self, layer_type: str) -> RopeSpec:
        """The rope of layers of ``layer_type`` ("full" | "sliding")."""
        assert self.rope is not None
        return self.rope_local if layer_type == "sliding" and self.rope_local is not None else self.rope

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
    return archs.supported()


def _rope(config: dict[str, Any], family: Family, layer_type: str = "full") -> RopeSpec | None:
    if family.learned_positions:
        return None
    theta, scaling = family.rope_parameters(config, layer_type)
    params = config.get("rope_parameters")
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
    partial = config.get("partial_rotary_factor")
    if partial is None and isinstance(params, dict):
        partial = params.get("partial_rotary_factor")
    return RopeSpec(theta=float(theta if theta is not None else 10000.0), scaling=kind,
                    factor=float(factor) if factor is not None else None, original_context=original,
                    partial_rotary_factor=float(partial if partial is not None else 1.0), extra=extra)


def from_config(config: dict[str, Any]) -> ModelSpec:
    """Describe the model a config.json defines. Raises EdgekitError for an unsupported model_type."""
    model_type = config.get("model_type")
    fam = archs.get(model_type)
    archs_list = config.get("architectures") or []
    hf_class = archs_list[0] if archs_list else fam.hf_class
    try:
        dims = fam.dims(config)
        window = fam.window(config)
        moe = fam.moe_spec(config, dims)
    except (KeyError, TypeError, ValueError) as exc:
        raise bad_config(str(model_type), exc) from None
    layer_types = fam.layer_types(config, dims["num_layers"])
    rope = _rope(config, fam)
    local = _rope(config, fam, "sliding") if "sliding" in layer_types else None
    extra = {k: config[k] for k in fam.extra_keys if config.get(k) is not None}
    spec = ModelSpec(
        architecture=str(model_type), hf_class=hf_class, norm=fam.norm, rope=rope,
        tied_embeddings=bool(config.get("tie_word_embeddings", fam.tied_default)), qk_norm=fam.qk_norm, moe=moe,
        bos_token_id=config.get("bos_token_id"), eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"), extra=extra, sliding_window=window, layer_types=layer_types,
        rope_local=local if local != rope else None, **dims,
    )
    fam.check(spec)
    return spec
