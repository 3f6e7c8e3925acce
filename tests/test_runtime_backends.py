"""The same greedy tokens through every backend: transformers (the reference), GGUF through llama.cpp,
ONNX (dynamic and static) through onnxruntime, each artifact made by ``edgekit convert`` and run by
``edgekit run --json``; KV-cache truncation per backend; ONNX bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import runtimes
from helpers import assert_one_line_error, run_cli

PROMPT = "It is a truth universally acknowledged, that a single man"


def convert(src: Path, out: Path, *args: str) -> Path:
    proc = run_cli("convert", str(src), "-o", str(out), "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return out


def run_json(artifact: Path, *args: str) -> dict:
    proc = run_cli("run", str(artifact), "--json", "--threads", "2", "--raw", *args)  # the raw text, not a chat
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def hf_greedy(src: Path, prompt_ids: list[int], n: int, dtype: str = "float32") -> list[int]:
    """Exactly ``n`` argmax steps of transformers; an end-of-sequence token among them stays in the list
    (neither suppressed nor stopping), so a backend's early stop can be checked against it."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def eos_ids(artifact: Path) -> frozenset[int]:
    """The ids the backend ends generation at (llama.cpp's end-of-generation tokens, or the tokenizer's EOS)."""
    engine = runtimes.load(artifact, threads=2)
    try:
        return engine.eos_ids
    finally:
        engine.close()


def assert_greedy_prefix(got: dict, ref: list[int], n: int, artifact: Path) -> None:
    """The backend's greedy tokens are transformers'; stopping before ``n`` only where transformers' next
    token is one the backend ends generation at (no stop strings are passed)."""
    k = len(got["tokens"])
    assert got["tokens"] == ref[:k], artifact
    if k < n:
        assert got["finish_reason"] == "stop" and ref[k] in eos_ids(artifact), (artifact, k, ref[k:k + 1])


