"""The ONNX engine's load-time graph rewrite (graph outputs straight from their producers, no Identity copy) and
its choice of spinning pool threads. Reference: onnxruntime on the graph as written, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtimes.onnx import _runnable_others, spinning
from runtimes.onnxgraph import elide_output_identities, session_source


def decoder_like(tmp_path) -> onnx.ModelProto:
    """A one-layer KV-cache step shaped like our exporter's: present = Identity(Concat(past, new)), the Concat
    also read by attention, logits = Identity(MatMul), one weight in external data; plus an Identity of a graph
    input, which must stay (there is no producer to rename)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Concat", ["past", "x"], ["cat"], axis=1),
        helper.make_node("Identity", ["cat"], ["present"]),
        helper.make_node("ReduceMean", ["cat"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["mm"]),
        helper.make_node("Identity", ["mm"], ["logits"]),
        helper.make_node("Identity", ["x"], ["echo"]),
    ]
    graph = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info("past", TensorProto.FLOAT, [1, "p", 8]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 8])],
        [helper.make_tensor_value_info("present", TensorProto.FLOAT, [1, "t", 8]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("echo", TensorProto.FLOAT, [1, "n", 8])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    return model


def test_rewrite_drops_output_copies_and_keeps_every_value(tmp_path):
    decoder_like(tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert elide_output_identities(model) == 2
    assert [n.op_type for n in model.graph.node] == ["Concat", "ReduceMean", "MatMul", "Identity"]
    assert [o.name for o in model.graph.output] == ["present", "logits", "echo"]

    source, config = session_source(tmp_path / "model.onnx")
    assert isinstance(source, bytes)
    so = ort.SessionOptions()
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    rewritten = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {"past": rng.standard_normal((1, 5, 8)).astype(np.float32),
             "x": rng.standard_normal((1, 1, 8)).astype(np.float32)}
    for got, want in zip(rewritten.run(None, feeds), original.run(None, feeds), strict=True):
        assert got.shape == want.shape and np.array_equal(got, want)


def test_nothing_to_rewrite_loads_the_file_itself(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    assert session_source(tmp_path / "model.onnx") == (str(tmp_path / "model.onnx"), {})


@pytest.mark.parametrize(("policy", "threads", "cpus", "others", "spin"), [
    ("ACTIVE", 2, 2, 9.0, True),     # the user's word wins either way
    ("passive", 2, 2, 0.0, False),
    ("", 2, 2, 0.0, True),           # an idle machine: every pool thread has a CPU of its own
    ("", 2, 2, 1.0, False),          # one CPU taken by someone else: sleeping threads
    ("", 2, 8, 3.0, True),
    ("", 4, 4, 0.5, False),
])
def test_spinning_only_with_a_free_cpu_per_thread(monkeypatch, policy, threads, cpus, others, spin):
    monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    assert spinning(threads, cpus=cpus, others=others) is spin


def test_other_runnable_threads_are_counted_without_this_one():
    others = _runnable_others()
    assert 0 <= others < 100_000
