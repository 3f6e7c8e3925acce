"""The GGUF mapping of an architecture: names, tensor transforms, hyperparameters.

What it knows of the architecture comes from the family's description (:mod:`edgekit.archs`): llama.cpp's
architecture name, whether q/k rows are permuted to llama.cpp's rope order, norm offsets, Conv1D weights,
whether the head is always token_embd, head_dim, sliding-window layers and their rope. A family needs a
module under :mod:`converters.gguf.archs` only for what llama.cpp wants beyond that (stacked experts,
rope factor tensors).

A family turns the checkpoint's tensor names into a list of :class:`Job`: one GGUF tensor each, made
by a function of one or more checkpoint tensors (numpy arrays). The same function runs twice: first
on :func:`meta` arrays (shapes only, no data) so the GGUF header can be written before any weight is
read, then on the real arrays, one job at a time, as they are written. So a family never describes a
shape by hand, and nothing holds more than one output tensor in memory. A job that returns its input
unchanged lets the writer copy the stored bytes as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from edgekit.errors import EdgekitError
from edgekit.spec import ModelSpec

_SKIP = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")
_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


@dataclass
class Job:
    """One GGUF tensor: ``fn(*checkpoint tensors named by inputs)`` (a numpy array)."""

    name: str  # GGUF tensor name
    inputs: tuple[str, ...]  # checkpoint tensor names
    fn: Callable[..., Any]
    lora_b: Callable[[Any], Any] | None = None  # how the LoRA B matrix of a single-input job transforms


def meta(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A shape-only array: every element aliases one zero, so reshapes, transposes and slices of it
    cost nothing; arithmetic on it allocates, so families keep that to small (1-D) tensors."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def is_meta(a: np.ndarray) -> bool:
    return a.ndim > 0 and a.size > 1 and not any(a.strides)


def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.stack`` along a new first axis, shape-only for shape-only inputs (experts are large)."""
    if all(is_meta(a) for a in arrays):
        return meta((len(arrays), *arrays[0].shape), arrays[0].dtype)
    return np.stack(arrays)


def permute_qk(w, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's Q/K row order for rope type NORM (interleaved pairs) from HF's rotate-half order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Model:
    """Rename with gguf's TensorNameMap, transform as the family description says, llama.cpp's hyperparameters."""

    def __init__(self, spec: ModelSpec, config: dict[str, Any], names: Sequence[str]) -> None:
        self.spec, self.config, self.names = spec, config, list(names)
        self.fam = spec.family
        self.gguf_arch = gguf.MODEL_ARCH[self.fam.gguf_arch]
        self.tmap = gguf.get_tensor_name_map(self.gguf_arch, spec.num_layers)
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    # ---- tensors -------------------------------------------------------------------------------
    def skip(self, name: str) -> bool:
        if name.endswith(_SKIP):
            return True
        # tied embeddings: llama.cpp reuses token_embd when output.weight is absent (some graphs always do)
        return name == "lm_head.weight" and (self.spec.tied_embeddings or self.fam.gguf_tied_head)

    def _offset_norm(self, name: str) -> bool:
        return self.fam.norm_offset and name.endswith("norm.weight")

    def map_name(self, name: str) -> str:
        new = self.tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise EdgekitError(f"tensor {name} has no GGUF name for llama.cpp's {self.arch_name} architecture",
                               "the checkpoint does not match its config.json model_type; check the files")
        return new

    def transform(self, name: str, t):
        """The tensor as llama.cpp wants it."""
        if self.fam.conv1d and name.endswith(_CONV1D):
            return t.T  # Conv1D stores (in, out)
        if self.fam.gguf_rope_permute:
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                return permute_qk(t, self.spec.num_heads)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                return permute_qk(t, self.spec.num_heads, self.spec.num_kv_heads)
        if self._offset_norm(name):
            # the checkpoint stores w - 1 and computes x * (1 + w); llama.cpp multiplies by the stored weight
            return t.astype(np.float32) + 1
        return t

    def lora_b(self, name: str) -> Callable[[Any], Any] | None:
        """How a LoRA B (out x r) must change for the transform of ``name``; None if LoRA cannot follow it."""
        if self._offset_norm(name):
            return None
        if self.fam.gguf_rope_permute:
            return lambda b, n=name: self.transform(n, b)  # delta = B @ A: permuting its rows permutes B's
        return lambda b: b

    def jobs(self) -> list[Job]:
        grouped, used = self.grouped_jobs()
        out = list(self.extra_jobs())
        for name in self.names:
            if name in used or self.skip(name):
                continue
            out.append(Job(self.map_name(name), (name,), lambda t, n=name: self.transform(n, t), self.lora_b(name)))
        return out + grouped

    def grouped_jobs(self) -> tuple[list[Job], set[str]]:
        """Tensors made from several checkpoint tensors (stacked experts), and the names they consume."""
        return [], set()

    def extra_jobs(self) -> list[Job]:
        """Tensors llama.cpp needs that the checkpoint does not hold (rope factors)."""
        return []

    # ---- hyperparameters -----------------------------------------------------------------------
    def set_params(self, w: gguf.GGUFWriter) -> None:
        s = self.spec
        w.add_vocab_size(s.vocab_size)
        w.add_context_length(s.context_length)
        w.add_embedding_length(s.hidden_size)
        w.add_feed_forward_length(s.intermediate_size)
        w.add_block_count(s.num_layers)
        w.add_head_count(s.num_heads)
        w.add_head_count_kv(s.num_kv_heads)
        if s.norm == "rms":
            w.add_layer_norm_rms_eps(s.norm_eps)
        else:
            w.add_layer_norm_eps(s.norm_eps)
        if s.head_dim * s.num_heads != s.hidden_size or "head_dim" in self.config or self.fam.explicit_head_dim:
            w.add_key_length(s.head_dim)
            w.add_value_length(s.head_dim)
        if s.rope is not None:
            w.add_rope_freq_base(s.rope.theta)
            w.add_rope_dimension_count(int(s.head_dim * s.rope.partial_rotary_factor))
            self.set_rope_scaling(w)
            if s.rope_local is not None:
                w.add_rope_freq_base_swa(s.rope_local.theta)
        if s.sliding_window:
            w.add_sliding_window(s.sliding_window)
            if len(set(s.layer_types)) > 1:  # which layers slide, spelled out rather than left to llama.cpp's default
                w.add_sliding_window_pattern([t == "sliding" for t in s.layer_types])
        if s.extra.get("attn_logit_softcapping") is not None:
            w.add_attn_logit_softcapping(float(s.extra["attn_logit_softcapping"]))
        if s.extra.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(float(s.extra["final_logit_softcapping"]))
        if s.moe is not None:
            w.add_expert_count(s.moe.experts)
            w.add_expert_used_count(s.moe.experts_per_token)

    def set_rope_scaling(self, w: gguf.GGUFWriter) -> None:
        r = self.spec.rope
        if r is None or r.scaling is None:
            return
        if r.scaling == "linear" and r.factor:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(r.factor)
        elif r.scaling == "yarn" and r.factor:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(r.factor)
            w.add_rope_scaling_orig_ctx_len(int(r.original_context or self.spec.context_length))
            for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                             ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                             ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                             ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
                if r.extra.get(key) is not None:
                    add(float(r.extra[key]))
        elif r.scaling == "longrope":
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        elif r.scaling in ("llama3", "dynamic"):
            pass  # llama3: rope_freqs tensor (extra_jobs); dynamic: llama.cpp has no equivalent, as its converter
