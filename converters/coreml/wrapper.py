"""The stateful torch module that is traced into the Core ML program.

Why not wrap transformers' own modules: transformers 5 builds its causal / sliding-window masks with
helpers (``create_causal_mask``) whose ops (``diff``, ``new_ones``, vmap-style index functions) do not
convert through coremltools, and its ``DynamicCache`` grows Python lists rather than writing into a
fixed buffer, which is what a Core ML state has to be. So the decoder below is written out over the
checkpoint's tensors (read through :func:`edgekit.checkpoint.open_checkpoint`, so a LoRA adapter is
already merged), op for op as transformers computes the dense families with split projections
(llama / mistral / qwen2 / qwen3 / gemma3), reading what differs from the family description
(:mod:`edgekit.archs`):

- RMSNorm in float32, ``weight * x * rsqrt(mean(x^2) + eps)`` (gemma's ``1 + w`` folded into the weight);
- scaled embeddings and sandwich norms (gemma);
- q/k/v projections (with bias for qwen2), per-head RMSNorm on q and k (qwen3, gemma3), rotary embedding
  with the cos/sin tables of :func:`edgekit.rope.tables` (transformers' own rotary classes for every
  scaled rope), one table per rope where local and global layers differ (gemma3);
- grouped-query attention through ``scaled_dot_product_attention`` (Core ML 18 has a fused SDPA op),
  key/value heads repeated as transformers' ``repeat_kv`` does, q pre-scaled where the family's scale is
  not 1/sqrt(head_dim), the sliding-window mask on the layers that slide;
- gated MLP, final norm, LM head (tied to the embedding when the checkpoint ties them).

The rotary tables are stored (half width, positions ``0..N-1``) rather than computed from
``position * inv_freq`` in the graph: with fp16 compute the angle of position 2000 would carry an
error of about 1 radian, while table values in [-1, 1] keep fp16's relative precision.

Interface of the traced module (and of the Core ML program):

- inputs ``input_ids`` int32 ``(1, q)`` with ``1 <= q <= N`` and ``position`` int32 ``(1,)``, the
  number of tokens already in the cache (0 for a fresh prompt). Token ``t`` of the call sits at
  position ``position + t``; ``position + q <= N`` is the caller's to keep (the graph does not check).
- states ``key_cache`` / ``value_cache``, ``(num_layers, num_kv_heads, N, head_dim)`` (float32 buffers
  here; fp16 in the Core ML program, the only state type Core ML has): the call
  writes its keys/values at ``[position, position + q)`` and attends over ``[0, position + q)``,
  with the causal (and, on sliding layers, sliding-window) mask built in the graph from those positions.
- output ``logits`` float ``(1, 1, vocab)`` for the last token (``(1, q, vocab)`` with
  ``last_only=False``).

Truncating the conversation is just calling with a smaller ``position``: stale entries past it are
overwritten before they are ever read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.spec import ModelSpec

# Additive mask value for hidden positions: far below any attention score, still finite in fp16
# (a -inf can turn a softmax into NaN on some Core ML compute units).
MASK_VALUE = -3.0e4


def check_supported(spec: ModelSpec) -> None:
    """Refuse an architecture (or a variant of one) the wrapper does not compute exactly."""
    fam = spec.family
    # what Core ML cannot do yet: fused / Conv1D layouts, layer norms, learned positions, experts, softcapped scores
    if (fam.conv1d or fam.fused_qkv or fam.norm != "rms" or fam.learned_positions or spec.moe is not None
            or spec.extra.get("attn_logit_softcapping")):
        raise EdgekitError(f"Core ML export does not support model_type {spec.architecture!r}",
                           "supported: dense models with split q/k/v and gate/up projections and RMSNorm, no "
                           "attention softcapping (llama, mistral, qwen2, qwen3, gemma3); convert to gguf or onnx")
    if spec.rope is not None and spec.rope.partial_rotary_factor != 1.0:
        raise EdgekitError(f"Core ML export does not support partial rotary embeddings "
                           f"(partial_rotary_factor={spec.rope.partial_rotary_factor})",
                           "convert to gguf or onnx instead")
    if spec.rope is not None and spec.rope.scaling == "dynamic":
        raise EdgekitError("Core ML export does not support dynamic NTK rope scaling (its frequencies change "
                           "with the sequence length)", "convert to gguf or onnx instead")


def rope_tables(config: dict[str, Any], spec: ModelSpec, context: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer kind, cos and sin for positions ``0..context-1``, first half of the head dimension, float32
    (:func:`edgekit.rope.tables`, which includes transformers' attention scaling)."""
    from edgekit.rope import tables

    half = spec.head_dim // 2
    # transformers concatenates (freqs, freqs): the second half repeats the first
    return {kind: (torch.from_numpy(cos[:, :half].copy()), torch.from_numpy(sin[:, :half].copy()))
            for kind, (cos, sin) in tables(config, spec, context).items()}


