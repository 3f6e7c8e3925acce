"""onnxruntime's MatMulNBits grids (com.microsoft contrib op): 4- or 8-bit codes per block along the input
dimension, a float scale per block, symmetric (implicit zero point 2^(bits-1)) or with stored zero points.

Rounding follows onnxruntime's MLAS blockwise quantizer (``MlasQuantizeBlockwise``, the one
``MatMulNBitsQuantizer`` calls): the range always contains 0, zero points are ``roundf(-min/scale)``, codes
``clamp(roundf(x / scale + zp))``. Layout: B uint8 [N, n_blocks, block*bits/8], scales [N, n_blocks],
zero_points uint8 [N, ceil(n_blocks*bits/8)] (4-bit: two blocks per byte, the first in the low nibble).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quant.grids import as_rows, pack_nibbles_low_first, unpack_nibbles_low_first
from quant.tensor import QuantizedTensor

BLOCK_SIZES = (16, 32, 64, 128, 256)


def _roundf(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


class _NBits:
    kind = "linear"
    bits: int

    def __init__(self, block_size: int = 32, symmetric: bool = True, **_: Any) -> None:
        if block_size not in BLOCK_SIZES:
            from edgekit.errors import EdgekitError

            raise EdgekitError(f"MatMulNBits block size {block_size} is not one onnxruntime runs",
                               f"choose --group-size from {', '.join(map(str, BLOCK_SIZES))}")
        self.block_size, self.symmetric = block_size, symmetric

    @property
    def name(self) -> str:
        return f"onnx:int{self.bits}"

    def params(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "symmetric": self.symmetric}

    def block_params(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """Per-block ``scale``, zero point ``zp`` (float32) and ``inv``; blocks [n, nb, block] -> [n, nb, 1]."""
        top = (1 << self.bits) - 1
        mid = 1 << (self.bits - 1)
        lo = np.minimum(blocks.min(axis=-1, keepdims=True), np.float32(0))
        hi = np.maximum(blocks.max(axis=-1, keepdims=True), np.float32(0))
        if self.symmetric:
            far = np.where(np.abs(hi) > np.abs(lo), hi, lo)
            scale = (far / np.float32(-mid)).astype(np.float32)
            zp = np.full(scale.shape, mid, dtype=np.float32)
        else:
            scale = ((hi - lo) / np.float32(top)).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                zfp = np.where(scale != 0, np.float32(0) - lo / scale, lo).astype(np.float32)
            zp = np.where(zfp < 0, 0, np.where(zfp > top, top, _roundf(zfp))).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
        return {"scale": scale, "zp": zp, "inv": inv}

    def encode(self, x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        """Codes of ``x`` on blocks whose ``params`` are fixed."""
        top = (1 << self.bits) - 1
        return np.clip(_roundf(x.astype(np.float32) * p["inv"] + p["zp"]), 0, top).astype(np.uint8)

    def decode(self, q: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        return (q.astype(np.float32) - p["zp"]) * p["scale"]

    def quantize(self, w: np.ndarray, **_: Any) -> QuantizedTensor:
        shape = tuple(np.shape(w))
        rows = as_rows(w, self.block_size, self.name)
        n, k = rows.shape
        blocks = rows.reshape(n, k // self.block_size, self.block_size)
        p = self.block_params(blocks)
        return self.pack(self.encode(blocks, p), p, shape)

    def pack(self, q: np.ndarray, p: dict[str, np.ndarray], shape: tuple[int, ...]) -> QuantizedTensor:
        """MatMulNBits arrays from codes [n, nb, block] and their ``params``."""
        n, k = q.shape[0], q.shape[1] * q.shape[2]
        arrays = {"B": pack_nibbles_low_first(q) if self.bits == 4 else q,
                  "scales": p["scale"].reshape(n, -1).astype(np.float32)}
        if not self.symmetric:
            z = p["zp"].reshape(n, -1).astype(np.uint8)
            if self.bits == 4:
                if z.shape[1] % 2:
                    z = np.concatenate([z, np.zeros((n, 1), np.uint8)], axis=1)
                z = pack_nibbles_low_first(z)
            arrays["zero_points"] = z
        attrs = {"K": k, "N": n, "bits": self.bits, "block_size": self.block_size, "grid_params": self.params()}
        return QuantizedTensor(self.name, shape, arrays, attrs)

    def dequantize(self, qt: QuantizedTensor) -> np.ndarray:
        n, k = qt.attrs["N"], qt.attrs["K"]
        nb = k // self.block_size
        b = qt.arrays["B"].reshape(n, nb, -1)
        q = unpack_nibbles_low_first(b) if self.bits == 4 else b
        scale = qt.arrays["scales"].astype(np.float32).reshape(n, nb, 1)
        if "zero_points" in qt.arrays:
            z = qt.arrays["zero_points"].reshape(n, -1)
            z = unpack_nibbles_low_first(z)[:, :nb] if self.bits == 4 else z
            zp = z.astype(np.float32).reshape(n, nb, 1)
        else:
            zp = np.float32(1 << (self.bits - 1))
        return ((q.astype(np.float32) - zp) * scale).reshape(qt.shape)


class Int4(_NBits):
    bits = 4


class Int8(_NBits):
    bits = 8
