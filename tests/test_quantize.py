"""`edgekit quantize`, `imatrix` and `eval` end to end through the CLI, on edgekit-tiny: codes read back from
each artifact equal the quantizer's, k-quants with edgekit's importance matrix lose less than without, and
every bad input fails before any work with one line and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors import safe_open

import quant
from helpers import assert_one_line_error
from quant import calibration, grids

ROOT = Path(__file__).resolve().parent.parent
EVAL = ["--ctx", "128", "--chunks", "6"]
CALIB = ["--samples", "6", "--seqlen", "256"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)


def ok(*args: str) -> dict:
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def hf(tiny_dir: Path, name: str) -> np.ndarray:
    with safe_open(str(tiny_dir / "model.safetensors"), "np") as f:
        return f.get_tensor(name).astype(np.float32)


def test_default_calibration_text():
    text, name = calibration.load_text()
    size = len(text.encode())
    assert 50_000 < size < 100_000 and name == "edgekit-default-calibration"
    held_out = (ROOT / "edgekit" / "data" / "tiny" / "persuasion.txt").read_text()
    # no sentence of held-out Persuasion (its distinctive names) is in the calibration text
    assert "Sir Walter Elliot" in held_out and "Sir Walter" not in text and "Kellynch" not in text
    assert "def binary_search" in text and "SELECT" in text and "Le matin" in text and "清晨" in text


def test_calibration_files_and_samples(tmp_path):
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"text": "one two"}) + "\n" + json.dumps({"text": "three"}) + "\n")
    assert calibration.load_text(jl)[0] == "one two\n\nthree"
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    a = calibration.samples(enc, "abcdefghij" * 10, n=3, seqlen=8, bos=1)
    assert a.shape == (3, 8) and np.all(a[:, 0] == 1) and np.array_equal(a, calibration.samples(
        enc, "abcdefghij" * 10, n=3, seqlen=8, bos=1))
    assert list(a[1, 1:]) == enc("abcdefghij" * 10)[8:15]  # windows follow each other, BOS over the first


@pytest.fixture(scope="module")
def q4_1(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "tiny-q4_1.gguf"
    ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "rtn", "--type", "q4_1", "-o", str(out))
    return out


def test_gguf_rtn_codes_are_stored_exactly(q4_1, tiny_dir):
    r = gguf.GGUFReader(str(q4_1))
    t = {x.name: x for x in r.tensors}
    v = t["blk.2.attn_v.weight"]
    assert v.tensor_type == gguf.GGMLQuantizationType.Q4_1
    ours = quant.quantize("rtn", hf(tiny_dir, "model.layers.2.self_attn.v_proj.weight"), "gguf:q4_1")
    assert np.asarray(v.data).tobytes() == ours.arrays["data"].tobytes()
    np.testing.assert_array_equal(gguf.quants.dequantize(np.asarray(v.data), v.tensor_type), grids.dequantize(ours))
    # tied embeddings are the output head: kept in 16 bits by default, as llama.cpp keeps the head precise
    assert t["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    manifest = json.loads(q4_1.with_name(q4_1.name + ".edgekit.json").read_text())
    assert manifest["quant"]["grid"] == "gguf:q4_1" and manifest["quant"]["method"] == "rtn"


def _initializers(directory: Path) -> tuple[dict, list]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(directory / "model.onnx"))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}, list(m.graph.node)


@pytest.mark.parametrize("method,extra,grid,params", [
    ("rtn", ["--type", "int4", "--asym", "--group-size", "32"], "onnx:int4", {"block_size": 32, "symmetric": False}),
    ("nf4", [], "onnx:nf4", {"block_size": 64}),
])
def test_onnx_codes_are_stored_exactly_and_run(tiny_dir, tmp_path, method, extra, grid, params):
    out = tmp_path / "o"
    ok("quantize", str(tiny_dir), "--to", "onnx", "--method", method, *extra, "-o", str(out))
    inits, nodes = _initializers(out)
    op = "MatMulNBits" if grid == "onnx:int4" else "MatMulBnb4"
    quantized = [n for n in nodes if n.op_type == op]
    assert len(quantized) == 4 * 7  # every linear layer of the 4 blocks; the head stays a float MatMul
    w = hf(tiny_dir, "model.layers.1.self_attn.v_proj.weight")
    v = next(n for n in quantized if n.input[1] == "layers.1.attn.v.qweight")
    ours = quant.quantize(method, w, grid, **params)
    np.testing.assert_array_equal(inits[v.input[1]].reshape(-1), ours.arrays["B"].reshape(-1))
    second = "scales" if grid == "onnx:int4" else "absmax"
    np.testing.assert_array_equal(inits[v.input[2]].reshape(-1), ours.arrays[second].reshape(-1))
    if grid == "onnx:int4":
        np.testing.assert_array_equal(inits[v.input[3]].reshape(-1), ours.arrays["zero_points"].reshape(-1))
    # onnxruntime runs the contrib ops: the artifact is close to the original
    r = ok("eval", str(out), "--reference", str(tiny_dir), *EVAL)
    assert r["kld_mean"] < 0.01 and r["top1_agreement"] > 0.9 and abs(r["delta_ppl"]) < 0.05 * r["reference_ppl"]
    assert json.loads((out / "edgekit.json").read_text())["eval"]["kld_mean"] == r["kld_mean"]


def test_kquant_with_edgekit_imatrix_loses_less(tiny_dir, tmp_path):
    with_im, without = tmp_path / "im.gguf", tmp_path / "plain.gguf"
    a = ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "q3_k_s", *CALIB, "-o", str(with_im))
    ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "q3_k_s", "--no-imatrix", "-o", str(without))
    assert a["quant"]["imatrix"]["computed"] and a["bits_per_weight"] < 5
    e_im = ok("eval", str(with_im), "--reference", str(tiny_dir), *EVAL)
    e_plain = ok("eval", str(without), "--reference", str(tiny_dir), *EVAL)
    assert e_im["kld_mean"] < e_plain["kld_mean"], (e_im, e_plain)
    md = {f.name: f.contents() for f in gguf.GGUFReader(str(with_im)).fields.values() if f.name.startswith("edgekit.")}
    assert md["edgekit.quant.method"] == "q3_k_s" and md["edgekit.quant.calibration"] == "edgekit-default-calibration"


def test_bad_inputs_fail_before_any_work(tiny_dir, smollm2_dir, q4_1, tmp_path):
    out = tmp_path / "out.gguf"
    cases = [
        (["quantize", str(tiny_dir), "--to", "gguf", "--method", "nf4", "-o", str(out)], ["iq4_nl"]),
        (["quantize", str(tiny_dir), "--to", "onnx", "--method", "q4_k_m", "-o", str(tmp_path / "d")], ["int4"]),
        (["quantize", str(smollm2_dir), "--to", "onnx", "--method", "rtn", "--group-size", "128", "-o",
          str(tmp_path / "d")], ["does not divide", "576"]),
        (["quantize", str(tiny_dir), "--to", "gguf", "--method", "q4_k_m", "--calib", str(tmp_path / "nope.txt"),
          "-o", str(out)], ["not found"]),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    short = tmp_path / "short.txt"
    short.write_text("A short calibration text.")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"content": "a calibration line under the wrong key"}) + "\n")
    cases += [
        (["imatrix", str(tiny_dir), "--calib", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "x.imatrix")],
         ["not found"]),
        (["imatrix", str(tiny_dir), "--calib", str(empty), "-o", str(tmp_path / "x.imatrix")], ["empty"]),
        (["quantize", str(tiny_dir), "--to", "gguf", "--method", "q4_k_m", "--calib", str(nofield), "-o", str(out)],
         ["\"text\"", "JSONL"]),
        (["quantize", str(tiny_dir), "--to", "gguf", "--method", "q4_k_m", "--calib", str(empty), "-o", str(out)],
         ["empty"]),
        (["quantize", str(tiny_dir), "--to", "gguf", "--method", "q4_k_m", "--calib", str(short), "-o", str(out)],
         ["fewer than one sample"]),
        (["imatrix", str(tiny_dir), "--calib", str(short), "-o", str(tmp_path / "x.imatrix")],
         ["fewer than one sample"]),
        (["eval", str(q4_1), "--reference", str(smollm2_dir), *EVAL], ["vocabulary", "--reference"]),
    ]
    foreign = tmp_path / "smollm2.imatrix"
    from quant.imatrix import IMatrix, write

    # SmolLM2-shaped statistics (576 columns) for tiny's names
    write(foreign, IMatrix({"blk.0.attn_q.weight": np.ones(576, np.float32)}, {"blk.0.attn_q.weight": 8}, ["x"], 1,
                           512))
    cases.append((["quantize", str(tiny_dir), "--to", "gguf", "--method", "q4_k_m", "--imatrix", str(foreign),
                   "-o", str(out)], ["another model", "edgekit imatrix"]))
    # names of a model with other tensors (a mixture-of-experts layer), none of tiny's
    alien = tmp_path / "alien.imatrix"
    write(alien, IMatrix({"blk.0.ffn_gate_exps.weight": np.ones(256, np.float32)}, {"blk.0.ffn_gate_exps.weight": 8},
                         ["x"], 1, 512))
    cases.append((["quantize", str(tiny_dir), "--to", "gguf", "--method", "iq4_xs", "--imatrix", str(alien),
                   "-o", str(out)], ["another model", "edgekit imatrix"]))
    inputs = ("empty.txt", "short.txt", "nofield.jsonl", "smollm2.imatrix", "alien.imatrix")
    for args, needles in cases:
        assert_one_line_error(cli(*args), *needles)
        left = sorted(p.name for p in tmp_path.iterdir() if p.name not in inputs)
        assert left == [], (args, left)
