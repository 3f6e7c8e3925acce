"""RTN: round each weight to the nearest point of a linear grid (scale and offset per block)."""

from __future__ import annotations

from typing import Any

import numpy as np

from quant.grids import Grid
from quant.tensor import QuantizedTensor


def quantize(w: np.ndarray, grid: Grid, stats: Any = None) -> QuantizedTensor:
    """``w`` [rows, cols] on ``grid`` by round to nearest; ``stats`` (calibration) is not used by RTN."""
    if grid.kind != "linear":
        from edgekit.errors import EdgekitError

        raise EdgekitError(f"rtn needs a linear grid, not {grid.name}", "use --method nf4 for codebook grids")
    return grid.quantize(w)
