"""`edgekit quantize --to coreml`: the quantizer's own codes in the Core ML program, on edgekit-tiny.

Off macOS the artifact is proved structurally: the saved ``.mlpackage`` is loaded back through coremltools'
milproto loader (which type-checks every op), each linear weight is a ``constexpr_blockwise_shift_scale``
(int4 / int8 data, fp16 scale per block of the input dimension) or ``constexpr_lut_to_dense`` (uint4 indices,
a 16-entry fp16 table per block) whose arrays equal the quantizer's and whose decompressed value equals the
quantizer's dequantized weight; coremltools' own ``linear_quantize_weights`` (per_block) gives the same int4
codes on tiny and SmolLM2 weights. On macOS (``macos`` marker) Core ML predicts with the codes and is scored
against transformers' fp32 logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import quant
from converters.coreml import compressed
from helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")
# kind -> (method, CLI options, grid, grid params, extra quantized weights)
KINDS = {
    "int4": ("rtn", [], "coreml:int4", {"block_size": 32, "symmetric": True}, ()),
    # int8 with zero points, and the tied embedding/head quantized too (a constexpr feeding gather and linear)
    "int8": ("rtn", ["--type", "int8", "--asym", "--group-size", "64", "--quantize-head"], "coreml:int8",
             {"block_size": 64, "symmetric": False}, ("model.embed_tokens.weight",)),
    "nf4": ("nf4", [], "coreml:palette4", {"block_size": 64}, ()),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)


def linear_names(layers: int) -> list[str]:
    return [f"model.layers.{i}.{p}.weight" for i in range(layers) for p in PROJ]


def hf_weights(directory: Path, names: list[str]) -> dict[str, np.ndarray]:
    with safe_open(str(directory / "model.safetensors"), "np") as f:
        return {n: f.get_tensor(n).astype(np.float32) for n in names}


@pytest.fixture(scope="module")
def artifact(tiny_dir, tmp_path_factory):
    """kind -> the Core ML directory `edgekit quantize` wrote for it (each built once, on first use)."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            method, options, *_ = KINDS[kind]
            out = tmp_path_factory.mktemp("coreml") / kind
            proc = cli("quantize", str(tiny_dir), "--to", "coreml", "--method", method, *options, "-o", str(out),
                       "--json")
            assert proc.returncode == 0, proc.stderr[-3000:]
            built[kind] = out
        return built[kind]

    return get


# each case is one tiny conversion (~15 s of CPU): int4 and NF4 (the quality table's rows) in make test
@pytest.mark.parametrize("kind", ["int4", "nf4", pytest.param("int8", marks=pytest.mark.slow)])
def test_codes_in_the_program_are_the_quantizers(artifact, tiny_dir, kind):
    method, _, grid, params, extra = KINDS[kind]
    out = artifact(kind)
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["format"] == "coreml" and manifest["quant"]["grid"] == grid
    assert manifest["quant"]["block_size"] == params["block_size"]
    stored = compressed.read_back(out / "model.mlpackage")  # loads and type-checks the whole program
    from converters.coreml.mlprogram import coremltools

    spec = coremltools().models.MLModel(str(out / "model.mlpackage"), skip_model_load=True).get_spec()
    assert spec.specificationVersion >= 9  # iOS 18 / macOS 15: the constexpr ops and the KV-cache states
    assert sorted(s.name for s in spec.description.state) == ["key_cache", "value_cache"]
    names = linear_names(4) + list(extra)
    assert sorted(stored) == sorted(names)  # every linear weight (and only those asked for) as codes
    ref = hf_weights(tiny_dir, names)
    errors = []
    for name in names:
        got, w = stored[name], ref[name]
        qt = quant.quantize(method, w, grid, **params)
        block = params["block_size"]
        if grid == "coreml:palette4":
            assert got["op"] == "constexpr_lut_to_dense"
            assert got["dtypes"] == {"indices": "uint4", "lut": "fp16"}
            assert got["inputs"]["lut"].shape == (w.shape[0], w.shape[1] // block, 16, 1)
            np.testing.assert_array_equal(got["inputs"]["indices"], qt.arrays["indices"], err_msg=name)
            np.testing.assert_array_equal(got["inputs"]["lut"], qt.arrays["lut"], err_msg=name)
        else:
            bits = grid[-1]
            assert got["op"] == "constexpr_blockwise_shift_scale"
            want_dtypes = {"data": f"int{bits}", "scale": "fp16"}
            if not params["symmetric"]:
                want_dtypes["offset"] = f"int{bits}"
            assert got["dtypes"] == want_dtypes, name
            assert got["inputs"]["data"].shape == w.shape
            assert got["inputs"]["scale"].shape == (w.shape[0], w.shape[1] // block)  # block along the input dim
            for key in want_dtypes:
                np.testing.assert_array_equal(got["inputs"][key], qt.arrays[key], err_msg=f"{name} {key}")
        if name == "model.embed_tokens.weight":  # tied: the same codes feed the embedding lookup and the head
            assert got["consumers"] == ["gather", "linear"]
        else:
            assert got["consumers"] == ["linear"]
        # the program's weight (coremltools' decompress of the stored op) is the quantizer's dequantized
        # output in the program's fp16, bit for bit, so within one fp16 ulp of the float32 one
        deq = quant.dequantize(qt)
        assert got["dense"].dtype == np.float16 and got["dense"].shape == w.shape
        np.testing.assert_array_equal(got["dense"], deq.astype(np.float16), err_msg=name)
        assert np.all(np.abs(got["dense"].astype(np.float32) - deq) <= np.spacing(got["dense"]).astype(np.float32))
        errors.append((np.sum((got["dense"].astype(np.float64) - w) ** 2), np.sum(w.astype(np.float64) ** 2)))
    rel = float(np.sqrt(sum(e for e, _ in errors) / sum(n for _, n in errors)))
    # weight error of the stored program against the fp32 checkpoint (the quality table's Core ML rows)
    assert rel < {"int4": 0.12, "int8": 0.006, "nf4": 0.12}[kind], rel


def _linears(named: dict[str, np.ndarray], k: int):
    """An iOS 18 MIL program: one fp16 linear per weight over one input of width ``k``."""
    from coremltools.converters.mil import Builder as mb

    from converters.coreml.mlprogram import coremltools

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, k))], opset_version=coremltools().target.iOS18)
    def prog(x):
        return tuple(mb.linear(x=x, weight=w.astype(np.float16), name=name) for name, w in named.items())

    return prog