def hf_prompt(src: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(src)(text)["input_ids"]


@pytest.fixture(scope="module")
def llama_artifacts(random_model, tmp_path_factory):
    src = random_model("llama")
    out = tmp_path_factory.mktemp("runtime_artifacts")
    return src, {
        "gguf": convert(src, out / "f32.gguf", "--to", "gguf", "--outtype", "f32"),
        "onnx": convert(src, out / "onnx", "--to", "onnx"),
        "onnx-static": convert(src, out / "onnx-static", "--to", "onnx", "--static", "--context", "64",
                               "--prefill-chunk", "8"),
    }


def test_random_llama_same_greedy_tokens_on_every_backend(llama_artifacts):
    src, arts = llama_artifacts
    n = 24
    prompt = hf_prompt(src, PROMPT)
    ref = hf_greedy(src, prompt, n)
    for name, art in arts.items():
        # the random model's eos may come up: --stop-free, eos-free comparison needs all n tokens
        got = run_json(art, "-p", PROMPT, "-n", str(n))
        assert got["prompt_tokens"] == len(prompt), name
        assert_greedy_prefix(got, ref, n, art)


@pytest.mark.parametrize("name", ["gguf", "onnx", "onnx-static"])
def test_truncation_and_prefix_reuse_match_a_fresh_engine(llama_artifacts, name):
    _, arts = llama_artifacts
    engine = runtimes.load(arts[name], threads=2)
    rng = np.random.RandomState(0)
    base = rng.randint(3, 500, size=21).tolist()   # 21: crosses two 8-token static chunks
    a, b = base + rng.randint(3, 500, size=7).tolist(), base + rng.randint(3, 500, size=11).tolist()
    engine.prefill(a)
    for t in (5, 9):
        engine.decode(t)
    got = engine.prefill(b)
    assert engine.reused_last == len(base) and engine.evaluated_last == len(b) - len(base)
    fresh = runtimes.load(arts[name], threads=2)
    want = fresh.prefill(b)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the same prompt again: served from the cache without running the model
    again = engine.prefill(b)
    assert engine.evaluated_last == 0 and np.array_equal(again, got)
    assert engine.evaluated_total == len(a) + 2 + len(b) - len(base)


def test_static_onnx_binds_its_kv_buffers_in_place(llama_artifacts):
    _, arts = llama_artifacts
    engine = runtimes.load(arts["onnx-static"], threads=2)
    assert engine.static and engine.context_length == 64
    runner = engine._one
    assert runner.tokens == 1 and engine._chunk.tokens == 8
    bound = {v.data_ptr() for v in runner._keep}
    # every layer's K and V input is the engine's own buffer (no copy per step)
    for layer in range(engine.layers):
        assert engine.k[layer].ctypes.data in bound and engine.v[layer].ctypes.data in bound
    engine.prefill([5, 6, 7])
    before = engine.k.ctypes.data
    engine.decode(8)
    assert engine.k.ctypes.data == before
    assert np.abs(engine.k[:, :, :, 3]).sum() > 0 and np.abs(engine.k[:, :, :, 4:]).sum() == 0


def test_onnx_bad_input(llama_artifacts, tmp_path):
    _, arts = llama_artifacts
    long_prompt = " ".join(["word"] * 80)
    assert_one_line_error(run_cli("run", str(arts["onnx-static"]), "-p", long_prompt), "context of 64")
    assert_one_line_error(run_cli("run", str(arts["onnx-static"]), "-p", "hi", "--context", "128"), "fixed context")
    assert_one_line_error(run_cli("run", str(arts["onnx"]), "-p", "hi", "--device", "android-nnapi"), "static")
    assert_one_line_error(run_cli("run", str(arts["onnx"]), "-p", "hi", "--device", "jetson"),
                          "CUDAExecutionProvider", "available")
    got = run_json(arts["onnx"], "-p", "hi", "-n", "2", "--device", "jetson", "--fallback", "cpu")
    assert got["engine"]["providers"] == ["CPUExecutionProvider"] and got["engine"]["fell_back"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in arts["onnx"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.onnx").write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(run_cli("run", str(broken), "-p", "hi"), "model.onnx")
    (broken / "model.onnx").write_bytes((arts["onnx"] / "model.onnx").read_bytes())
    data = (arts["onnx"] / "model.onnx.data").read_bytes()
    (broken / "model.onnx.data").write_bytes(data[: len(data) // 2])
    # caught before onnxruntime sees it: the manifest's size for model.onnx.data
    assert_one_line_error(run_cli("run", str(broken), "-p", "hi"), "model.onnx.data", "its manifest says")
    (broken / "edgekit.json").unlink()  # no manifest to compare with: onnxruntime's own failure, one line
    assert_one_line_error(run_cli("run", str(broken), "-p", "hi"), "onnxruntime cannot load")
    assert_one_line_error(run_cli("run", str(arts["onnx"] / "tokenizer.json"), "-p", "hi"), "not a model artifact")


# -- edgekit-tiny: the trained model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_dir):
    if not (tiny_dir / "model.safetensors").exists():
        pytest.skip("edgekit-tiny is not trained yet (edgekit/data/tiny/model.safetensors missing)")
    return tiny_dir


def _run_greedy_32(artifact, ref: list[int]) -> dict:
    """``edgekit run --json`` for 32 greedy tokens; they must be transformers' (up to an earlier EOS)."""
    got = run_json(artifact, "-p", PROMPT, "-n", "32")
    assert_greedy_prefix(got, ref, 32, artifact)
    return got


def test_tiny_32_greedy_tokens_identical_across_transformers_gguf_onnx(tiny, tmp_path):
    prompt = hf_prompt(tiny, PROMPT)
    ref = hf_greedy(tiny, prompt, 32)
    for art in (convert(tiny, tmp_path / "tiny-f32.gguf", "--to", "gguf", "--outtype", "f32"),
                convert(tiny, tmp_path / "tiny-onnx", "--to", "onnx", "--dtype", "fp32")):
        got = _run_greedy_32(art, ref)
        assert got["prompt_tokens"] == len(prompt), art


@pytest.mark.slow
def test_smollm2_f16_greedy_tokens_identical_across_backends(smollm2_dir, tmp_path):
    prompt = hf_prompt(smollm2_dir, PROMPT)
    ref = hf_greedy(smollm2_dir, prompt, 32)
    for art in (convert(smollm2_dir, tmp_path / "smol-f16.gguf", "--to", "gguf", "--outtype", "f16"),
                convert(smollm2_dir, tmp_path / "smol-onnx", "--to", "onnx", "--dtype", "fp16")):
        _run_greedy_32(art, ref)


# -- Core ML ----------------------------------------------------------------------------------------

def test_coreml_off_macos_is_one_clear_line(tmp_path):
    import sys

    if sys.platform == "darwin":
        pytest.skip("this host can run Core ML")
    art = tmp_path / "model-coreml"
    (art / "model.mlpackage").mkdir(parents=True)
    (art / "edgekit.json").write_text(json.dumps({"format": "coreml"}))
    assert_one_line_error(run_cli("run", str(art), "-p", "hi"), "only on macOS", "--to gguf")


@pytest.mark.macos
def test_coreml_greedy_tokens_match_transformers(random_model, tmp_path):
    src = random_model("llama")
    art = convert(src, tmp_path / "coreml", "--to", "coreml", "--precision", "fp32", "--context", "64")
    prompt = hf_prompt(src, PROMPT)
    ref = hf_greedy(src, prompt, 8)
    got = run_json(art, "-p", PROMPT, "-n", "8")
    assert got["engine"]["compute_units"] in ("ALL", "CPU_ONLY")
    # the KV state is fp16 (Core ML states hold nothing else): 8 tokens, not 32, on random weights
    assert_greedy_prefix(got, ref, 8, art)
