"""GPTQ: never worse than RTN on its own calibration inputs, exact codes in GGUF and ONNX, every linear grid,
clear errors for too little calibration data and a Hessian no damping makes positive definite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quant import grids

ROOT = Path(__file__).resolve().parent.parent
CALIB = dict(samples=8, seqlen=128)  # 1024 tokens >= tiny's widest input (768)


def _problem(seed: int = 0, n: int = 1024, cols: int = 256, rows: int = 64):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) * torch.rand(cols, generator=g) * 3
    x[:, :3] *= 10  # a few outlier channels, as LLM activations have
    w = torch.randn(rows, cols, generator=g) * 0.05
    return w.numpy(), (2.0 / n) * x.t() @ x, n, x


@pytest.mark.parametrize("grid,params", [
    ("gguf:q4_0", {}), ("gguf:q4_1", {}), ("gguf:q5_0", {}), ("gguf:q5_1", {}), ("gguf:q8_0", {}),
    ("onnx:int4", {"block_size": 128}), ("onnx:int4", {"block_size": 32, "symmetric": False}),
    ("onnx:int8", {"block_size": 64}), ("coreml:int4", {"block_size": 32}),
    ("coreml:int8", {"block_size": 32, "symmetric": False}),
])
@pytest.mark.parametrize("act_order", [False, True])
def test_every_grid_holds_gptqs_codes(grid, params, act_order):
    from quant import gptq

    w, h, n, x = _problem()
    g = grids.get(grid, **params)
    r = gptq.gptq(w, h, n, g, act_order=act_order)
    # the packed arrays dequantize (as the runtime does) to exactly the weight GPTQ's error feedback used
    np.testing.assert_array_equal(g.dequantize(g.pack(r.codes, r.params, w.shape)), r.dequantized)
    direct = float((((r.dequantized - w) @ x.numpy().T) ** 2).sum())
    assert r.err_gptq == pytest.approx(direct, rel=1e-3)
    assert r.err_gptq < r.err_rtn


@pytest.fixture(scope="module")
def tiny_gptq(tiny_dir, tmp_path_factory):
    """One GPTQ pass over edgekit-tiny -> Q4_0 GGUF through the public API, keeping GPTQ's own codes."""
    out = tmp_path_factory.mktemp("gptq") / "tiny-gptq-q4_0.gguf"
    summary, cb = _run_keeping_codes(str(tiny_dir), "gguf", out, qtype="q4_0", **CALIB)
    return out, summary, cb


def _run_keeping_codes(model: str, fmt: str, out, **options):
    """``quant.pipeline.run(model, fmt, "gptq", out, ...)`` through the public API, and the codebook GPTQ itself
    returned (its first call; gptq.run wrapped for the pipeline's call): (the pipeline's summary, the codebook)."""
    from quant import gptq, pipeline

    seen = {}
    real = gptq.run

    def spy(*a, **k):
        result = real(*a, **k)
        seen.setdefault("r", result)
        return result

    gptq.run = spy
    try:
        summary = pipeline.run(model, fmt, "gptq", str(out), progress=False, **options)
    finally:
        gptq.run = real
    return summary, seen["r"][0]


def test_gptq_beats_rtn_on_every_linear_of_tiny(tiny_gptq):
    _, summary, cb = tiny_gptq
    assert len(cb.errors) == 4 * 7
    for e in cb.errors:
        assert e["tokens"] == 1024 and e["err_gptq"] <= e["err_rtn"], e


def test_gguf_holds_gptqs_codes_and_manifest(tiny_gptq):
    import gguf

    out, summary, cb = tiny_gptq
    g = grids.get("gguf:q4_0")
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for hf_name, (codes, params) in cb.codes.items():
        layer, module = hf_name.split(".", 3)[2], hf_name.split(".", 3)[3]
        stored = np.asarray(tensors[f"blk.{layer}.{names[module]}.weight"].data)
        ours = g.pack(codes, params, (codes.shape[0], codes.shape[1] * 32)).arrays["data"]
        # llama.cpp's q/k rows are in its rope order: the same rows (codes and scales), permuted
        assert sorted(map(bytes, stored)) == sorted(map(bytes, ours)), hf_name
        if module not in ("self_attn.q_proj", "self_attn.k_proj"):
            assert stored.tobytes() == ours.tobytes(), hf_name
    manifest = json.loads(out.with_name(out.name + ".edgekit.json").read_text())["quant"]
    assert manifest["method"] == "gptq" and manifest["grid"] == "gguf:q4_0" and manifest["damp"] == 0.01
    assert manifest["act_order"] is False and len(manifest["calibration"]["sha256"]) == 64
    assert manifest["calibration"]["tokens"] == 1024