class StatefulCausalLM(nn.Module):
    """A dense decoder (see the module docstring) with its KV cache as registered buffers (Core ML state)."""

    def __init__(self, spec: ModelSpec, weights: dict[str, torch.Tensor],
                 rope: dict[str, tuple[torch.Tensor, torch.Tensor]], context: int, last_only: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.spec, self.context, self.last_only = spec, context, last_only
        self.fam = spec.family
        self.n_heads, self.n_kv, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.eps = spec.norm_eps
        self.window = spec.sliding_window if "sliding" in spec.layer_types else None
        # SDPA scales by 1/sqrt(head_dim); families that scale otherwise get q pre-multiplied
        self.q_scale = [self.fam.attn_scale(spec, config or {}, i) * spec.head_dim ** 0.5
                        for i in range(spec.num_layers)]
        from transformers.activations import ACT2FN

        self.act = ACT2FN[spec.activation]
        self.params = nn.ParameterDict()
        for name, tensor in weights.items():
            self.params[name.replace(".", "__")] = nn.Parameter(tensor, requires_grad=False)
        # one pair of tables per distinct rope: "rope_cos"/"rope_sin" for the first kind, suffixed for others
        self.rope_of: dict[str, str] = {}
        seen: dict[int, str] = {}
        for kind, (cos, sin) in sorted(rope.items()):
            if id(cos) not in seen:
                suffix = "" if not seen else f"_{kind}"
                self.register_buffer(f"rope_cos{suffix}", cos, persistent=False)
                self.register_buffer(f"rope_sin{suffix}", sin, persistent=False)
                seen[id(cos)] = suffix
            self.rope_of[kind] = seen[id(cos)]
        shape = (spec.num_layers, spec.num_kv_heads, context, spec.head_dim)
        self.register_buffer("key_cache", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("value_cache", torch.zeros(shape, dtype=torch.float32))

    def w(self, name: str) -> torch.Tensor | None:
        key = name.replace(".", "__")
        return self.params[key] if key in self.params else None

    def rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        q_len = input_ids.shape[1]
        start = position[0]
        end = start + q_len
        q_pos = torch.arange(q_len, dtype=torch.int32) + start  # (q,)
        k_pos = torch.arange(end, dtype=torch.int32)  # (end,)
        allowed = k_pos[None, :] <= q_pos[:, None]
        masks = {"full": torch.where(allowed, 0.0, MASK_VALUE)[None, None]}  # (1, 1, q, end)
        if self.window:
            sliding = allowed & (k_pos[None, :] > q_pos[:, None] - self.window)
            masks["sliding"] = torch.where(sliding, 0.0, MASK_VALUE)[None, None]
        # half-width tables: rotate() pairs dimension i with i + head_dim/2, both rotated by angle i
        ropes = {}
        for suffix in sorted(set(self.rope_of.values())):
            ropes[suffix] = (F.embedding(q_pos, getattr(self, f"rope_cos{suffix}"))[None, None],  # (1, 1, q, d/2)
                             F.embedding(q_pos, getattr(self, f"rope_sin{suffix}"))[None, None])
        h = F.embedding(input_ids, self.w("model.embed_tokens.weight"))
        if self.fam.embed_scale:
            h = h * self.spec.hidden_size ** 0.5
        rep = self.n_heads // self.n_kv
        for i in range(self.spec.num_layers):
            p = f"model.layers.{i}."
            kind = self.spec.layer_types[i]
            cos, sin = ropes[self.rope_of[kind]]
            mask = masks[kind] if kind in masks else masks["full"]
            x = self.rms(h, self.w(p + "input_layernorm.weight"))
            q = F.linear(x, self.w(p + "self_attn.q_proj.weight"), self.w(p + "self_attn.q_proj.bias"))
            k = F.linear(x, self.w(p + "self_attn.k_proj.weight"), self.w(p + "self_attn.k_proj.bias"))
            v = F.linear(x, self.w(p + "self_attn.v_proj.weight"), self.w(p + "self_attn.v_proj.bias"))
            q = q.view(1, q_len, self.n_heads, self.head_dim).transpose(1, 2)
            k = k.view(1, q_len, self.n_kv, self.head_dim).transpose(1, 2)
            v = v.view(1, q_len, self.n_kv, self.head_dim).transpose(1, 2)
            if self.spec.qk_norm:
                q = self.rms(q, self.w(p + "self_attn.q_norm.weight"))
                k = self.rms(k, self.w(p + "self_attn.k_norm.weight"))
            q = self.rotate(q, cos, sin)
            k = self.rotate(k, cos, sin)
            if self.q_scale[i] != 1.0:
                q = q * self.q_scale[i]
            self.key_cache[i, :, start:end, :] = k[0]
            self.value_cache[i, :, start:end, :] = v[0]
            keys = self.key_cache[i, :, :end, :]
            values = self.value_cache[i, :, :end, :]
            if rep > 1:
                keys = keys[:, None].expand(self.n_kv, rep, end, self.head_dim).reshape(self.n_heads, end,
                                                                                          self.head_dim)
                values = values[:, None].expand(self.n_kv, rep, end, self.head_dim).reshape(self.n_heads, end,
                                                                                            self.head_dim)
            attn = F.scaled_dot_product_attention(q, keys[None], values[None], attn_mask=mask)
            attn = attn.transpose(1, 2).reshape(1, q_len, self.n_heads * self.head_dim)
            attn = F.linear(attn, self.w(p + "self_attn.o_proj.weight"), self.w(p + "self_attn.o_proj.bias"))
            if self.fam.sandwich_norms:
                h = h + self.rms(attn, self.w(p + "post_attention_layernorm.weight"))
                x = self.rms(h, self.w(p + "pre_feedforward_layernorm.weight"))
            else:
                h = h + attn
                x = self.rms(h, self.w(p + "post_attention_layernorm.weight"))
            gate = F.linear(x, self.w(p + "mlp.gate_proj.weight"), self.w(p + "mlp.gate_proj.bias"))
            up = F.linear(x, self.w(p + "mlp.up_proj.weight"), self.w(p + "mlp.up_proj.bias"))
            m = F.linear(self.act(gate) * up, self.w(p + "mlp.down_proj.weight"), self.w(p + "mlp.down_proj.bias"))
            h = h + (self.rms(m, self.w(p + "post_feedforward_layernorm.weight")) if self.fam.sandwich_norms else m)
        if self.last_only:
            h = h[:, -1:, :]
        h = self.rms(h, self.w("model.norm.weight"))
        head = self.w("lm_head.weight")
        logits = F.linear(h, head if head is not None else self.w("model.embed_tokens.weight"))
        cap = self.spec.extra.get("final_logit_softcapping")
        return torch.tanh(logits / cap) * cap if cap else logits


def expected_names(spec: ModelSpec) -> tuple[list[str], list[str]]:
    """(required tensor names, optional ones) the wrapper reads for ``spec``."""
    required = ["model.embed_tokens.weight", "model.norm.weight"]
    optional = ["lm_head.weight"]
    if not spec.tied_embeddings:
        required.append("lm_head.weight")
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        required += [p + n for n in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                     "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                     "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                     "mlp.down_proj.weight")]
        if spec.family.sandwich_norms:
            required += [p + "pre_feedforward_layernorm.weight", p + "post_feedforward_layernorm.weight"]
        if spec.qk_norm:
            required += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        for proj in ("q", "k", "v", "o"):
            (required if spec.attention_bias and proj != "o" else optional).append(p + f"self_attn.{proj}_proj.bias")
        optional += [p + f"mlp.{m}_proj.bias" for m in ("gate", "up", "down")]
    return required, optional


def build(checkpoint: Any, spec: ModelSpec, context: int, last_only: bool = True, seam: Any = None) -> StatefulCausalLM:
    """The wrapper over ``checkpoint``'s tensors (adapter merged), weights in float32, in eval mode.

    Core ML's tensor seam (:mod:`converters.seam`) is here, at the torch-module level: each weight may be
    replaced by a float array, which the program then stores in its precision like any other weight, or by a
    ``coreml:*`` QuantizedTensor: the module then holds its dequantized floats and ``module.quantized`` its codes,
    which :mod:`converters.coreml.compressed` writes into the program as constexpr ops."""
    check_supported(spec)
    required, optional = expected_names(spec)
    names = set(checkpoint.names())
    missing = [n for n in required if n not in names]
    if missing:
        raise EdgekitError(f"checkpoint {checkpoint.path} lacks tensor {missing[0]}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                           + f" expected for {spec.architecture}", "re-save the checkpoint with transformers")
    quantized: dict[str, Any] = {}
    weights = {n: _through_seam(seam, checkpoint, spec, n, quantized) for n in required + optional if n in names}
    if spec.family.norm_offset:  # the checkpoint stores w - 1 and computes x * (1 + w), in fp32 as here
        weights = {n: t + 1 if n.endswith("norm.weight") else t for n, t in weights.items()}
    rope = rope_tables(checkpoint.config, spec, context)
    module = StatefulCausalLM(spec, weights, rope, context, last_only=last_only, config=checkpoint.config).eval()
    module.quantized = quantized  # weight name -> QuantizedTensor (a plain attribute: tracing ignores it)
    return module


def _through_seam(seam: Any, checkpoint: Any, spec: ModelSpec, name: str, quantized: dict[str, Any]) -> torch.Tensor:
    t = checkpoint.get(name).to(torch.float32)
    if seam is None:
        return t
    from converters import seam as tseam

    info = tseam.info("coreml", name, name, tuple(t.shape), checkpoint.tensors[name].dtype, spec.architecture)
    out = tseam.run(info, seam.transform_for(info), t.numpy())
    if not isinstance(out, np.ndarray):
        from converters.coreml.compressed import OPS
        from quant.grids import dequantize

        if out.grid not in OPS or len(out.shape) != 2:
            raise tseam.refuse(info, out, "Core ML stores codes for 2-D weights on a coreml:* grid only")
        quantized[name] = out
        out = dequantize(out)  # traced as floats; the pass after conversion swaps in the codes
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
