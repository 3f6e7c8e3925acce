"""What an architecture family is, once for every reader: spec.py, the GGUF, ONNX and Core ML converters,
and the quantizers.

A family module subclasses :class:`Family` and overrides only what differs from the Llama layout:
the ModelSpec facts a model_type fixes that its config.json does not say (norm kind and offset, MLP
gating, biases, QK norm, positions, MoE), where its hyperparameters live in config.json, its
sliding-window rule (which layers attend locally), its rope layout, its tensor roles, and its GGUF
mapping (llama.cpp's architecture name, which tensors llama.cpp wants reordered or shifted).
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import EdgekitError


def first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


class Family:
    # ---- ModelSpec facts the model_type fixes
    norm: str = "rms"  # "rms" | "layer"
    gated_mlp: bool = True  # gate/up/down (SwiGLU-like) vs fc/proj
    qkv_bias: bool = False  # default when the config has no attention_bias key
    qk_norm: bool = False  # per-head RMSNorm on q and k
    norms_per_layer: int = 2
    norm_offset: bool = False  # weight stored as (w - 1), applied as (1 + w) (gemma)
    sandwich_norms: bool = False  # norms after attention and after the MLP as well (gemma2/3)
    embed_scale: bool = False  # embeddings multiplied by sqrt(hidden_size) (gemma)
    learned_positions: bool = False  # absolute position embeddings (gpt2)
    conv1d: bool = False  # weights stored (in, out), fused qkv, "h.{i}" layers (gpt2)
    fused_qkv: bool = False  # one qkv_proj and one gate_up_proj (phi3)
    moe: str | None = None  # "mixtral" | "qwen2_moe"
    default_act: str = "silu"
    tied_default: bool = False  # tie_word_embeddings when the config does not say
    explicit_head_dim: bool = False  # head_dim is its own hyperparameter, not hidden_size / heads
    hf_class: str = ""  # the CausalLM class, for configs that do not name it
    transformers_module: str = ""  # transformers.models.<this> (default: the model_type)
    # ---- rope: "neox" = transformers' rotate-half order on the whole head; llama.cpp's LLAMA architecture
    # wants q/k rows interleaved instead ("norm"), which its converter does by permuting them
    gguf_rope_permute: bool = False
    # ---- GGUF: llama.cpp's architecture name (gguf.MODEL_ARCH member) and whether its graph always reads
    # the head from token_embd (a stored lm_head is dropped)
    gguf_arch: str = ""
    gguf_tied_head: bool = False
    # module path inside a layer -> role, where the family's names differ from edgekit.roles' common table
    roles: dict[str, str] = {}
    # ---- onnxruntime-genai's model type, when its factory knows the family
    genai_type: str | None = None
    # config keys copied into ModelSpec.extra (family-specific scalars the writers read)
    extra_keys: tuple[str, ...] = ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
                                   "original_max_position_embeddings", "scale_attn_weights")

    def __init__(self, model_type: str) -> None:
        self.model_type = model_type
        self.transformers_module = self.transformers_module or model_type

    # ---- hyperparameters -------------------------------------------------------------------------
    def dims(self, config: dict[str, Any]) -> dict[str, Any]:
        """The ModelSpec dimensions from config.json (Llama-style keys)."""
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return dict(
            vocab_size=int(config["vocab_size"]), hidden_size=hidden, num_layers=int(config["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
            activation=first(config, "hidden_activation", "hidden_act", default=self.default_act),
            norm_eps=float(first(config, "rms_norm_eps", "layer_norm_eps", default=1e-6)),
            context_length=int(config.get("max_position_embeddings", 2048)),
            attention_bias=bool(config.get("attention_bias", self.qkv_bias)),
            mlp_bias=bool(config.get("mlp_bias", False)),
        )

    def moe_spec(self, config: dict[str, Any], dims: dict[str, Any]) -> Any:
        return None

    # ---- attention kinds -------------------------------------------------------------------------
    def window(self, config: dict[str, Any]) -> int | None:
        """The sliding window, if this config uses one (the family's rule; default: the config says)."""
        w = config.get("sliding_window")
        return int(w) if w else None

    def layer_types(self, config: dict[str, Any], num_layers: int) -> tuple[str, ...]:
        """"full" or "sliding" per layer, as transformers decides it: ``layer_types`` when the config lists
        them, else every layer slides when there is a window (mistral)."""
        window = self.window(config)
        types = config.get("layer_types")
        if isinstance(types, list) and len(types) == num_layers:
            return tuple("sliding" if t == "sliding_attention" and window else "full" for t in types)
        return ("sliding" if window else "full",) * num_layers

    def attn_scale(self, spec: Any, config: dict[str, Any], layer: int) -> float:
        """The factor on q·k (before any softcapping)."""
        return spec.head_dim ** -0.5

    # ---- rope ------------------------------------------------------------------------------------
    def rope_parameters(self, config: dict[str, Any], layer_type: str) -> tuple[float | None, dict[str, Any] | None]:
        """(rope_theta, scaling dict) for layers of ``layer_type``, from either config style."""
        params = config.get("rope_parameters")  # transformers 5
        if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
            params = params.get(f"{layer_type}_attention") or params["full_attention"]  # per-layer-type form
        theta = config.get("rope_theta")
        scaling = config.get("rope_scaling")  # transformers 4
        if isinstance(params, dict):
            theta, scaling = params.get("rope_theta", theta), params
        return theta, scaling if isinstance(scaling, dict) else None

    def check(self, spec: Any) -> None:
        """Refuse a config this family's description does not cover."""


def bad_config(model_type: str, exc: BaseException) -> EdgekitError:
    return EdgekitError(f"config.json for {model_type} is missing or has a bad value for {exc}",
                        "restore config.json from the model's source")
