"""Load-time rewrites of an ONNX decoder graph that leave every computed value bit-identical (or, for the one
that lets onnxruntime fuse RMSNorm, identical up to the fused kernel's rounding).

Exporters (ours, torch.onnx) name graph outputs through ``Identity`` nodes: ``present.N.key = Identity(Concat)``,
``logits = Identity(Gemm)``. onnxruntime does not alias a graph output to its Identity input, so each one is a full
copy on every call: the whole KV cache once more per decode step (on top of the Concat) and the logits of every
prompt row at prefill. Renaming the producer's output to the graph output removes the copy and changes no value.
The artifact on disk is never touched: the rewritten graph is handed to onnxruntime as bytes, its external weights
still read from the artifact's directory.

Our exporter squares RMSNorm's input as ``Mul(x, x)`` (CoreML MLProgram and NNAPI map it directly);
onnxruntime's SimplifiedLayerNormFusion only matches ``Pow(x, 2)``, so without help each norm stays six ops
(Mul, ReduceMean, Add, Sqrt, Div, Mul), 61 norms = 366 kernel launches and thread barriers per decode step.
Spelling the square as ``Pow(x, 2)`` in memory lets onnxruntime fuse each into one SimplifiedLayerNormalization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def elide_output_identities(model: Any) -> int:
    """Drop ``Identity`` nodes whose output is a graph output and whose input is another node's private output;
    return how many were dropped. Hand-written: onnxruntime's optimizer keeps them (graph outputs are fixed names)
    and onnx has no pass for it."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    produced = {name for node in graph.node for name in node.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Identity" and node.input else None
        if (source is not None and node.output[0] in outputs and source in produced and source not in outputs
                and source not in rename):
            rename[source] = node.output[0]
        else:
            kept.append(node)
    if not rename:
        return 0
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = rename[name]
    kept_info = [v for v in graph.value_info if v.name not in rename]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(rename)


def square_as_pow(model: Any) -> int:
    """Rewrite ``Mul(x, x)`` read only by ``ReduceMean`` nodes as ``Pow(x, 2)``; return how many. Hand-written:
    onnxruntime's fusion (and onnxruntime.transformers' FusionSimplifiedLayerNormalization, whose ``Mul`` branch
    fails in 1.32) match only ``Pow``. Pow(x, 2) is x * x in onnxruntime, so an unfused graph is unchanged too."""
    graph = model.graph
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    squares = [node for node in graph.node
               if node.op_type == "Mul" and not node.domain and len(node.input) == 2 and node.input[0] == node.input[1]
               and readers.get(node.output[0]) and all(r.op_type == "ReduceMean" for r in readers[node.output[0]])]
    if not squares:
        return 0
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph  # ~50 ms for 2000 nodes; only types are used
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    exponents: dict[int, str] = {}
    for node in squares:
        elem = types.get(node.input[0], 0)
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue  # the exponent takes x's type, which must be known
        if elem not in exponents:
            exponents[elem] = f"edgekit.square_exponent.{elem}"
            graph.initializer.append(onnx.helper.make_tensor(exponents[elem], elem, [], [2.0]))
        node.op_type = "Pow"
        node.input[1] = exponents[elem]
    return sum(1 for node in squares if node.op_type == "Pow")


def session_source(model_file: Path, fuse_norms: bool = False) -> tuple[str | bytes, dict[str, str]]:
    """What to give ``ort.InferenceSession`` for ``model_file``: the rewritten graph as bytes plus the session
    config entry that points its external data at the artifact's directory, or the path itself when there is
    nothing to rewrite. ``fuse_norms``: also :func:`square_as_pow` (for the CPU provider; an NNAPI / Core ML
    session gets the graph its export was checked for)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    if not elide_output_identities(model) + (square_as_pow(model) if fuse_norms else 0):
        return str(model_file), {}
    return model.SerializeToString(), {
        "session.model_external_initializers_file_folder_path": str(model_file.resolve().parent)}
