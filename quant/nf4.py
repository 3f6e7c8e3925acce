"""NF4 (QLoRA): nearest entry of the NormalFloat-4 codebook times the block's absmax, optionally with QLoRA's
double quantization of the absmax; on ONNX MatMulBnb4 or Core ML palettization grids."""

from __future__ import annotations

from typing import Any

import numpy as np

from quant.grids import Grid
from quant.tensor import QuantizedTensor


def quantize(w: np.ndarray, grid: Grid, stats: Any = None) -> QuantizedTensor:
    if grid.kind != "codebook":
        from edgekit.errors import EdgekitError

        raise EdgekitError(f"nf4 is not a {grid.name} type",
                           "for GGUF use --method iq4_nl (llama.cpp's non-linear 4-bit type)"
                           if grid.name.startswith("gguf:") else "use --method rtn for linear grids")
    return grid.quantize(w)
