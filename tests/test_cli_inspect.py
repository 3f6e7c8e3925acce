"""`edgekit inspect` through the installed console script: real models, and the bad-input contract."""

import json
import shutil

import pytest
import torch

from helpers import assert_one_line_error, run_cli


def test_inspect_tiny_text_and_json(tiny_dir):
    proc = run_cli("inspect", str(tiny_dir))
    assert proc.returncode == 0, proc.stderr
    assert "llama (LlamaForCausalLM)" in proc.stdout and "chat template yes" in proc.stdout
    assert "BPE (byte-level)" in proc.stdout
    info = json.loads(run_cli("inspect", str(tiny_dir), "--json").stdout)
    assert info["architecture"] == "llama" and info["parameters"] == info["stored_parameters"]
    spec = info["spec"]
    assert spec["num_kv_heads"] < spec["num_heads"]
    assert info["tokenizer"]["kind"] == "BPE" and info["tokenizer"]["chat_template"] is True
    assert 4000 <= info["tokenizer"]["vocab_size"] <= 8000
    assert info["size_on_disk"] < 20_000_000


def test_inspect_smollm2_text_and_json(smollm2_dir):
    proc = run_cli("inspect", str(smollm2_dir))
    assert proc.returncode == 0, proc.stderr
    assert "30 x hidden 576" in proc.stdout and "9 heads, 3 kv heads" in proc.stdout
    info = json.loads(run_cli("inspect", str(smollm2_dir), "--json").stdout)
    assert info["spec"]["vocab_size"] == 49152 and info["spec"]["tied_embeddings"] is True
    assert info["tokenizer"]["chat_template"] is True and info["tokenizer"]["kind"] == "BPE"


def test_inspect_with_adapter(random_model, tmp_path):
    from test_checkpoint import _make_adapter

    base = random_model("qwen2")
    _make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    info = json.loads(run_cli("inspect", str(base), "--adapter", str(tmp_path / "adapter"), "--json").stdout)
    assert info["adapter"]["r"] == 4 and info["adapter"]["merged_tensors"] == 4


def _copy_model(src, dst, weights=True):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if weights or not f.name.endswith(".safetensors"):
            shutil.copy(f, dst / f.name)
    return dst


def test_bad_inputs_one_line_exit_2(random_model, tmp_path):
    base = random_model("llama")
    assert_one_line_error(run_cli("inspect", str(tmp_path / "nope")), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("inspect", str(empty)), "config.json")

    truncated = _copy_model(base, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) - 1000])
    assert_one_line_error(run_cli("inspect", str(truncated)), "truncated", "re-download")

    corrupt = _copy_model(base, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(data[:8] + b"\xff" * 64 + data[72:])
    assert_one_line_error(run_cli("inspect", str(corrupt)), "corrupt header")

    unsupported = _copy_model(base, tmp_path / "unsupported")
    cfg = json.loads((unsupported / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (unsupported / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli("inspect", str(unsupported)), "mamba", "supported: gemma2")

    pickled = _copy_model(base, tmp_path / "pickled", weights=False)
    from edgekit.checkpoint import open_checkpoint

    torch.save(dict(open_checkpoint(base).iter_tensors()), pickled / "pytorch_model.bin")
    assert_one_line_error(run_cli("inspect", str(pickled)), "pickle", "--allow-pickle")
    ok = run_cli("inspect", str(pickled), "--allow-pickle", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["weights"] == "pickle"


def test_adapter_shape_mismatch_one_line(random_model, tmp_path):
    from test_checkpoint import _make_adapter

    _make_adapter(random_model("llama"), tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    other = random_model("llama", hidden_size=96, intermediate_size=192)
    assert_one_line_error(run_cli("inspect", str(other), "--adapter", str(tmp_path / "adapter")),
                          "does not fit", "base model")


@pytest.mark.parametrize("args", [["inspect"], ["frobnicate"]])
def test_usage_errors_exit_2(args):
    proc = run_cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
