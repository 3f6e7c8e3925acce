"""``edgekit convert --to coreml``.

On Linux (no Core ML runtime): the exact TorchScript module handed to coremltools reproduces
transformers (logits, prefill + decode through the state, greedy generation), and the written package
is checked through its spec and MIL program. On macOS (``macos`` marker, run by
.github/workflows/macos.yml): Core ML itself predicts and is compared with transformers.
"""

import json
import os
import shutil
import stat
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers

from converters.coreml import mlprogram, wrapper
from edgekit.checkpoint import open_checkpoint
from edgekit.spec import from_config
from helpers import assert_one_line_error, random_lora, run_cli

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
TOL = 1e-4  # max |diff| relative to max |logit|, fp32


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def _reference(d: Path) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def _pos(p: int) -> torch.Tensor:
    return torch.tensor([p], dtype=torch.int32)


def _traced(d: Path, context: int, last_only: bool = True, adapter: Path | None = None):
    ckpt = open_checkpoint(d, adapter=adapter)
    module = wrapper.build(ckpt, from_config(ckpt.config), context, last_only=last_only)
    return mlprogram.trace(module)


# -- the traced wrapper against transformers ----------------------------------------------------------

@pytest.mark.parametrize("arch", [*ARCHS, "gemma3-scalar"])
def test_traced_wrapper_matches_transformers(random_model, arch):
    # a sliding window shorter than the sequence, so mistral's window mask is exercised; gemma3 with a
    # query_pre_attn_scalar other than head_dim (the attention scale is not SDPA's default)
    d = random_model(arch, sliding_window=5) if arch == "mistral" else \
        random_model("gemma3_text", query_pre_attn_scalar=40) if arch == "gemma3-scalar" else random_model(arch)
    ref = _reference(d)
    ids = torch.randint(0, ref.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        full = _traced(d, 32, last_only=False)(ids.int(), _pos(0))
        assert _rel(full, want) <= TOL
        # the converted module (last position only): prefill 8, then 8 single-token steps
        step = _traced(d, 32)
        got = [step(ids[:, :8].int(), _pos(0))]
        got += [step(ids[:, t:t + 1].int(), _pos(t)) for t in range(8, 16)]
    got = torch.cat(got, dim=1)
    assert got.shape == (1, 9, ref.config.vocab_size)
    assert _rel(got, want[:, 7:]) <= TOL
    assert _rel(got, full[:, 7:]) <= TOL


def test_traced_wrapper_truncate_and_reprefill(random_model):
    """Calling with a smaller position rewinds the cache: stale entries past it are never read."""
    d = random_model("llama")
    ref = _reference(d)
    a = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(2))
    b = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(3))
    step = _traced(d, 32)
    with torch.no_grad():
        step(a.int(), _pos(0))
        got = step(b.int(), _pos(4))  # keep a[:4], replace the rest with b
        want = ref(torch.cat([a[:, :4], b], dim=1)).logits[:, -1:]
    assert _rel(got, want) <= TOL


def test_traced_wrapper_with_adapter(random_model, tmp_path):
    """--adapter goes through open_checkpoint's merge: the wrapper matches peft's merged model."""

    d = random_model("qwen2")
    merged = random_lora(_reference(d), tmp_path / "adapter", 0.1)
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = merged(ids).logits
        got = _traced(d, 16, last_only=False, adapter=tmp_path / "adapter")(ids.int(), _pos(0))
        plain = _reference(d)(ids).logits
    assert _rel(got, want) <= TOL
    assert _rel(plain, want) > 100 * TOL  # the adapter changed the model, so the check above means something


