"""llama.cpp's legacy block grids (block 32): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, in GGML's block byte layout.

The rounding follows ggml-quants.c's reference quantizers (``quantize_row_*_ref``) so the bytes equal those of
llama.cpp and of ``gguf.quants``: codes come from the float32 scale, which is then stored as float16.
"""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np

from quant.grids import as_rows
from quant.tensor import QuantizedTensor

BLOCK = 32


def _roundf(x: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero (numpy's round is half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


class _Legacy:
    kind = "linear"
    block_size = BLOCK
    bits = 4
    offset = False  # a per-block minimum (Q4_1, Q5_1) or a fixed midpoint (Q4_0, Q5_0, Q8_0)
    qtype: gguf.GGMLQuantizationType

    def __init__(self, **params: Any) -> None:
        if params.get("block_size", BLOCK) != BLOCK:
            from edgekit.errors import EdgekitError

            raise EdgekitError(f"{self.name} has a fixed block of {BLOCK}", "drop --group-size for GGUF types")

    @property
    def name(self) -> str:
        return "gguf:" + self.qtype.name.lower()

    def block_params(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """Per-block scale ``d`` (float32, codes are computed from it), ``inv`` and, for Q4_1/Q5_1, ``m``; blocks
        [..., 32] -> arrays [..., 1]."""
        raise NotImplementedError

    def encode(self, x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        """Codes of ``x`` (any values, e.g. GPTQ's updated weights) on blocks whose ``params`` are fixed."""
        raise NotImplementedError

    def decode(self, q: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        """What llama.cpp computes from codes ``q`` and the stored (float16) scale and minimum."""
        d = p["d"].astype(np.float16).astype(np.float32)
        if self.bits == 8:
            return d * q.astype(np.float32)
        if self.offset:
            return d * q.astype(np.float32) + p["m"].astype(np.float16).astype(np.float32)
        return d * (q.astype(np.float32) - np.float32(1 << (self.bits - 1)))

    def codes(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(codes uint8 [n, 32], scale float32 [n, 1], min float32 [n, 1] or None)."""
        p = self.block_params(blocks)
        return self.encode(blocks, p), p["d"], p.get("m")

    def quantize(self, w: np.ndarray, **_: Any) -> QuantizedTensor:
        shape = tuple(np.shape(w))
        rows = as_rows(w, BLOCK, self.name)
        blocks = rows.reshape(-1, BLOCK)
        p = self.block_params(blocks)
        return self.pack(self.encode(blocks, p), p, shape)

    def pack(self, q: np.ndarray, p: dict[str, np.ndarray], shape: tuple[int, ...]) -> QuantizedTensor:
        """GGML blocks from codes (row-major blocks of 32, any leading shape) and their ``params``."""
        q = q.reshape(-1, BLOCK)
        d, m = p["d"].reshape(-1, 1), p.get("m")
        parts = [d.astype(np.float16).view(np.uint8)]
        if m is not None:
            parts.append(m.reshape(-1, 1).astype(np.float16).view(np.uint8))
        if self.bits == 5:
            # the fifth bits of the 32 codes, as one little-endian uint32
            parts.append(np.packbits((q >> 4) & 1, axis=-1, bitorder="little"))
        if self.bits == 8:
            parts.append(q.view(np.uint8))
        else:
            lo = q & np.uint8(0x0F)
            parts.append(lo[:, :16] | (lo[:, 16:] << np.uint8(4)))  # GGML: element j and j+16 share a byte
        data = np.concatenate(parts, axis=1).reshape(int(np.prod(shape[:-1])) if len(shape) > 1 else 1, -1)
        return QuantizedTensor(self.name, shape, {"data": np.ascontiguousarray(data)}, {"ggml_type": self.qtype.name})

    def dequantize(self, qt: QuantizedTensor) -> np.ndarray:
        _, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        blocks = qt.arrays["data"].reshape(-1, type_size)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        at = 2
        m = None
        if self.offset:
            m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
            at = 4
        if self.bits == 8:
            q = blocks[:, at:].copy().view(np.int8).astype(np.float32)
            return (d * q).reshape(qt.shape)
        hi = None
        if self.bits == 5:
            hi = np.unpackbits(blocks[:, at:at + 4], axis=-1, bitorder="little")
            at += 4
        qs = blocks[:, at:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        if hi is not None:
            q = q | (hi << 4)
        q = q.astype(np.float32)
        out = d * q + m if m is not None else d * (q - np.float32(1 << (self.bits - 1)))
        return out.reshape(qt.shape)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


class _Symmetric(_Legacy):
    def block_params(self, blocks):
        # the value of largest magnitude, with its sign, maps to code 0 (-2^(b-1) after the midpoint shift)
        mid = 1 << (self.bits - 1)
        top = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1, keepdims=True), axis=-1)
        d = top / np.float32(-mid)
        return {"d": d, "inv": _inverse(d)}

    def encode(self, x, p):
        mid = 1 << (self.bits - 1)
        # ggml: (int8)(x*id + mid + 0.5f), in float32
        q = np.trunc(x.astype(np.float32) * p["inv"] + np.float32(mid + 0.5))
        return np.clip(q, 0, 2 * mid - 1).astype(np.uint8)


class _Affine(_Legacy):
    offset = True

    def block_params(self, blocks):
        top = (1 << self.bits) - 1
        lo = blocks.min(axis=-1, keepdims=True)
        hi = blocks.max(axis=-1, keepdims=True)
        d = (hi - lo) / np.float32(top)
        return {"d": d, "m": lo, "inv": _inverse(d)}

    def encode(self, x, p):
        top = (1 << self.bits) - 1
        q = np.trunc((x.astype(np.float32) - p["m"]) * p["inv"] + np.float32(0.5))
        return np.clip(q, 0, top).astype(np.uint8)


class Q4_0(_Symmetric):
    qtype = gguf.GGMLQuantizationType.Q4_0


class Q5_0(_Symmetric):
    qtype = gguf.GGMLQuantizationType.Q5_0
    bits = 5


class Q4_1(_Affine):
    qtype = gguf.GGMLQuantizationType.Q4_1


class Q5_1(_Affine):
    qtype = gguf.GGMLQuantizationType.Q5_1
    bits = 5


class Q8_0(_Legacy):
    qtype = gguf.GGMLQuantizationType.Q8_0
    bits = 8

    def block_params(self, blocks):
        d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
        return {"d": d, "inv": _inverse(d)}

    def encode(self, x, p):
        return np.clip(_roundf(x.astype(np.float32) * p["inv"]), -127, 127).astype(np.int8)
