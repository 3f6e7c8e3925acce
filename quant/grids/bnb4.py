"""onnxruntime's MatMulBnb4 grid (com.microsoft contrib op, quant_type NF4): bitsandbytes' 4-bit layout.

B is the HF weight [N, K] flattened and packed two codes per byte (the first in the high nibble, as
bitsandbytes packs), absmax float32 per block of the flattened weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quant.codebooks import NF4 as TABLE
from quant.codebooks import absmax_codes, double_quantize
from quant.grids import as_rows
from quant.tensor import QuantizedTensor

NF4_QUANT_TYPE = 1  # MatMulBnb4's quant_type attribute: 0 FP4, 1 NF4


class NF4:
    kind = "codebook"
    name = "onnx:nf4"

    def __init__(self, block_size: int = 64, double_quant: bool = False, **_: Any) -> None:
        if block_size < 16 or block_size & (block_size - 1):
            from edgekit.errors import EdgekitError

            raise EdgekitError(f"MatMulBnb4 block size {block_size} is not a power of two >= 16",
                               "choose --group-size 64 (bitsandbytes' default), 32, 128 or 256")
        self.block_size, self.double_quant = block_size, double_quant

    def quantize(self, w: np.ndarray, **_: Any) -> QuantizedTensor:
        shape = tuple(np.shape(w))
        rows = as_rows(w, self.block_size, self.name)
        q, absmax = absmax_codes(rows.reshape(-1, self.block_size))
        if self.double_quant:
            absmax = double_quantize(absmax)
        flat = q.reshape(-1)
        packed = (flat[0::2] << 4) | flat[1::2]
        n, k = rows.shape
        attrs = {"K": k, "N": n, "block_size": self.block_size, "quant_type": NF4_QUANT_TYPE,
                 "grid_params": {"block_size": self.block_size, "double_quant": self.double_quant}}
        return QuantizedTensor(self.name, shape, {"B": packed.astype(np.uint8), "absmax": absmax}, attrs)

    def dequantize(self, qt: QuantizedTensor) -> np.ndarray:
        b = qt.arrays["B"]
        q = np.empty(b.size * 2, np.uint8)
        q[0::2], q[1::2] = b >> 4, b & 0x0F
        vals = TABLE[q].reshape(-1, self.block_size) * qt.arrays["absmax"].astype(np.float32)[:, None]
        return vals.reshape(qt.shape)