def _coremltools_int4(weights: dict[str, np.ndarray], symmetric: bool, block: int = 32) -> dict[str, dict]:
    """coremltools' own per-block int4 quantization (optimize.coreml.linear_quantize_weights) of ``weights``
    held in an fp16 program, as the arrays of each constexpr_blockwise_shift_scale it writes."""
    from converters.coreml.mlprogram import coremltools

    ct = coremltools()
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric" if symmetric else "linear", dtype="int4", granularity="per_block",
        block_size=block, weight_threshold=0))
    order = list(weights)
    out = {}
    for k in sorted({w.shape[1] for w in weights.values()}):  # one program per input width
        named = {f"w{i}": weights[n] for i, n in enumerate(order) if weights[n].shape[1] == k}
        model = ct.convert(_linears(named, k), minimum_deployment_target=ct.target.iOS18, convert_to="mlprogram",
                           skip_model_load=True)
        for f in cto.linear_quantize_weights(model, config)._mil_program.functions.values():
            for op in f.operations:
                if op.op_type == "constexpr_blockwise_shift_scale":
                    linear = op.outputs[0].child_ops[0]
                    out[order[int(linear.outputs[0].name[1:].split("_")[0])]] = {  # w<i>, maybe suffixed
                        key: np.asarray(v.val) for key, v in op.inputs.items()}
    assert sorted(out) == sorted(order)
    return out


def _agreement(weights: dict[str, np.ndarray], symmetric: bool) -> dict[str, int]:
    ref = _coremltools_int4(weights, symmetric)
    differ = {"data": 0, "scale": 0, "offset": 0, "values": 0}
    for name, w in weights.items():
        qt = quant.quantize("rtn", w, "coreml:int4", block_size=32, symmetric=symmetric)
        for key in ("data", "scale", "offset"):
            if key in ref[name] or key in qt.arrays:
                differ[key] += int(np.sum(ref[name][key].astype(np.float32) != qt.arrays[key].astype(np.float32)))
        differ["values"] += w.size
    return differ


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_equals_coremltools_linear_quantize_weights(artifact, tiny_dir, smollm2_dir, symmetric):
    """Every linear weight of edgekit-tiny and the first and last layers of SmolLM2: the same int4 codes, fp16
    scales and zero points as coremltools' per_block quantizer on the same block size."""
    tiny = hf_weights(tiny_dir, linear_names(4))
    ends = ("model.layers.0.", "model.layers.29.")
    smol = hf_weights(smollm2_dir, [n for n in linear_names(30) if n.startswith(ends)])
    for weights in (tiny, smol):
        assert _agreement(weights, symmetric) == {"data": 0, "scale": 0, "offset": 0,
                                                  "values": sum(w.size for w in weights.values())}
    if symmetric:  # and the artifact holds exactly those codes
        stored = compressed.read_back(artifact("int4") / "model.mlpackage")
        ref = _coremltools_int4(dict(list(tiny.items())[:7]), True)
        for name, arrays in ref.items():
            np.testing.assert_array_equal(stored[name]["inputs"]["data"], arrays["data"])
            np.testing.assert_array_equal(stored[name]["inputs"]["scale"], arrays["scale"])


