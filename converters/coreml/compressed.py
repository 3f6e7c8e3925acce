"""Quantized weights in the Core ML program: the quantizer's own codes as iOS 18 constexpr ops.

The traced torch module holds each quantized weight as its dequantized floats (what the device computes
with), so the converted program has one ``const`` per weight. A graph pass (:class:`ConstexprWeights`) then
replaces that const by a constexpr op built with coremltools' own op builders from the
:class:`~quant.tensor.QuantizedTensor`'s arrays, and coremltools serializes it, so the codes in the
``.mlpackage`` are exactly the quantizer's:

- ``coreml:int4`` / ``coreml:int8`` -> ``constexpr_blockwise_shift_scale``: data int4/int8 ``[N, K]``, scale
  ``[N, K/block]``, offset (asymmetric grids) int4/int8 ``[N, K/block]``; output ``scale * (data - offset)``.
- ``coreml:palette4`` (NF4) -> ``constexpr_lut_to_dense``: indices uint4 ``[N, K]``, one 16-entry table per
  block ``[N, K/block, 16, 1]`` (the NF4 codebook times the block's absmax).

This is the route coremltools' ``optimize.coreml.linear_quantize_weights`` / ``palettize_weights`` take
(a graph pass over the program, then ``_apply_graph_pass`` serializes it again); only the codes come
from edgekit instead of coremltools' own quantizer. Before replacing a const the pass checks that it holds
exactly the dequantized weight in the program's dtype, so a const can never be swapped for another one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from quant.tensor import QuantizedTensor

OPS = {"coreml:int4": "constexpr_blockwise_shift_scale", "coreml:int8": "constexpr_blockwise_shift_scale",
       "coreml:palette4": "constexpr_lut_to_dense"}


def const_name(param: str, precision: str) -> str:
    """The name coremltools' torch frontend gives the const of the wrapper's parameter ``param``."""
    key = "params_" + param.replace(".", "__")
    return key + "_to_fp16" if precision == "fp16" else key


def _values(qt: QuantizedTensor, dtype: np.dtype) -> dict[str, np.ndarray]:
    """The arrays as the constexpr op takes them, in the program's float dtype ``dtype``.

    A table or scale stored in fp16 widens exactly to an fp32 program; an fp32 one in an fp16 program would
    have to be rounded (a re-quantization), so that is refused."""
    from coremltools.converters.mil.mil import types

    def floats(a: np.ndarray) -> np.ndarray:
        if a.dtype == dtype:
            return a
        if a.dtype == np.float16 and dtype == np.float32:
            return a.astype(np.float32)
        raise EdgekitError(f"{qt.grid} scales are {a.dtype} but the Core ML program computes in {dtype}",
                           "quantize with the program's precision (fp16 scales for an fp16 program)")

    if qt.grid == "coreml:palette4":
        return {"indices": qt.arrays["indices"].astype(types.nptype_from_builtin(types.uint4)),
                "lut": floats(qt.arrays["lut"])}
    code = types.nptype_from_builtin(types.int4 if qt.grid == "coreml:int4" else types.int8)
    out = {"data": qt.arrays["data"].astype(code), "scale": floats(qt.arrays["scale"])}
    if "offset" in qt.arrays:
        out["offset"] = qt.arrays["offset"].astype(code)
    return out


def constexpr(qt: QuantizedTensor, name: str, dtype: np.dtype, before_op: Any) -> Any:
    """The constexpr Var holding ``qt`` (built inside a block context, before ``before_op``)."""
    from coremltools.converters.mil import Builder as mb

    if qt.grid not in OPS:
        raise EdgekitError(f"Core ML cannot store a {qt.grid} tensor", "quantize onto a coreml:* grid")
    v = _values(qt, dtype)
    if qt.grid == "coreml:palette4":
        return mb.constexpr_lut_to_dense(indices=v["indices"], lut=v["lut"], name=name, before_op=before_op)
    return mb.constexpr_blockwise_shift_scale(data=v["data"], scale=v["scale"], offset=v.get("offset"), name=name,
                                              before_op=before_op)


def dense(qt: QuantizedTensor, dtype: np.dtype) -> np.ndarray:
    """What the constexpr op decompresses to, computed as its Core ML definition says (in ``dtype``)."""
    v = _values(qt, dtype)
    if qt.grid == "coreml:palette4":
        n, k = v["indices"].shape
        lut = v["lut"].reshape(n, v["lut"].shape[1], 16)
        idx = v["indices"].astype(np.intp).reshape(n, lut.shape[1], -1)
        return np.take_along_axis(lut, idx, axis=-1).reshape(n, k)
    reps = v["data"].shape[1] // v["scale"].shape[1]
    data = v["data"].astype(dtype)
    if "offset" in v:
        data = data - np.repeat(v["offset"].astype(dtype), reps, axis=1)
    return np.repeat(v["scale"], reps, axis=1) * data


def graph_pass(quantized: dict[str, QuantizedTensor], precision: str) -> Any:
    """A coremltools graph pass replacing each quantized weight's const by its constexpr op."""
    from coremltools.converters.mil.mil import Program
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager

    by_const = {const_name(p, precision): (p, qt) for p, qt in quantized.items()}

    class ConstexprWeights(AbstractGraphPass):
        def __init__(self) -> None:
            self.replaced: dict[str, str] = {}  # const name -> constexpr op name

        def apply(self, prog: Program) -> None:
            for f in prog.functions.values():
                self._block(f)
            missing = sorted(p for c, (p, _) in by_const.items() if c not in self.replaced)
            if missing:  # the frontend named or folded a weight differently: never ship it unquantized
                raise EdgekitError(f"the Core ML program has no const for the quantized weight {missing[0]}",
                                   "report this as a bug; convert without quantization meanwhile")

        @block_context_manager
        def _block(self, block: Any) -> None:
            for op in list(block.operations):
                for inner in op.blocks:
                    self._block(inner)
                if op.op_type != "const" or op.name not in by_const:
                    continue
                param, qt = by_const[op.name]
                val = op.outputs[0].val
                want = dense(qt, val.dtype)
                if val.shape != want.shape or not np.array_equal(val, want):
                    raise EdgekitError(f"the Core ML const {op.name} does not hold the dequantized {param}",
                                       "report this as a bug; convert without quantization meanwhile")
                new = constexpr(qt, op.name + "_" + OPS[qt.grid].split("_", 1)[1], val.dtype, before_op=op)
                block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new,
                                                   no_check_var_types=True)
                block.remove_ops([op])
                self.replaced[op.name] = new.op.name

    return ConstexprWeights()


