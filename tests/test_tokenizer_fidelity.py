"""Tokenization fidelity as a gate, and the same stop tokens in every format.

At convert time edgekit tokenizes a probe conversation with transformers (the reference) and with the
artifact's own tokenizer (llama.cpp's vocabulary for GGUF, the shipped tokenizer.json for ONNX / Core ML)
and records the verdict; ``inspect`` shows it, a mismatch is one warning line. References here are
transformers' own ``apply_chat_template`` / ``encode`` and llama-cpp-python's tokenizer, independent of
edgekit's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import runtimes
from helpers import run_cli

llama_cpp = pytest.importorskip("llama_cpp")

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def convert(src: Path, out: Path, *args: str) -> tuple[dict, str]:
    proc = run_cli("convert", str(src), "-o", str(out), "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def inspect_json(path: Path) -> dict:
    proc = run_cli("inspect", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def spm_llama(tmp_path_factory) -> Path:
    """A held-out SentencePiece Llama: transformers 5 loads it with Metaspace prepend_scheme=first."""
    from edgekit.models.random import build

    return build("llama", tmp_path_factory.mktemp("spm") / "spm-llama", tokenizer="sentencepiece")


def test_spm_llama_chat_prompt_has_the_same_ids_through_the_gguf(spm_llama, tmp_path):
    from transformers import AutoTokenizer

    import runtimes as rt
    from runtimes.chat import prompt_tokens

    hf = AutoTokenizer.from_pretrained(str(spm_llama))
    assert "prepend_scheme=first" in str(hf.backend_tokenizer.pre_tokenizer)
    text = hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ref = hf.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)
    out = tmp_path / "spm.gguf"
    summary, stderr = convert(spm_llama, out, "--to", "gguf", "--outtype", "f32")
    assert summary["tokenizer_check"]["ok"] is True and "warning" not in stderr
    # llama.cpp on its own (no edgekit code): the chat prompt, which starts with a special token
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ref
    # edgekit's runtime: the chat prompt and a plain text starting with a word (the one "▁" GGUF cannot say)
    engine = rt.load(out, threads=2)
    assert prompt_tokens(engine, CONVERSATION) == ref
    for plain in ("Hello world, it is a test.", "<|im_start|>user\nhi", "  two spaces first", "\nnewline first"):
        assert engine.tokenize(plain) == hf.encode(plain), plain
    engine.close()
    info = inspect_json(out)
    assert info["tokenizer_check"]["ok"] is True and info["tokenizer"]["add_space_prefix"] is False


def test_spm_llama_onnx_ships_the_tokenizer_transformers_runs(spm_llama, tmp_path):
    from transformers import AutoTokenizer

    import runtimes as rt
    from runtimes.chat import prompt_tokens

    hf = AutoTokenizer.from_pretrained(str(spm_llama))
    ref = hf.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)
    out = tmp_path / "onnx"
    summary, stderr = convert(spm_llama, out, "--to", "onnx")
    check = summary["tokenizer_check"]
    # the checkpoint's own tokenizer.json is not what transformers 5 runs for it: edgekit ships the latter
    assert check["ok"] is True and "rewritten" in check and "warning" not in stderr
    engine = rt.load(out, threads=2)
    assert prompt_tokens(engine, CONVERSATION) == ref
    assert engine.tokenize("Hello world") == hf.encode("Hello world")


def test_a_tokenizer_llama_cpp_cannot_follow_warns_at_convert_and_in_inspect(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    # rstrip on <|im_end|>: transformers eats the newline after it, llama.cpp's vocabulary keeps it
    src = tmp_path / "rstrip"
    shutil.copytree(tiny_dir, src)
    tj = json.loads((src / "tokenizer.json").read_text())
    for token in tj["added_tokens"]:
        if token["content"] == "<|im_end|>":
            token["rstrip"] = True
    (src / "tokenizer.json").write_text(json.dumps(tj))
    hf = AutoTokenizer.from_pretrained(str(src))
    text = hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    out = tmp_path / "rstrip.gguf"
    summary, stderr = convert(src, out, "--to", "gguf", "--outtype", "f32")
    llm_ids = llama_cpp.Llama(str(out), vocab_only=True, verbose=False).tokenize(text.encode(), add_bos=False,
                                                                                 special=True)
    assert llm_ids != hf.encode(text, add_special_tokens=False)  # the disagreement is real
    assert summary["tokenizer_check"]["ok"] is False
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "does not match transformers" in warnings[0] and str(out) in warnings[0]
    proc = run_cli("inspect", str(out))
    assert proc.returncode == 0 and "tokenizer check MISMATCH" in proc.stdout
    assert proc.stderr.strip().splitlines() == [warnings[0]]


@pytest.fixture(scope="module")
def tiny_artifacts(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny_artifacts")
    arts = {"gguf": out / "tiny.gguf", "onnx": out / "onnx", "coreml": out / "coreml"}
    convert(tiny_dir, arts["gguf"], "--to", "gguf", "--outtype", "f32")
    convert(tiny_dir, arts["onnx"], "--to", "onnx")
    # text mode (progress on; edgekit's own bar shows only on a terminal): none of coremltools' per-op /
    # per-pass bars, which used to print even into a pipe
    proc = run_cli("convert", str(tiny_dir), "--to", "coreml", "--context", "64", "-o", str(arts["coreml"]))
    assert proc.returncode == 0, proc.stderr
    assert "MIL" not in proc.stderr and "ops/s" not in proc.stderr and "passes/s" not in proc.stderr, proc.stderr
    return arts


def _reference_stops(src: Path) -> set[int]:
    """generation_config's eos ids, the tokenizer's eos, and what the template closes an answer with,
    read with transformers."""
    from transformers import AutoTokenizer, GenerationConfig

    hf = AutoTokenizer.from_pretrained(str(src))
    eos = GenerationConfig.from_pretrained(str(src)).eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) | {hf.eos_token_id}
    marker = "QQQ"
    text = hf.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
                                  tokenize=False)
    after = hf.encode(text[text.index(marker) + len(marker):], add_special_tokens=False)
    specials = set(hf.all_special_ids) | {i for i, t in hf.added_tokens_decoder.items() if t.special}
    ids.add(next(i for i in after if i in specials))
    return ids


def test_stop_tokens_are_the_same_in_every_format(tiny_dir, tiny_artifacts):
    from runtimes.hftokenizer import HFTokenizer

    want = _reference_stops(tiny_dir)
    sets = {name: set(inspect_json(path)["stop_token_ids"]) for name, path in tiny_artifacts.items()}
    assert sets == {"gguf": want, "onnx": want, "coreml": want}
    # and the runtimes stop on exactly those
    gguf = runtimes.load(tiny_artifacts["gguf"], threads=2)
    assert gguf.eos_ids == want
    gguf.close()
    assert runtimes.load(tiny_artifacts["onnx"], threads=2).eos_ids == want
    assert HFTokenizer(tiny_artifacts["coreml"]).eos_ids == want  # Core ML predicts only on macOS


@pytest.mark.slow
def test_smollm2_stop_tokens_are_the_same_in_every_format(smollm2_dir, tmp_path):
    want = _reference_stops(smollm2_dir)
    got = {}
    for fmt, out, args in (("gguf", tmp_path / "s.gguf", ("--outtype", "f16")), ("onnx", tmp_path / "onnx", ()),
                           ("coreml", tmp_path / "coreml", ("--context", "64"))):
        summary, _ = convert(smollm2_dir, out, "--to", fmt, *args)
        got[fmt] = set(inspect_json(out)["stop_token_ids"])
        assert summary["tokenizer_check"]["ok"] is True, (fmt, summary["tokenizer_check"])
    assert got == {"gguf": want, "onnx": want, "coreml": want}


def test_inspect_artifacts_text_and_json(tiny_dir, tiny_artifacts):
    from gguf import GGUFReader

    cfg = json.loads((tiny_dir / "config.json").read_text())
    vocab = len(json.loads((tiny_dir / "tokenizer.json").read_text())["model"]["vocab"])
    info = inspect_json(tiny_artifacts["gguf"])
    reader = GGUFReader(str(tiny_artifacts["gguf"]))
    assert info["format"] == "gguf" and info["architecture"] == "llama"
    assert info["tensors"] == len(reader.tensors) and info["tensor_types"] == {"F32": len(reader.tensors)}
    assert info["context_length"] == cfg["max_position_embeddings"] and info["layers"] == cfg["num_hidden_layers"]
    assert info["quantization"] == "F32" and info["chat_template"] is True
    assert info["tokenizer"]["model"] == "gpt2" and info["tokenizer"]["vocab_size"] >= vocab
    assert info["tokenizer_check"]["ok"] is True
    text = run_cli("inspect", str(tiny_artifacts["gguf"]))
    assert text.returncode == 0 and "F32 " in text.stdout and "tokenizer check ok" in text.stdout, text.stdout
    for name in ("onnx", "coreml"):
        info = inspect_json(tiny_artifacts[name])
        manifest = json.loads((tiny_artifacts[name] / "edgekit.json").read_text())
        assert info["format"] == name and info["files"] == len(manifest["files"])
        assert info["quantization"] == manifest["quant"] and info["tokenizer_check"]["ok"] is True
        text = run_cli("inspect", str(tiny_artifacts[name]))
        assert text.returncode == 0 and f"({name}," in text.stdout and "tokenizer check ok" in text.stdout


def test_run_and_inspect_on_a_folder_or_a_checkpoint_say_what_to_do(tiny_dir, tiny_artifacts):
    from helpers import assert_one_line_error

    folder = tiny_artifacts["gguf"].parent
    for command in ("run", "inspect"):
        proc = run_cli(command, str(folder), *(["-p", "hi"] if command == "run" else []))
        assert_one_line_error(proc, "folder of 3 artifacts", "tiny.gguf", "onnx/", "coreml/",
                              f"edgekit {command} {folder}")
    assert_one_line_error(run_cli("run", str(tiny_dir), "-p", "hi"), "Hugging Face checkpoint",
                          f"edgekit convert {tiny_dir} --to gguf")
