"""Number grids, one per target storage type, registered by name ("gguf:q4_0", "onnx:int4", ...).

A Grid quantizes a 2-D float weight [rows, cols] (blocks run along a row, the input dimension) by round to
nearest onto its own codes and scales, packs them as its format stores them (a :class:`QuantizedTensor`), and
dequantizes them back exactly as the runtime will. Parameters (block size, symmetry) are keyword arguments of
:func:`get` and travel in ``QuantizedTensor.attrs`` so :func:`dequantize` needs nothing else.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from quant.tensor import QuantizedTensor

# grid name -> "module:class"; a new grid is one module (or class) and one line here
GRIDS: dict[str, str] = {
    "gguf:q4_0": "quant.grids.ggml:Q4_0",
    "gguf:q4_1": "quant.grids.ggml:Q4_1",
    "gguf:q5_0": "quant.grids.ggml:Q5_0",
    "gguf:q5_1": "quant.grids.ggml:Q5_1",
    "gguf:q8_0": "quant.grids.ggml:Q8_0",
    "onnx:int4": "quant.grids.matmulnbits:Int4",
    "onnx:int8": "quant.grids.matmulnbits:Int8",
    "onnx:nf4": "quant.grids.bnb4:NF4",
    "coreml:int4": "quant.grids.coreml_linear:Int4",
    "coreml:int8": "quant.grids.coreml_linear:Int8",
    "coreml:palette4": "quant.grids.coreml_palette:Palette4",
}


class Grid(Protocol):
    name: str
    kind: str  # "linear" (scale and offset per block) or "codebook" (a table of values per block)
    block_size: int

    def quantize(self, w: np.ndarray, **kw: Any) -> QuantizedTensor: ...

    def dequantize(self, qt: QuantizedTensor) -> np.ndarray: ...


def get(name: str, **params: Any) -> Grid:
    """The grid called ``name`` with ``params`` (e.g. block_size=32, symmetric=False)."""
    if name not in GRIDS:
        from edgekit.errors import EdgekitError

        raise EdgekitError(f"unknown grid {name}", f"grids: {', '.join(GRIDS)}")
    module, cls = GRIDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**params)


def dequantize(qt: QuantizedTensor) -> np.ndarray:
    """The float32 weight a runtime computes from ``qt``'s stored arrays."""
    return get(qt.grid, **qt.attrs.get("grid_params", {})).dequantize(qt)


def as_rows(w: np.ndarray, block: int, grid: str) -> np.ndarray:
    """``w`` as float32 rows whose length ``block`` divides, or a clear error."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        w = w.reshape(-1, w.shape[-1]) if w.ndim > 2 else w.reshape(1, -1)
    if w.shape[1] % block:
        from edgekit.errors import EdgekitError

        raise EdgekitError(f"{grid}: block size {block} does not divide the row length {w.shape[1]}",
                           "choose a --group-size that divides the input dimension of every linear weight")
    return np.ascontiguousarray(w)


def pack_nibbles_low_first(q: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit codes along the last axis into bytes, the first in the low nibble (ONNX MatMulNBits)."""
    q = q.astype(np.uint8)
    return (q[..., 0::2] & 0x0F) | (q[..., 1::2] << 4)


def unpack_nibbles_low_first(b: np.ndarray) -> np.ndarray:
    out = np.empty((*b.shape[:-1], b.shape[-1] * 2), dtype=np.uint8)
    out[..., 0::2] = b & 0x0F
    out[..., 1::2] = b >> 4
    return out
