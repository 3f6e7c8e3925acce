"""Checkpoint reader: lazy safetensors, sharded checkpoints, pickle opt-in, LoRA merged on the fly
against peft's merge_and_unload()."""

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import save_file

from edgekit.checkpoint import open_checkpoint
from edgekit.errors import EdgekitError


def _make_adapter(base_dir, out_dir, seed=0, **lora_kwargs):
    """Save a peft LoRA adapter with random (non-zero) B matrices; return peft's merged state dict."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(out_dir)
    merged = peft_model.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


LORA_CASES = {
    "llama-rank-pattern": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj",
                                                                             "embed_tokens"],
                                         rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 6},
                                         alpha_pattern={"v_proj": 3}, modules_to_save=["lm_head"])),
    "qwen2-rslora": ("qwen2", dict(r=8, lora_alpha=16, use_rslora=True,
                                   target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"],
                                   rank_pattern={"^model.layers.0.mlp.up_proj": 3})),
    "gpt2-fan-in-fan-out": ("gpt2", dict(r=4, lora_alpha=4, target_modules=["c_attn", "c_proj"],
                                         fan_in_fan_out=True)),
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_lora_merge_equals_peft(random_model, tmp_path, case):
    arch, kwargs = LORA_CASES[case]
    base = random_model(arch)
    reference = _make_adapter(base, tmp_path / "adapter", **kwargs)
    ckpt = open_checkpoint(base, adapter=tmp_path / "adapter")
    assert ckpt.adapter.pairs, "no LoRA pairs found"
    worst = 0.0
    changed = 0
    for name in ckpt.names():
        ours = ckpt.get(name).float()
        ref = reference[name].float()
        worst = max(worst, (ours - ref).abs().max().item())
        changed += int(not torch.equal(ours, open_checkpoint(base).get(name).float()))
    assert worst < 1e-5, worst
    assert changed >= len(ckpt.adapter.pairs)


def test_tensors_are_lazy_and_complete(random_model):
    base = random_model("llama")
    ckpt = open_checkpoint(base)
    state = transformers.AutoModelForCausalLM.from_pretrained(base).state_dict()
    assert set(ckpt.names()) == set(state)
    for name, tensor in ckpt.iter_tensors():
        assert torch.equal(tensor, state[name])
        assert ckpt.tensors[name].shape == tuple(tensor.shape)
    assert len(ckpt.sha256()) == 64


def test_sharded_checkpoint(random_model, tmp_path):
    base = random_model("qwen3")
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ckpt = open_checkpoint(tmp_path)
    assert len(ckpt.files) > 1
    ref = open_checkpoint(base)
    for name in ref.names():
        assert torch.equal(ckpt.get(name), ref.get(name))


def test_pickle_needs_opt_in(random_model, tmp_path):
    base = random_model("llama")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / f, tmp_path / f)
    state = {k: v.clone() for k, v in open_checkpoint(base).iter_tensors()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(EdgekitError, match="--allow-pickle"):
        open_checkpoint(tmp_path)
    ckpt = open_checkpoint(tmp_path, allow_pickle=True)
    assert ckpt.weight_kind == "pickle"
    for name, tensor in state.items():
        assert torch.equal(ckpt.get(name), tensor)


def test_adapter_for_another_base_is_refused(random_model, tmp_path):
    _make_adapter(random_model("llama"), tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    other = random_model("llama", hidden_size=96, intermediate_size=192)
    with pytest.raises(EdgekitError, match="does not fit"):
        open_checkpoint(other, adapter=tmp_path / "adapter")


def test_hub_id_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(EdgekitError, match="HF_HUB_OFFLINE"):
        open_checkpoint("someorg/somemodel@main")


def test_truncated_and_corrupt_safetensors(random_model, tmp_path):
    base = random_model("llama")
    for name, mutate in {
        "truncated": lambda b: b[: len(b) // 2],
        "corrupt-header": lambda b: b[:8] + b"{not json" + b[17:],
        "huge-header": lambda b: (10**12).to_bytes(8, "little") + b[8:],
    }.items():
        d = tmp_path / name
        d.mkdir()
        shutil.copy(base / "config.json", d / "config.json")
        (d / "model.safetensors").write_bytes(mutate((base / "model.safetensors").read_bytes()))
        with pytest.raises(EdgekitError, match="safetensors"):
            open_checkpoint(d)


def test_small_safetensors_written_by_hand(tmp_path):
    save_file({"model.embed_tokens.weight": torch.zeros(4, 2)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.tensors["model.embed_tokens.weight"].shape == (4, 2)
