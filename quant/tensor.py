"""QuantizedTensor: codes and scales exactly as the target format stores them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight on a target's number grid, in that target's own storage layout.

    ``grid`` names the grid ("gguf:q4_0", "onnx:int4", "onnx:nf4", "coreml:int4", "coreml:palette4");
    ``shape`` is the logical float shape; ``arrays`` hold the stored arrays (GGUF {"data": raw GGML block
    bytes}; ONNX MatMulNBits {"B", "scales", "zero_points"?}; MatMulBnb4 {"B", "absmax"}; Core ML
    {"data", "scale", "offset"?} or {"indices", "lut"}); ``attrs`` the format's attributes (ggml type,
    bits, block_size, ...).
    """

    grid: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(1, int(np.prod(self.shape, dtype=np.int64)))
