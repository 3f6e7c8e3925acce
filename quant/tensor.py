"""QuantizedTensor: codes and scales on a target format's own grid, exactly as that format stores them.

A quantizer returns one of these through the tensor seam (:mod:`converters.seam`); the converter
writes its arrays as they are (never re-quantizing), so the error the quantizer optimised is the
error the device sees. ``grid`` names a registered grid (:data:`GRIDS`); ``arrays`` hold what the
format stores, keyed as that format names them:

- ``gguf:<type>`` (``gguf:q4_0``, ``gguf:q8_0``, ``gguf:q4_k``, ...): ``{"data": uint8}``, the raw
  GGML blocks, rows of the logical shape one after another (what ``gguf.quants.quantize`` returns);
  ``attrs["ggml_type"]`` is the GGML type name (filled in from the grid).
- ``onnx:int4`` / ``onnx:int8`` (com.microsoft ``MatMulNBits``): ``{"B": uint8 (N, K/block, block*bits/8),
  "scales": float (N * K/block,), "zero_points"?: uint8}``, ``attrs`` ``bits`` and ``block_size``.
- ``onnx:nf4`` (com.microsoft ``MatMulBnb4``, quant_type NF4): ``{"B": uint8 (N*K/2,), "absmax": float}``,
  ``attrs["block_size"]``.
- ``coreml:int4`` / ``coreml:int8`` (``constexpr_blockwise_shift_scale``): ``{"data", "scale", "offset"?}``;
  ``coreml:palette4`` (``constexpr_lut_to_dense``): ``{"indices", "lut"}``.

``shape`` is the logical float shape, in the layout the seam hands to transforms: rows are output
features, the last axis (the one blocks run along) is the input features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A registered grid: which format stores it and which arrays it needs."""

    format: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


_GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs",
               "tq1_0", "tq2_0")
GRIDS: dict[str, Grid] = {
    **{f"gguf:{t}": Grid("gguf", ("data",)) for t in _GGUF_TYPES},
    "onnx:int4": Grid("onnx", ("B", "scales"), ("zero_points",)),
    "onnx:int8": Grid("onnx", ("B", "scales"), ("zero_points",)),
    "onnx:nf4": Grid("onnx", ("B", "absmax")),
    "coreml:int4": Grid("coreml", ("data", "scale"), ("offset",)),
    "coreml:int8": Grid("coreml", ("data", "scale"), ("offset",)),
    "coreml:palette4": Grid("coreml", ("indices", "lut")),
}


@dataclass(frozen=True)
class QuantizedTensor:
    grid: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; registered: {', '.join(sorted(GRIDS))}")
        g = GRIDS[self.grid]
        missing = [k for k in g.required if k not in self.arrays]
        unknown = [k for k in self.arrays if k not in g.required + g.optional]
        if missing or unknown:
            raise ValueError(f"{self.grid} needs arrays {g.required} (optional {g.optional}); "
                             f"missing {missing}, unknown {unknown}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if g.format == "gguf":
            self.attrs.setdefault("ggml_type", self.grid.split(":", 1)[1].upper())

    @property
    def format(self) -> str:
        return GRIDS[self.grid].format
