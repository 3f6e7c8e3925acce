"""A small ONNX graph writer: nodes by name, initializers streamed to one external-data file.

Every weight goes to ``<model>.onnx.data`` the moment it is produced, while the graph is built
(offsets aligned so onnxruntime can memory-map large tensors), and the graph keeps only a reference
to it. The protobuf therefore stays a few hundred kilobytes whatever the model size, which is how the
2 GiB protobuf limit is avoided, and peak memory is a few tensors, not the model. Two graphs (static
prefill and decode) can share one data file: :meth:`WeightFile.add` returns the same reference for a
name written before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops (MatMulNBits, MatMulBnb4)
OPSET = 17  # LayerNormalization-free, ReduceMean with the axes attribute: what NNAPI / CoreML EPs take
_ALIGN_LARGE = 4096  # page alignment lets onnxruntime mmap big tensors instead of copying them
_ALIGN_SMALL = 64
_LARGE = 1 << 20

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32,
              np.dtype(np.uint8): TensorProto.UINT8}


class WeightFile:
    """Append-only external-data file; :meth:`add` writes a tensor and returns its TensorProto reference.

    Tensors go through the GGUF writer's streaming path (:mod:`converters.streaming`): cast (and
    transposed, for a transposed view) in row chunks on every core, written in order, hashed inline for
    the manifest (:attr:`sha256` once closed), so the data file is never read back."""

    def __init__(self, path: Path) -> None:
        from converters.streaming import Encoder, Sink
        from edgekit.integrity import InlineDigest

        self.path = path
        self.hasher = InlineDigest()
        self.fh = Sink(path.open("wb"), self.hasher)
        self.encoder = Encoder()
        self.offset = 0
        self.refs: dict[str, TensorProto] = {}
        self.sha256: str | None = None

    def add(self, name: str, array: np.ndarray, dtype: Any = None) -> TensorProto:
        """``array`` stored as ``dtype`` (default: its own), cast chunk by chunk as it is written."""
        if name in self.refs:
            return self.refs[name]
        dtype = np.dtype(dtype or array.dtype)
        shape = array.shape or (1,)  # a scalar is stored as one element, as np.ascontiguousarray makes it
        nbytes = array.size * dtype.itemsize
        align = _ALIGN_LARGE if nbytes >= _LARGE else _ALIGN_SMALL
        pad = (-self.offset) % align
        if pad:
            self.fh.write(b"\0" * pad)
            self.offset += pad
        mapped = _whole_mapping(array, dtype)
        if mapped is not None:
            self.fh.copy_range(*mapped)
        elif array.size:
            self.encoder.write_array(self.fh, array, lambda rows: _cast(rows, dtype))
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = NP_TO_ONNX[dtype]
        tensor.dims.extend(shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.offset)),
                           ("length", str(nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += nbytes
        self.refs[name] = tensor
        return tensor

    def close(self) -> None:
        """Close the file; on success (not after an error) :attr:`sha256` holds the data file's hash."""
        try:
            self.fh.close()
        finally:
            self.encoder.close()
        self.sha256 = self.hasher.finish()

    def abort(self) -> None:
        self.hasher.cancel()
        self.fh.close()
        self.encoder.close()


def _cast(rows: np.ndarray, dtype: np.dtype, tile: int | None = None) -> np.ndarray:
    """``rows`` as a C-contiguous ``dtype`` array. A transposed view (MatMul's (in, out) of an (out, in)
    weight) is copied a block of ``tile`` columns at a time, so the strided reads stay in cache; the values
    are the same casts either way. Measured per 4M-element chunk against the whole view at once: a cast
    is fastest in blocks of 256 columns (twice numpy's speed); a plain transpose (fp16 export of an fp16
    checkpoint) in blocks of 16 bytes' width, 3x faster again than 256 columns."""
    if tile is None:
        tile = max(1, 16 // rows.dtype.itemsize) if rows.dtype == dtype else 256
    if rows.ndim != 2 or rows.strides[0] >= rows.strides[1] or rows.shape[1] <= tile:
        return np.ascontiguousarray(rows, dtype=dtype)
    out = np.empty(rows.shape, dtype)
    for j in range(0, rows.shape[1], tile):
        out[:, j:j + tile] = rows[:, j:j + tile]
    return out


def _whole_mapping(array: np.ndarray, dtype: np.dtype) -> tuple[Path, int, int] | None:
    """(file, start, end) when ``array`` is a whole np.memmap of a file's bytes that already are ``dtype``'s
    (not a view of one: a view inherits its parent's offset)."""
    import mmap

    if (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.dtype == dtype
            and array.flags.c_contiguous and array.filename):
        return Path(array.filename), array.offset, array.offset + array.nbytes
    return None


class Graph:
    """Builds one ONNX graph. ``op`` adds a node and returns its output name(s)."""

    def __init__(self, weights: WeightFile) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}

    def _fresh(self, hint: str) -> str:
        n = self._names.get(hint, 0)
        self._names[hint] = n + 1
        return f"{hint}_{n}" if n else hint

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs: Any):
        base = self._fresh(name or f"/{op_type}")
        outs = [f"{base}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs[0] if outputs == 1 else outs

    def weight(self, name: str, array: np.ndarray, dtype: Any = None) -> str:
        """A tensor stored in the external-data file (weights, tables) as ``dtype`` (default: its own)."""
        self.initializers.append(self.weights.add(name, array, dtype))
        return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant stored inline (shapes, axes, scalars); deduplicated."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self._fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"/output/{name}"))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def save(self, path: Path, doc: str, metadata: dict[str, str]) -> None:
        outputs = sorted(self.outputs, key=lambda o: o.name != "logits")  # logits first, as optimum orders them
        graph = helper.make_graph(self.nodes, "edgekit_decoder", self.inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(n.domain == MS_DOMAIN for n in self.nodes):
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets,
                                  producer_name="edgekit", doc_string=doc)
        model.ir_version = 8  # readable by onnxruntime >= 1.10 and its mobile builds
        for k, v in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        # external tensors carry only a reference, so the protobuf stays small for any model size
        onnx.save_model(model, str(path))