def _greedy(step, prompt: torch.Tensor, n: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        logits = step(prompt.int(), _pos(0))
        for i in range(n):
            token = int(logits[0, -1].argmax())
            out.append(token)
            if i + 1 < n:
                logits = step(torch.tensor([[token]], dtype=torch.int32), _pos(prompt.shape[1] + i))
    return out


def test_tiny_greedy_32_tokens_equal_generate(tiny_dir):
    if not (tiny_dir / "model.safetensors").exists():
        pytest.skip(f"edgekit-tiny is not trained yet ({tiny_dir / 'model.safetensors'} missing)")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    prompt = tok("It is a truth universally acknowledged", return_tensors="pt").input_ids
    ref = _reference(tiny_dir)
    with torch.no_grad():
        want = ref.generate(prompt, max_new_tokens=32, do_sample=False)[0, prompt.shape[1]:].tolist()
    got = _greedy(_traced(tiny_dir, 128), prompt, 32)
    _assert_same_greedy(got, want, ref)


def _assert_same_greedy(got: list[int], want: list[int], ref) -> None:
    """generate stops at EOS: then the tokens up to and including it must agree."""
    assert got[:len(want)] == want
    if len(want) < len(got):
        eos = ref.generation_config.eos_token_id
        assert want[-1] in (eos if isinstance(eos, list) else [eos])


# -- the package, through the CLI ---------------------------------------------------------------------

def _ops(spec) -> list:
    main = spec.mlProgram.functions["main"]
    found = []

    def walk(block):
        for op in block.operations:
            found.append(op)
            for inner in op.blocks:
                walk(inner)

    walk(main.block_specializations[main.opset])
    return found


def _shape(feature) -> list[int]:
    return list(feature.type.multiArrayType.shape)


@pytest.mark.parametrize("arch,precision,context", [
    ("llama", "fp16", None), ("qwen3", "fp32", 48), ("gemma3_text", "fp16", 32),
    pytest.param("mistral", "fp16", 64, marks=pytest.mark.slow), pytest.param("qwen2", "fp16", 64,
                                                                              marks=pytest.mark.slow)])
def test_cli_writes_stateful_package(random_model, tmp_path, arch, precision, context):
    d = random_model(arch)
    out = tmp_path / "out"
    args = ["convert", str(d), "--to", "coreml", "-o", str(out), "--json"]
    if precision == "fp32":
        args += ["--precision", "fp32"]
    if context:
        args += ["--context", str(context)]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    spec_ = from_config(json.loads((d / "config.json").read_text()))
    n = context or min(spec_.context_length, 2048)  # random models: 256 positions
    assert result["format"] == "coreml" and result["precision"] == precision and result["context_length"] == n
    _check_package(out, spec_, n, precision)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]


def _check_package(out: Path, spec_, n: int, precision: str) -> None:
    """What Linux can check of a written package: spec, MIL program, weight bytes, directory."""
    ct = mlprogram.coremltools()
    model = ct.models.MLModel(str(out / "model.mlpackage"), skip_model_load=True)
    spec = model.get_spec()
    desc = spec.description
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= 9  # iOS 18 / macOS 15
    # states: key and value cache, (layers, kv heads, N, head dim), fp16 (Core ML's only state type)
    want_dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    states = {s.name: s.type.stateType.arrayType for s in desc.state}
    assert sorted(states) == ["key_cache", "value_cache"]
    for array in states.values():
        assert list(array.shape) == [spec_.num_layers, spec_.num_kv_heads, n, spec_.head_dim]
        assert array.dataType == want_dtype
    # inputs: input_ids flexible 1..N, position a single int32
    inputs = {i.name: i for i in desc.input}
    assert sorted(inputs) == ["input_ids", "position"]
    ids = inputs["input_ids"].type.multiArrayType
    assert ids.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    ranges = [(r.lowerBound, r.upperBound) for r in ids.shapeRange.sizeRanges]
    assert ranges == [(1, 1), (1, n)]
    assert _shape(inputs["position"]) == [1]
    # output: last-position logits
    assert [o.name for o in desc.output] == ["logits"]
    assert desc.output[0].type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    # the program reads and writes the states: read_state + slice_update + write_state (coreml_update_state)
    ops = _ops(spec)
    kinds = Counter(op.type for op in ops)
    assert kinds["read_state"] >= 2 and kinds["slice_update"] >= 2 * spec_.num_layers
    assert kinds["scaled_dot_product_attention"] == spec_.num_layers
    written = {op.inputs["input"].arguments[0].name for op in ops if op.type == "write_state"}
    assert written == {"key_cache", "value_cache"}
    # weights: parameter count x 2 (fp16) or x 4 (fp32) bytes, within 5%
    weight_bytes = sum(f.stat().st_size for f in (out / "model.mlpackage").rglob("weight.bin"))
    expected = spec_.parameter_count() * (2 if precision == "fp16" else 4)
    assert abs(weight_bytes - expected) <= 0.05 * expected, (weight_bytes, expected)
    # directory: tokenizer files and the manifest listing every file with its sha256
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["format"] == "coreml" and manifest["context_length"] == n
    assert manifest["coreml"]["states"]["key_cache"]["shape"] == [spec_.num_layers, spec_.num_kv_heads, n,
                                                                  spec_.head_dim]
    assert "tokenizer.json" in manifest["files"] and (out / "tokenizer.json").exists()
    assert "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin" in manifest["files"]
    # the umask's permissions (0755 / 0644 as ONNX gets), not mkdtemp's 0700; no temporaries inside
    mask = os.umask(0)
    os.umask(mask)
    for p in [out, *out.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o777 if p.is_dir() else 0o666) & ~mask, p
    assert not (out / ".tmp").exists()


