"""The ONNX engine's load-time graph rewrites (graph outputs straight from their producers, no Identity copy;
RMSNorm's square spelled so onnxruntime fuses the norm) and its choice of spinning pool threads. References:
onnxruntime on the graph as written (bit for bit, or to the fused norm's rounding) and transformers' logits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtimes
from helpers import converted
from runtimes.onnx import _runnable_others, spinning
from runtimes.onnxgraph import attention_in_place, elide_output_identities, session_source, square_as_pow


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


def _ort_session(source, config: dict, optimized=None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    if optimized is not None:  # onnxruntime writes the graph it runs, after its own fusions
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_rms_norms_fuse_and_logits_stay_those_of_the_graph_and_transformers(random_model, tmp_path, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    src = random_model("llama")
    out = converted(src, tmp_path / "onnx", "--to", "onnx", "--dtype", dtype)
    layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert square_as_pow(model) == 2 * layers + 1  # two norms per layer and the final one
    assert not any(n.op_type == "Mul" and n.input[0] == n.input[1] for n in model.graph.node)

    plain = session_source(out / "model.onnx")[0]  # for accelerator providers: only the Identity copies go
    assert "Pow" not in {n.op_type for n in onnx.load_from_string(plain).graph.node}
    source, config = session_source(out / "model.onnx", fuse_norms=True)
    rewritten = _ort_session(source, config, optimized=tmp_path / "optimized.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node]
    assert ops.count("SimplifiedLayerNormalization") == 2 * layers + 1 and "ReduceMean" not in ops
    original = _ort_session(str(out / "model.onnx"), {})
    kv = np.float16 if dtype == "fp16" else np.float32
    ids = np.random.default_rng(3).integers(0, 500, 24)
    feeds = {"input_ids": ids[None], "attention_mask": np.ones((1, 24), np.int64), "position_ids": np.arange(24)[None],
             **{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), kv) for i in original.get_inputs()
                if i.name.startswith("past_key_values.")}}
    want = original.run(None, feeds)
    got = dict(zip([o.name for o in rewritten.get_outputs()], rewritten.run(None, feeds), strict=True))
    tol = 1e-5 if dtype == "fp32" else 2e-3  # fp16: one half-precision ulp where a fused norm rounds differently
    for name, ref in zip([o.name for o in original.get_outputs()], want, strict=True):
        ref32 = ref.astype(np.float32)
        assert got[name].shape == ref.shape
        assert np.abs(got[name].astype(np.float32) - ref32).max() <= tol * np.abs(ref32).max(), name
    assert np.array_equal(got["logits"].argmax(-1), want[0].argmax(-1))

    # the engine (which loads through session_source) against transformers, step by step through the KV cache
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()(torch.tensor(ids[None])).logits[0]
    engine = runtimes.load(out, threads=2)
    rows = [engine.prefill(ids[:16].tolist())] + [engine.decode(int(t)) for t in ids[16:]]
    ref = hf[15:].numpy()
    assert np.abs(np.stack(rows) - ref).max() <= (1e-4 if dtype == "fp32" else 2e-2) * np.abs(ref).max()
    assert np.array_equal(np.stack(rows).argmax(-1), ref.argmax(-1))


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


@pytest.mark.parametrize(("autogroup", "want"), [("0", 2.0), ("1", 3.0)])
def test_niced_background_threads_do_not_stop_spinning_without_autogroup(monkeypatch, tmp_path, autogroup, want):
    import os
    import threading

    me, nice = threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0)

    def task(pid: int, tid: int, state: str, niceness: int) -> None:
        d = tmp_path / str(pid) / "task" / str(tid)
        d.mkdir(parents=True)
        # fields after the command: state ppid ... priority nice (the 17th after the state); a ")" in the name
        rest = [state] + ["0"] * 15 + [str(niceness)] + ["0"] * 30
        (d / "stat").write_text(f"{tid} (odd) name) " + " ".join(rest) + "\n")

    task(os.getpid(), me, "R", nice)             # this thread: never counted
    task(900001, 900001, "R", nice)              # a peer at our priority: counted
    task(900002, 900003, "R", min(nice - 1, 0))  # a higher-priority thread: counted
    task(900004, 900004, "R", 19 if nice < 19 else nice + 1)  # background at nice 19: counted only with autogroup
    task(900005, 900005, "S", nice)              # sleeping: never
    (tmp_path / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "sched_autogroup_enabled").write_text(autogroup + "\n")
    assert _runnable_others(tmp_path) == want
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert spinning(2, cpus=4, others=_runnable_others(tmp_path)) is (want <= 2)


def test_other_runnable_threads_are_counted_without_this_one():
    others = _runnable_others()
    assert 0 <= others < 100_000


@pytest.mark.parametrize(("arch", "dtype"), [("llama", "fp32"), ("llama", "fp16"), ("qwen3", "fp32"), ("gpt2", "fp32")])
def test_attention_in_place_keeps_the_logits_of_transformers_through_growth_and_truncation(random_model, tmp_path,
                                                                                            arch, dtype):
    """The CPU engine runs GroupQueryAttention over one K/V buffer per tensor (runtimes/onnxgraph.py
    attention_in_place): the graph has no Concat of the cache left, the buffer grows (min_slots lowered so a short
    prompt crosses two growths), and a truncation (what speculative decoding does on a rejected guess) followed by
    other tokens gives transformers' logits for the new sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    src = random_model(arch)
    out = converted(src, tmp_path / "onnx", "--to", "onnx", "--dtype", dtype)
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    layers = sum(1 for i in model.graph.input if i.name.endswith(".key"))
    elide_output_identities(model)
    assert attention_in_place(model) == layers
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == layers and "Concat" not in {
        n.op_type for n in model.graph.node if any(i.startswith("past_key_values.") for i in n.input)}

    ids = np.random.default_rng(5).integers(0, 500, 30)
    other = np.random.default_rng(6).integers(0, 500, 6)
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        want = hf(torch.tensor(ids[None])).logits[0].numpy()
        want_other = hf(torch.tensor(np.concatenate([ids[:20], other])[None])).logits[0, 20:].numpy()
    engine = runtimes.load(out, threads=2)
    assert engine.in_place
    engine.min_slots = 8
    rows = [engine.prefill(ids[:6].tolist())] + [engine.decode(int(t)) for t in ids[6:24]]
    rows.append(engine.score(ids[24:].tolist()))
    assert engine._kv[0].shape[2] == 32  # 8 -> 16 -> 32 slots
    got = np.concatenate([np.stack(rows[:-1]), rows[-1]])
    ref = want[5:]
    tol = 1e-4 if dtype == "fp32" else 2e-2
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))
    engine.truncate(20)
    got_other = engine.score(other.tolist())
    assert np.abs(got_other - want_other).max() <= tol * np.abs(want_other).max()
    assert np.array_equal(got_other.argmax(-1), want_other.argmax(-1))


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "mistral"])
def test_attention_in_place_leaves_soft_caps_and_sliding_windows_to_the_graph(random_model, tmp_path, arch):
    """All or nothing: GroupQueryAttention is asked only for the plain causal attention it was checked against."""
    out = converted(random_model(arch), tmp_path / "onnx", "--to", "onnx")
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    elide_output_identities(model)
    before = model.SerializeToString()
    got = attention_in_place(model)
    sliding = any(n.op_type == "Greater" for n in model.graph.node)
    capped = any(n.op_type == "Tanh" for n in model.graph.node)
    assert got == (0 if sliding or capped else sum(1 for i in model.graph.input if i.name.endswith(".key")))
    if not got:
        assert model.SerializeToString() == before
        assert not runtimes.load(out, threads=1).in_place