@pytest.mark.slow
def test_int4_equals_coremltools_on_every_smollm2_layer(smollm2_dir):
    weights = hf_weights(smollm2_dir, linear_names(30))
    for symmetric in (True, False):
        assert _agreement(weights, symmetric) == {"data": 0, "scale": 0, "offset": 0,
                                                  "values": sum(w.size for w in weights.values())}


def test_bad_coreml_quantize_inputs_fail_before_any_work(tiny_dir, smollm2_dir, tmp_path):
    out = tmp_path / "out"
    cases = [
        (["quantize", str(tiny_dir), "--to", "coreml", "--method", "q4_k_m"], ["int4"]),
        (["quantize", str(tiny_dir), "--to", "coreml", "--method", "rtn", "--type", "q4_0"], ["int4", "int8"]),
        (["quantize", str(smollm2_dir), "--to", "coreml", "--method", "nf4", "--group-size", "128"],
         ["does not divide", "576"]),
    ]
    for args, needles in cases:
        assert_one_line_error(cli(*args, "-o", str(out)), *needles)
        assert list(tmp_path.iterdir()) == [], args


def _persuasion_windows(tiny_dir: Path, ctx: int, chunks: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    from edgekit.eval.logits import windows

    tok = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    ids = tok.encode((tiny_dir / "persuasion.txt").read_text()).ids
    return list(windows(ids, ctx, chunks, bos=0))


@pytest.mark.macos
@pytest.mark.parametrize("kind,kld_max", [("int4", 0.01), ("int8", 0.003), ("nf4", 0.01)])  # fp16 compute too
def test_coreml_quantized_tiny_predicts_close_to_transformers(artifact, tiny_dir, kind, kld_max):
    """Core ML runs the stored codes: perplexity on held-out Persuasion (second half of each 256-token window,
    as llama-perplexity scores) and KL divergence / top-1 agreement against transformers' fp32 logits."""
    import torch
    import transformers

    from converters.coreml.mlprogram import coremltools
    from edgekit.eval.metrics import log_softmax

    ct = coremltools()
    model = ct.models.MLModel(str(artifact(kind) / "model.mlpackage"), compute_units=ct.ComputeUnit.CPU_ONLY)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    nll, ref_nll, kld, top1 = [], [], [], []
    ctx = 256
    for w in _persuasion_windows(tiny_dir, ctx, 4):
        state = model.make_state()
        got = np.stack([np.asarray(model.predict({"input_ids": np.array([[t]], np.int32),
                                                  "position": np.array([i], np.int32)}, state=state)["logits"],
                                   np.float32).reshape(-1) for i, t in enumerate(w[:-1])])
        with torch.no_grad():
            want = ref(torch.tensor([w[:-1]])).logits[0].float().numpy()
        half = slice(ctx // 2 - 1, ctx - 1)
        lq, lp = log_softmax(got[half]), log_softmax(want[half])
        nxt = np.array(w[ctx // 2:])
        nll.append(-lq[np.arange(len(nxt)), nxt])
        ref_nll.append(-lp[np.arange(len(nxt)), nxt])
        kld.append((np.exp(lp) * (lp - lq)).sum(axis=1))
        top1.append(lq.argmax(axis=1) == lp.argmax(axis=1))
    ppl, ref_ppl = float(np.exp(np.concatenate(nll).mean())), float(np.exp(np.concatenate(ref_nll).mean()))
    k, t1 = np.concatenate(kld), float(np.concatenate(top1).mean())
    row = (f"| Core ML {kind} (tiny, Persuasion 4 x 256) | ppl {ppl:.3f} | ref {ref_ppl:.3f} "
           f"| Δppl {ppl - ref_ppl:+.3f} | KLD mean {k.mean():.5f} | p99 {np.percentile(k, 99):.5f} "
           f"| top-1 {100 * t1:.2f}% |")
    print(row)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(row + "\n")
    assert k.mean() < kld_max and t1 > 0.9 and abs(ppl - ref_ppl) < 0.05 * ref_ppl, row
