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

KV_CAPACITY = "kv_capacity"  # the cache dim's name once past and present are one buffer (attention_in_place)


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


def session_source(model_file: Path, fuse_norms: bool = False,
                   in_place_kv: bool = False) -> tuple[str | bytes, dict[str, str]]:
    """What to give ``ort.InferenceSession`` for ``model_file``: the rewritten graph as bytes plus the session
    config entry that points its external data at the artifact's directory, or the path itself when there is
    nothing to rewrite. ``fuse_norms``: also :func:`square_as_pow`; ``in_place_kv``: also
    :func:`attention_in_place` (both for the CPU provider; an NNAPI / Core ML session gets the graph its export was
    checked for). Whether the cache is in place shows in the present outputs' dim 2, named :data:`KV_CAPACITY`."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    rewrites = elide_output_identities(model) + (square_as_pow(model) if fuse_norms else 0)
    if not rewrites + (attention_in_place(model) if in_place_kv else 0):
        return str(model_file), {}
    return model.SerializeToString(), {
        "session.model_external_initializers_file_folder_path": str(model_file.resolve().parent)}


def _const_ints(model: Any, name: str) -> list[int] | None:
    from onnx import numpy_helper

    init = next((t for t in model.graph.initializer if t.name == name), None)
    return None if init is None else [int(x) for x in numpy_helper.to_array(init).reshape(-1)]


def _const_float(model: Any, name: str) -> float | None:
    from onnx import numpy_helper

    init = next((t for t in model.graph.initializer if t.name == name), None)
    if init is None or init.dims not in ([], [1]) and list(init.dims) != [1]:
        return None
    return float(numpy_helper.to_array(init).reshape(-1)[0])


def attention_in_place(model: Any) -> int:
    """Rewrite every layer's attention (``present = Concat(past, new)``, scores, softmax, context) as onnxruntime's
    com.microsoft ``GroupQueryAttention`` whose past and present are one buffer: the engine binds the same
    preallocated (batch, kv_heads, capacity, head_dim) OrtValue as input and output, and the kernel writes the step's
    K/V at its position and attends over the first ``attention_mask`` columns only. The Concat copied the whole cache
    every step (it is the graph's contract for a plain loop); here a step moves one token's K/V. All or nothing:
    returns the number of layers rewritten, 0 (graph untouched) unless every layer is the exporter's plain causal
    attention (a sliding window, a soft cap or a padded mask keeps the graph as it is). Hand-written: onnxruntime's
    optimizer has no fusion into GroupQueryAttention, and onnxruntime.transformers' fusions target other exports."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = list(graph.node)
    producer = {name: node for node in nodes for name in node.output}
    readers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    pasts = sorted({i.name for i in graph.input if i.name.startswith("past_key_values.")})
    layers = sorted({int(n.split(".")[1]) for n in pasts})
    if not layers or "attention_mask" not in {i.name for i in graph.input}:
        return 0

    def only_reader(name: str, op: str) -> Any:
        rs = readers.get(name, [])
        return rs[0] if len(rs) == 1 and rs[0].op_type == op and not rs[0].domain and name not in outputs else None

    plans = []
    for i in layers:
        cats = []
        for kv in ("key", "value"):
            rs = readers.get(f"past_key_values.{i}.{kv}", [])
            if len(rs) != 1 or rs[0].op_type != "Concat" or list(rs[0].input[:1]) != [f"past_key_values.{i}.{kv}"] \
                    or len(rs[0].input) != 2:
                return 0
            cats.append(rs[0])
        ck, cv = cats
        if ck.output[0] != f"present.{i}.key" or cv.output[0] != f"present.{i}.value":
            return 0  # present must be the Concat itself (elide_output_identities runs first)
        k_readers, v_readers = readers.get(ck.output[0], []), readers.get(cv.output[0], [])
        if len(k_readers) != 1 or k_readers[0].op_type != "Transpose" or len(v_readers) != 1:
            return 0
        kt = k_readers[0]
        if list(next(a.ints for a in kt.attribute if a.name == "perm")) != [0, 1, 3, 2]:
            return 0
        scores = only_reader(kt.output[0], "MatMul")
        if scores is None or scores.input[1] != kt.output[0]:
            return 0
        chain, x = [], scores.output[0]
        want = ["Cast?", "Reshape", "Mul", "Add", "Softmax", "Cast?", "Reshape", "MatMul", "Reshape", "Transpose",
                "Reshape"]
        for op in want:
            rs = readers.get(x, [])
            if len(rs) != 1 or x in outputs:
                return 0
            node = rs[0]
            if op.endswith("?"):
                if node.op_type != op[:-1]:
                    continue
            elif node.op_type != op or node.domain:
                return 0
            chain.append(node)
            x = node.output[0]
        by_op = [n.op_type for n in chain]
        mm_pv = chain[by_op.index("MatMul")]
        if mm_pv is not v_readers[0] or mm_pv.input[1] != cv.output[0]:
            return 0
        mul, add = chain[by_op.index("Mul")], chain[by_op.index("Add")]
        scale = _const_float(model, mul.input[1])
        mask = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        where = producer.get(mask)
        cond = producer.get(where.input[0]) if where is not None and where.op_type == "Where" else None
        causal = producer.get(cond.input[0]) if cond is not None and cond.op_type == "And" else None
        if scale is None or causal is None or causal.op_type != "LessOrEqual":
            return 0  # not the plain causal mask (a sliding window adds a Greater under the And)
        q_group = producer.get(scores.input[0])
        shape = _const_ints(model, q_group.input[1]) if q_group is not None and q_group.op_type == "Reshape" else None
        heads_shape = _const_ints(model, chain[by_op.index("Reshape")].input[1])  # [0, heads, -1, 0]
        out_shape = _const_ints(model, chain[-3].input[1])  # [0, heads, -1, head_dim]
        if shape is None or heads_shape is None or out_shape is None or len(shape) != 4:
            return 0
        kv_heads, head_dim, heads = shape[1], shape[3], heads_shape[1]
        if out_shape != [0, heads, -1, head_dim] or heads % kv_heads:
            return 0
        plans.append((i, ck, cv, kt, scores, chain, q_group, scale, heads, kv_heads, head_dim))

    dead = set()
    new_nodes: list[Any] = []
    consts: dict[int, str] = {}

    def width(n: int) -> str:
        if n not in consts:
            consts[n] = f"edgekit.gqa.shape_{n}"
            graph.initializer.append(helper.make_tensor(consts[n], TensorProto.INT64, [3], [0, 0, n]))
        return consts[n]

    seqlens, total = "edgekit.gqa.seqlens_k", "edgekit.gqa.total_sequence_length"
    axis1 = "edgekit.gqa.axis1"
    graph.initializer.append(helper.make_tensor(axis1, TensorProto.INT64, [1], [1]))
    graph.initializer.append(helper.make_tensor("edgekit.gqa.one", TensorProto.INT64, [], [1]))
    new_nodes += [
        helper.make_node("ReduceSum", ["attention_mask", axis1], ["edgekit.gqa.count"], keepdims=0),
        helper.make_node("Sub", ["edgekit.gqa.count", "edgekit.gqa.one"], ["edgekit.gqa.last"]),
        helper.make_node("Cast", ["edgekit.gqa.last"], [seqlens], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["edgekit.gqa.mask_shape"], start=1, end=2),
        helper.make_node("Cast", ["edgekit.gqa.mask_shape"], ["edgekit.gqa.total_1d"], to=TensorProto.INT32),
        helper.make_node("Squeeze", ["edgekit.gqa.total_1d"], [total]),
    ]
    for i, ck, cv, kt, scores, chain, q_group, scale, heads, kv_heads, head_dim in plans:
        dead.update(id(n) for n in (ck, cv, kt, scores, *chain))
        p = f"edgekit.gqa.{i}."
        flat = []
        for tag, src, n in (("q", q_group.input[0], heads), ("k", ck.input[1], kv_heads), ("v", cv.input[1], kv_heads)):
            new_nodes.append(helper.make_node("Transpose", [src], [p + tag + "_bsnd"], perm=[0, 2, 1, 3]))
            new_nodes.append(helper.make_node("Reshape", [p + tag + "_bsnd", width(n * head_dim)], [p + tag]))
            flat.append(p + tag)
        new_nodes.append(helper.make_node(
            "GroupQueryAttention", [*flat, ck.input[0], cv.input[0], seqlens, total],
            [chain[-1].output[0], ck.output[0], cv.output[0]], name=p + "GroupQueryAttention", domain="com.microsoft",
            num_heads=heads, kv_num_heads=kv_heads, scale=scale))
    kept = [n for n in nodes if id(n) not in dead]
    # the mask subgraph and q's grouping Reshape now feed nothing: drop whatever reaches no graph output
    order = kept + new_nodes
    needed = set(outputs)
    live = []
    for node in reversed(order):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    live.reverse()
    del graph.node[:]
    graph.node.extend(live)
    names = {n for node in live for n in (*node.input, *node.output)}
    keep_info = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)
    # the cache dimension is now the buffer's capacity, not the sequence so far
    for value in (*graph.input, *graph.output):
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.shape.dim[2].dim_param = KV_CAPACITY
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(plans)