def test_onnx_holds_gptqs_codes(tiny_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "o"
    _, cb = _run_keeping_codes(str(tiny_dir), "onnx", out, qtype="int4", group_size=128, act_order=True, **CALIB)
    m = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 4 * 7
    g = grids.get("onnx:int4", block_size=128)
    v = next(n for n in nodes if n.input[1] == "layers.1.attn.v.qweight")
    codes, params = cb.codes["model.layers.1.self_attn.v_proj"]
    ours = g.pack(codes, params, (codes.shape[0], codes.shape[1] * 128))
    np.testing.assert_array_equal(inits[v.input[1]].reshape(-1), ours.arrays["B"].reshape(-1))
    np.testing.assert_array_equal(inits[v.input[2]].reshape(-1), ours.arrays["scales"].reshape(-1))
    assert json.loads((out / "edgekit.json").read_text())["quant"]["act_order"] is True


def test_non_pd_hessian_retries_more_damping_then_fails_clearly():
    import torch

    from edgekit.errors import EdgekitError
    from quant import gptq

    w, h, n, _ = _problem(cols=64)
    g = grids.get("gguf:q4_0")
    # an indefinite H that 10x the damping repairs: the retry is taken and recorded
    bent = h - 0.05 * float(torch.diag(h).mean()) * torch.eye(64)
    assert gptq.gptq(w, bent, n, g, damp=0.01).damp == pytest.approx(0.1)
    with pytest.raises(EdgekitError, match="not positive definite"):
        gptq.gptq(w, -torch.eye(64), n, g)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_bad_inputs_are_one_line(tiny_dir, tmp_path):
    out = tmp_path / "x.gguf"
    p = _cli("quantize", str(tiny_dir), "--to", "gguf", "--method", "gptq", "--samples", "2", "--seqlen", "64",
             "-o", str(out))
    assert p.returncode == 2 and "needs at least 768 calibration tokens" in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and not out.exists()
    p = _cli("quantize", str(tiny_dir), "--to", "gguf", "--method", "rtn", "--act-order", "-o", str(out))
    assert p.returncode == 2 and "--method gptq only" in p.stderr and not out.exists()
    import shutil

    other = tmp_path / "falcon"
    shutil.copytree(tiny_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    p = _cli("quantize", str(other), "--to", "gguf", "--method", "gptq", "-o", str(out))
    assert p.returncode == 2 and "model_type 'falcon' is not supported" in p.stderr and not out.exists()


def test_moe_experts_get_gptq_codes_from_their_routed_tokens(random_model, tmp_path):
    import gguf

    out = tmp_path / "mx.gguf"
    _, cb = _run_keeping_codes(str(random_model("mixtral")), "gguf", out, qtype="q8_0", samples=8, seqlen=32)
    experts = [e for e in cb.errors if e["role"] == "expert_gate" and e["layer"] == 0]
    assert len(experts) == 4 and sum(e["tokens"] for e in experts) == 8 * 32 * 2  # top-2 routing
    assert all(e["err_gptq"] <= e["err_rtn"] for e in cb.errors if e["tokens"])
    g = grids.get("gguf:q8_0")
    stacked = np.asarray({t.name: t for t in gguf.GGUFReader(str(out)).tensors}["blk.0.ffn_gate_exps.weight"].data)
    ours = []
    for e in range(4):
        codes, params = cb.codes[f"model.layers.0.block_sparse_moe.experts.{e}.w1"]
        ours.extend(g.pack(codes, params, (codes.shape[0], codes.shape[1] * 32)).arrays["data"])
    assert sorted(map(bytes, stacked.reshape(-1, stacked.shape[-1]))) == sorted(map(bytes, ours))


def test_coreml_holds_gptqs_codes(tiny_dir, tmp_path):
    """GPTQ -> Core ML int4: the program's constexpr_blockwise_shift_scale ops hold GPTQ's codes and scales, and
    decompress to GPTQ's own dequantized weight in the program's fp16."""
    from converters.coreml import compressed
    out = tmp_path / "c"
    _, cb = _run_keeping_codes(str(tiny_dir), "coreml", out, qtype="int4", group_size=32, **CALIB)
    stored = compressed.read_back(out / "model.mlpackage")
    assert sorted(stored) == sorted(f"{k}.weight" for k in cb.codes) and len(cb.codes) == 4 * 7
    g = grids.get("coreml:int4", block_size=32)
    for hf_name, (codes, params) in cb.codes.items():
        got = stored[f"{hf_name}.weight"]
        ours = g.pack(codes, params, (codes.shape[0], codes.shape[1] * 32))
        assert got["op"] == "constexpr_blockwise_shift_scale"
        np.testing.assert_array_equal(got["inputs"]["data"], ours.arrays["data"], err_msg=hf_name)
        np.testing.assert_array_equal(got["inputs"]["scale"], ours.arrays["scale"], err_msg=hf_name)
        np.testing.assert_array_equal(got["dense"], g.dequantize(ours).astype(np.float16), err_msg=hf_name)
    assert json.loads((out / "edgekit.json").read_text())["quant"]["method"] == "gptq"