def apply(mlmodel: Any, quantized: dict[str, QuantizedTensor], precision: str) -> Any:
    """``mlmodel`` (an ML program) with ``quantized``'s weights stored as constexpr ops, serialized again by
    coremltools as its own weight compression does."""
    from coremltools.models.utils import _apply_graph_pass

    return _apply_graph_pass(mlmodel, graph_pass(quantized, precision), skip_model_load=True)


def program(package: str | Path) -> Any:
    """The MIL program of a saved ``.mlpackage``, loaded (and every op's types checked) by coremltools' own
    milproto loader, without Core ML (works off macOS)."""
    from converters.coreml.mlprogram import coremltools

    ct = coremltools()  # first: it quiets coremltools' import-time warnings off macOS
    from coremltools.converters.mil.frontend.milproto.load import load

    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    return load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)


def read_back(package: str | Path) -> dict[str, dict[str, Any]]:
    """Checkpoint weight name -> what the saved program stores for it as a constexpr op: ``op`` (type),
    ``inputs`` (name -> numpy array as stored, int4/uint4 widened to int8/uint8), ``dtypes`` (name -> MIL dtype
    string) and ``dense`` (the op's decompressed value, by coremltools' own decompress)."""
    from coremltools.converters.mil.mil import types

    out: dict[str, dict[str, Any]] = {}
    for f in program(package).functions.values():
        for op in f.operations:
            if op.op_type not in OPS.values() or not op.name.startswith("params_"):
                continue
            key = op.name[len("params_"):].rsplit("_" + op.op_type.split("_", 1)[1], 1)[0]
            key = key.removesuffix("_to_fp16").replace("__", ".")
            out[key] = {"op": op.op_type,
                        "inputs": {k: np.asarray(v.val) for k, v in op.inputs.items()},
                        "dtypes": {k: types.builtin_to_string(v.dtype) for k, v in op.inputs.items()},
                        "dense": op.materialized_val_inference(),
                        "consumers": sorted(c.op_type for c in op.outputs[0].child_ops)}
    return out
