"""The tensor seam: the one point per converter every weight passes, where quantizers plug in.

Contract (GGUF, ONNX and Core ML alike):

1. For every weight the converter builds a :class:`TensorInfo` (format, the format's name, the
   checkpoint name, the shape it is about to store, the checkpoint dtype, and the role and layer
   from :mod:`edgekit.roles`) and asks the :class:`Seam`:

   - ``storage(info, default) -> str``: the storage type of this one tensor. ``default`` is what the
     converter would choose without a quantizer (GGUF: a GGML type name such as ``"F16"``, ``"F32"``
     for norms and routers, ``"Q8_0"``; ONNX and Core ML: the graph's float dtype, ``"float32"`` or
     ``"float16"``). GGUF stores any GGML type; ONNX and Core ML store floats in the graph's dtype, or
     the grid name of the :class:`~quant.tensor.QuantizedTensor` the transform returns.
   - ``transform(info) -> Transform | None``: None leaves the tensor alone (GGUF keeps its kernel-copy
     fast path for it). Otherwise ``Transform(array) -> np.ndarray | QuantizedTensor`` receives the
     float32 tensor in the format's layout, rows = output features, last axis = input features (GGUF:
     as llama.cpp stores it, Q/K rows already in its rope order; ONNX and Core ML: the checkpoint's
     ``(out, in)``), and returns either
       * a float array of the same shape (e.g. weights rounded to a grid, or AWQ-scaled), which the
         converter stores in the chosen storage type as it would the original; or
       * a ``QuantizedTensor`` on the format's own grid, whose arrays the writer stores exactly,
         never re-quantizing: GGUF ``gguf:<type>`` raw blocks written under that GGML type (which must
         be the chosen storage type); ONNX ``onnx:int4`` / ``onnx:int8`` as com.microsoft
         ``MatMulNBits`` and ``onnx:nf4`` as ``MatMulBnb4``, for linear roles; Core ML ``coreml:int4`` /
         ``coreml:int8`` as ``constexpr_blockwise_shift_scale`` and ``coreml:palette4`` (NF4) as
         ``constexpr_lut_to_dense``, for any 2-D weight (:mod:`converters.coreml.compressed`).

2. Where a format cannot store a QuantizedTensor for a role it says so with an EdgekitError before
   anything is written (:func:`refuse`).

A quantizer is therefore a ``Seam`` (or two functions); it never needs to know how a format writes
files, only its grid. :data:`NONE` is the seam of a plain conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.roles import LINEAR, role_of

if TYPE_CHECKING:
    from quant.tensor import QuantizedTensor

Replacement = Union[np.ndarray, "QuantizedTensor"]
Transform = Callable[[np.ndarray], Replacement]


@dataclass(frozen=True)
class TensorInfo:
    format: str  # "gguf" | "onnx" | "coreml"
    name: str  # the tensor's name in the format
    hf_name: str  # checkpoint name (the first one for a tensor built from several, e.g. stacked experts)
    shape: tuple[int, ...]  # the shape the transform receives and must return
    dtype: str  # checkpoint dtype: "F32" | "F16" | "BF16" | ...
    role: str | None  # see edgekit.roles
    layer: int | None
    bias: bool = False

    @property
    def linear(self) -> bool:
        """A linear layer's weight matrix (what weight quantizers act on)."""
        return self.role in LINEAR and not self.bias and len(self.shape) >= 2


def info(fmt: str, name: str, hf_name: str, shape: tuple[int, ...], dtype: str, architecture: str,
         role: str | None = None) -> TensorInfo:
    """TensorInfo with role and layer looked up from the checkpoint name; ``role`` names the part of a
    fused checkpoint tensor (phi3's qkv_proj) that a format splits into its own weights."""
    found, layer = role_of(hf_name, architecture)
    return TensorInfo(fmt, name, hf_name, tuple(int(d) for d in shape), dtype, role or found, layer,
                      bias=hf_name.endswith(".bias"))


@dataclass(frozen=True)
class Seam:
    """A storage policy and a transform; either may be None (the converter's choice, untouched)."""

    storage: Callable[[TensorInfo, str], str] | None = None
    transform: Callable[[TensorInfo], Transform | None] | None = None

    def storage_for(self, t: TensorInfo, default: str) -> str:
        return default if self.storage is None else self.storage(t, default)

    def transform_for(self, t: TensorInfo) -> Transform | None:
        return None if self.transform is None else self.transform(t)

    def apply(self, t: TensorInfo, array: np.ndarray) -> Replacement:
        """``array`` after this seam's transform (itself when none applies)."""
        return run(t, self.transform_for(t), array)


NONE = Seam()


def run(t: TensorInfo, fn: Transform | None, array: np.ndarray) -> Replacement:
    """``fn(array)`` checked against the contract: same float shape, or a QuantizedTensor of this format."""
    if fn is None:
        return array
    out = fn(np.asarray(array, dtype=np.float32))
    if isinstance(out, np.ndarray):
        if tuple(out.shape) != t.shape:
            raise ValueError(f"transform of {t.name} returned shape {tuple(out.shape)}, expected {t.shape}")
        return out
    if tuple(out.shape) != t.shape:
        raise ValueError(f"transform of {t.name} returned a QuantizedTensor of shape {out.shape}, expected {t.shape}")
    if out.format != t.format:
        raise EdgekitError(f"{t.name}: a {out.grid} tensor cannot be stored in {t.format}",
                           f"quantize for a {t.format} grid")
    return out


def refuse(t: TensorInfo, q: QuantizedTensor, why: str) -> EdgekitError:
    """The error a format raises for a QuantizedTensor it cannot store for this tensor."""
    return EdgekitError(f"{t.format} cannot store {t.name} ({t.role}) as {q.grid}: {why}",
                        "leave this tensor as floats, or choose a grid the format stores")
