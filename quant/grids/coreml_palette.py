"""Core ML (iOS 18) 4-bit palettization carrying NF4: ``constexpr_lut_to_dense`` with one 16-entry table per
block along the input dimension, the table being the NF4 codebook times the block's absmax.

Arrays: indices uint8 [N, K] (4-bit values), lut [N, K/block, 16, 1] in the table dtype (float16 by
default, what an fp16 Core ML program computes in).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quant.codebooks import NF4 as TABLE
from quant.codebooks import absmax_codes, double_quantize
from quant.grids import as_rows
from quant.tensor import QuantizedTensor


class Palette4:
    kind = "codebook"
    name = "coreml:palette4"

    def __init__(self, block_size: int = 64, double_quant: bool = False, lut_dtype: str = "float16",
                 **_: Any) -> None:
        self.block_size, self.double_quant, self.lut_dtype = block_size, double_quant, np.dtype(lut_dtype)

    def params(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "double_quant": self.double_quant, "lut_dtype": self.lut_dtype.name}

    def quantize(self, w: np.ndarray, **_: Any) -> QuantizedTensor:
        shape = tuple(np.shape(w))
        rows = as_rows(w, self.block_size, self.name)
        n, k = rows.shape
        blocks = rows.reshape(-1, self.block_size)
        q, absmax = absmax_codes(blocks)
        if self.double_quant:
            absmax = double_quantize(absmax)
        lut = (TABLE[None, :] * absmax[:, None]).astype(self.lut_dtype)
        arrays = {"indices": q.reshape(n, k), "lut": lut.reshape(n, k // self.block_size, 16, 1)}
        return QuantizedTensor(self.name, shape, arrays, {"nbits": 4, "block_size": self.block_size,
                                                          "grid_params": self.params()})

    def dequantize(self, qt: QuantizedTensor) -> np.ndarray:
        n, k = qt.arrays["indices"].shape
        lut = qt.arrays["lut"].astype(np.float32).reshape(n, k // self.block_size, 16)
        idx = qt.arrays["indices"].reshape(n, k // self.block_size, self.block_size).astype(np.intp)
        return np.take_along_axis(lut, idx, axis=-1).reshape(qt.shape)
