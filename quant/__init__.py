"""Number grids (Q4_0, Q4_1, Q8_0, int4 block sym/asym, NF4 codebook), quantization algorithms (RTN,
NF4, GPTQ, AWQ), calibration data, importance matrices and the llama.cpp k-quant bridge. A quantizer
takes a Grid from the target format and returns codes that format stores exactly."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from quant.grids import dequantize  # noqa: F401  (public API)
from quant.grids import get as grid
from quant.tensor import QuantizedTensor

# method -> "module:function(w, grid, stats) -> QuantizedTensor"; a new algorithm is one module and one line
QUANTIZERS: dict[str, str] = {
    "rtn": "quant.rtn:quantize",
    "nf4": "quant.nf4:quantize",
}


def quantize(method: str, w: np.ndarray, grid_name: str, stats: Any = None, **grid_params: Any) -> QuantizedTensor:
    """Quantize weight ``w`` with ``method`` onto the grid ``grid_name`` (+ its params)."""
    if method not in QUANTIZERS:
        from edgekit.errors import EdgekitError

        raise EdgekitError(f"unknown quantization method {method}", f"methods: {', '.join(QUANTIZERS)}")
    module, fn = QUANTIZERS[method].split(":")
    return getattr(importlib.import_module(module), fn)(w, grid(grid_name, **grid_params), stats)
