"""Core ML (iOS 18) per-block linear grids: ``constexpr_blockwise_shift_scale`` with int4 or int8 data, a
scale per block along the input dimension and, when asymmetric, an offset (zero point) per block.

Rounding follows coremltools' ``linear_quantize_weights`` (``optimize._utils.quantize_weight_by_dtype``, mode
linear_symmetric: restricted signed range [-7, 7] / [-127, 127]; mode linear: full range, rounded zero point),
computed like it in the dtype the program holds the weight in (``scale_dtype``, fp16 by default).
Arrays: data int8 [N, K] (int4 values stored one per int8), scale [N, K/block], offset int8 [N, K/block].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quant.grids import as_rows
from quant.tensor import QuantizedTensor


class _Linear:
    kind = "linear"
    bits: int

    def __init__(self, block_size: int = 32, symmetric: bool = True, scale_dtype: str = "float16", **_: Any) -> None:
        self.block_size, self.symmetric, self.scale_dtype = block_size, symmetric, np.dtype(scale_dtype)

    @property
    def name(self) -> str:
        return f"coreml:int{self.bits}"

    def params(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "symmetric": self.symmetric, "scale_dtype": self.scale_dtype.name}

    def _range(self) -> tuple[int, int]:
        half = 1 << (self.bits - 1)
        return (-half + 1 if self.symmetric else -half), half - 1

    def block_params(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """Per-block ``scale`` (in the program's dtype) and ``zp`` (None when symmetric); blocks [n, nb, block]."""
        blocks = blocks.astype(self.scale_dtype)
        lo = blocks.min(axis=-1, keepdims=True)
        hi = blocks.max(axis=-1, keepdims=True)
        qmin, qmax = self._range()
        if self.symmetric:
            far = np.maximum(np.abs(lo), np.abs(hi))
            lo, hi = -far, far
        else:
            lo, hi = np.minimum(0.0, lo), np.maximum(0.0, hi)
        scale = (hi - lo) / (qmax - qmin)
        empty = scale == 0  # an all-zero block: codes 0 (coremltools would divide by zero)
        p = {"scale": scale, "empty": empty}
        if not self.symmetric:
            with np.errstate(divide="ignore", invalid="ignore"):
                p["zp"] = np.where(empty, 0, np.clip(np.round((qmin * hi - qmax * lo) / (hi - lo)), qmin, qmax))
        return p

    def encode(self, x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        """Codes of ``x`` on blocks whose ``params`` are fixed, in coremltools' arithmetic."""
        qmin, qmax = self._range()
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(p["empty"], 0, np.round(x.astype(self.scale_dtype) / p["scale"]))
            if "zp" in p:
                q = q + p["zp"]
        return np.clip(q, qmin, qmax).astype(np.int8)

    def decode(self, q: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        off = p["zp"].astype(np.float32) if "zp" in p else np.float32(0)
        return (q.astype(np.float32) - off) * p["scale"].astype(self.scale_dtype).astype(np.float32)

    def quantize(self, w: np.ndarray, **_: Any) -> QuantizedTensor:
        shape = tuple(np.shape(w))
        rows = as_rows(w, self.block_size, self.name)
        n, k = rows.shape
        # the weight as the Core ML program holds it (fp16 by default), and coremltools' arithmetic in that dtype
        blocks = rows.astype(self.scale_dtype).reshape(n, k // self.block_size, self.block_size)
        p = self.block_params(blocks)
        return self.pack(self.encode(blocks, p), p, shape)

    def pack(self, q: np.ndarray, p: dict[str, np.ndarray], shape: tuple[int, ...]) -> QuantizedTensor:
        """Core ML arrays from codes [n, nb, block] and their ``params``."""
        n, k = q.shape[0], q.shape[1] * q.shape[2]
        arrays = {"data": q.reshape(n, k), "scale": p["scale"].astype(self.scale_dtype).reshape(n, -1)}
        if "zp" in p:
            arrays["offset"] = p["zp"].reshape(n, -1).astype(np.int8)
        attrs = {"bits": self.bits, "block_size": self.block_size, "grid_params": self.params()}
        return QuantizedTensor(self.name, shape, arrays, attrs)

    def dequantize(self, qt: QuantizedTensor) -> np.ndarray:
        n, k = qt.arrays["data"].shape
        data = qt.arrays["data"].astype(np.float32).reshape(n, k // self.block_size, self.block_size)
        off = qt.arrays["offset"].astype(np.float32)[..., None] if "offset" in qt.arrays else np.float32(0)
        scale = qt.arrays["scale"].astype(np.float32)[..., None]
        return ((data - off) * scale).reshape(qt.shape)


class Int4(_Linear):
    bits = 4


class Int8(_Linear):
    bits = 8