@pytest.mark.slow
def test_smollm2_traced_wrapper_matches_transformers(smollm2_dir):
    ref = _reference(smollm2_dir)
    ids = torch.randint(0, ref.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ref(ids).logits
        step = _traced(smollm2_dir, 64)
        got = [step(ids[:, :8].int(), _pos(0))]
        got += [step(ids[:, t:t + 1].int(), _pos(t)) for t in range(8, 16)]
    assert _rel(torch.cat(got, dim=1), want[:, 7:]) <= TOL


@pytest.mark.slow
def test_smollm2_cli_package(smollm2_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("convert", str(smollm2_dir), "--to", "coreml", "-o", str(out), "--context", "512", "--json")
    assert proc.returncode == 0, proc.stderr
    spec_ = from_config(json.loads((smollm2_dir / "config.json").read_text()))
    _check_package(out, spec_, 512, "fp16")


def _nothing_at(dest: Path) -> None:
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.tmp-")]


def test_cli_unsupported_architecture(random_model, tmp_path):
    dest = tmp_path / "out"
    proc = run_cli("convert", str(random_model("gpt2")), "--to", "coreml", "-o", str(dest))
    assert_one_line_error(proc, "gpt2", "llama, mistral, qwen2, qwen3")
    _nothing_at(dest)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_cli_unwritable_destination_nonroot(random_model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = run_cli("convert", str(random_model("llama")), "--to", "coreml", "-o", str(locked / "out"))
        assert_one_line_error(proc, "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_cli_unwritable_destination(random_model, tmp_path):
    # the parent is a file: it can be neither created nor written, whoever runs the test (root included)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    proc = run_cli("convert", str(random_model("llama")), "--to", "coreml", "-o", str(blocker / "sub" / "out"))
    assert_one_line_error(proc, "cannot create output directory", "-o")
    assert blocker.read_text() == "a file, not a directory"


def test_cli_truncated_safetensors(random_model, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(random_model("llama"), src)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "out"
    proc = run_cli("convert", str(src), "--to", "coreml", "-o", str(dest))
    assert_one_line_error(proc, "truncated", "model.safetensors")
    _nothing_at(dest)


def test_cli_context_too_long(random_model, tmp_path):
    dest = tmp_path / "out"
    proc = run_cli("convert", str(random_model("qwen3")), "--to", "coreml", "-o", str(dest), "--context", "100000")
    assert_one_line_error(proc, "--context 100000", "256")
    _nothing_at(dest)


def test_cli_rejects_foreign_option(random_model, tmp_path):
    dest = tmp_path / "out"
    proc = run_cli("convert", str(random_model("llama")), "--to", "coreml", "-o", str(dest), "--static")
    assert_one_line_error(proc, "--static", "coreml")
    _nothing_at(dest)


# -- Core ML itself (macOS only; skipped elsewhere by conftest) ---------------------------------------

def _coreml_generate(model, prompt: list[int], n: int):
    """Prefill ``prompt`` in one call, then ``n - 1`` single-token steps; returns (tokens, logits list)."""
    import numpy as np

    state = model.make_state()
    logits = model.predict({"input_ids": np.array([prompt], dtype=np.int32), "position": np.array([0], np.int32)},
                           state=state)["logits"]
    tokens, seen = [], [logits]
    for i in range(n):
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if i + 1 < n:
            logits = model.predict({"input_ids": np.array([[token]], dtype=np.int32),
                                    "position": np.array([len(prompt) + i], np.int32)}, state=state)["logits"]
            seen.append(logits)
    return tokens, seen


def _convert(d: Path, out: Path, *extra: str):
    proc = run_cli("convert", str(d), "--to", "coreml", "-o", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    ct = mlprogram.coremltools()
    return ct.models.MLModel(str(out / "model.mlpackage"), compute_units=ct.ComputeUnit.CPU_ONLY)


@pytest.mark.macos
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision,tol", [("fp32", 5e-3), ("fp16", 3e-2)])
def test_coreml_predicts_like_transformers(random_model, tmp_path, arch, precision, tol):
    d = random_model(arch)
    model = _convert(d, tmp_path / "out", "--context", "64", "--precision", precision)
    ref = _reference(d)
    ids = torch.randint(0, ref.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
    import numpy as np

    state = model.make_state()
    got = [model.predict({"input_ids": ids[:, :8].int().numpy(), "position": np.array([0], np.int32)},
                         state=state)["logits"]]
    for t in range(8, 16):
        got.append(model.predict({"input_ids": ids[:, t:t + 1].int().numpy(), "position": np.array([t], np.int32)},
                                 state=state)["logits"])
    got_t = torch.from_numpy(np.concatenate(got, axis=1)).float()
    assert _rel(got_t, want[:, 7:]) <= tol


@pytest.mark.macos
def test_coreml_tiny_greedy_equals_generate(tiny_dir, tmp_path):
    if not (tiny_dir / "model.safetensors").exists():
        pytest.skip(f"edgekit-tiny is not trained yet ({tiny_dir / 'model.safetensors'} missing)")
    model = _convert(tiny_dir, tmp_path / "out", "--context", "128", "--precision", "fp32")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    prompt = tok("It is a truth universally acknowledged", return_tensors="pt").input_ids
    ref = _reference(tiny_dir)
    with torch.no_grad():
        want = ref.generate(prompt, max_new_tokens=32, do_sample=False)[0, prompt.shape[1]:].tolist()
    tokens, _ = _coreml_generate(model, prompt[0].tolist(), 32)
    _assert_same_greedy(tokens, want, ref)


@pytest.mark.macos
def test_coreml_smollm2_fp16_chat(smollm2_dir, tmp_path):
    """The real model in the default precision: next-token logits close to transformers', same argmax."""
    model = _convert(smollm2_dir, tmp_path / "out", "--context", "256")
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    prompt = tok(text, return_tensors="pt").input_ids
    ref = _reference(smollm2_dir)
    with torch.no_grad():
        want = ref.generate(prompt, max_new_tokens=8, do_sample=False)[0, prompt.shape[1]:].tolist()
        first = ref(prompt).logits[0, -1]
    tokens, logits = _coreml_generate(model, prompt[0].tolist(), 8)
    assert _rel(torch.from_numpy(logits[0][0, -1]).float(), first) <= 5e-2
    assert tokens[0] == want[0]
    # fp16 may flip a near-tie late in the answer; most tokens must still agree
    assert sum(a == b for a, b in zip(tokens, want, strict=False)) >= min(6, len(want))
