"""Load-time rewrites of an ONNX decoder graph that leave every computed value bit-identical.

Exporters (ours, torch.onnx) name graph outputs through ``Identity`` nodes: ``present.N.key = Identity(Concat)``,
``logits = Identity(Gemm)``. onnxruntime does not alias a graph output to its Identity input, so each one is a full
copy on every call: the whole KV cache once more per decode step (on top of the Concat) and the logits of every
prompt row at prefill. Renaming the producer's output to the graph output removes the copy and changes no value.
The artifact on disk is never touched: the rewritten graph is handed to onnxruntime as bytes, its external weights
still read from the artifact's directory.
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


def session_source(model_file: Path) -> tuple[str | bytes, dict[str, str]]:
    """What to give ``ort.InferenceSession`` for ``model_file``: the rewritten graph as bytes plus the session
    config entry that points its external data at the artifact's directory, or the path itself when there is
    nothing to rewrite."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    if not elide_output_identities(model):
        return str(model_file), {}
    return model.SerializeToString(), {
        "session.model_external_initializers_file_folder_path": str(model_file.resolve().parent)}
