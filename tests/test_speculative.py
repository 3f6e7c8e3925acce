"""Speculative decoding in the shared generation loop: prompt-lookup and draft-model drafts verified by the
target in one forward must leave the output exactly as plain decoding gives it, on every backend (edgekit-tiny
as GGUF, ONNX and static ONNX; SmolLM2's Q4_1 GGUF); acceptance is reported by ``edgekit run --json``."""

from __future__ import annotations

import json

import pytest

import runtimes
from helpers import assert_one_line_error, run_cli
from runtimes.generate import generate
from runtimes.sampling import SamplingParams
from runtimes.speculative import DraftModel, PromptLookup

# the model is asked to go on after a passage it has just seen twice: it echoes, so lookup drafts get accepted
PASSAGE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
           "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
           "neighbourhood, this truth is so well fixed in the minds of the surrounding families.")
PROMPT = f"{PASSAGE}\n\n{PASSAGE}\n\n{PASSAGE[:60]}"


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    look = PromptLookup()
    assert look.propose([1, 2, 3, 4, 5, 1, 2], 3) == [3, 4, 5]
    assert look.propose([7, 8, 1, 9, 7, 8, 2, 7, 8], 3) == [2, 7, 8]   # latest earlier [7, 8], not the first
    assert look.propose([1, 2, 3, 9, 3], 2) == [9, 3]                  # no 3- or 2-gram match: the 1-gram
    assert look.propose([1, 2, 3, 4], 5) == []                         # nothing repeats: no draft
    assert look.propose([5, 5, 5], 4) == [5]                           # what follows runs to the end of history


def test_adaptive_lookup_grows_after_a_whole_guess_and_shrinks_after_a_rejection():
    look = PromptLookup(16, adaptive=True)
    history = [*range(1, 21), 1, 2, 3]                          # the output starts echoing 1..20
    assert look.propose(history, 16) == [4, 5, 6, 7]            # first guess: 4 tokens
    history += [4, 5, 6, 7, 8]                                  # all four accepted, then the target's 8
    assert look.propose(history, 16) == [9, 10, 11, 12, 13, 14]  # +2
    history += [9, 10, 3]                                       # two accepted, then the target left the echo
    assert look.propose(history, 16) == [4, 5, 6]               # accepted + 1
    assert look.propose(history + [4, 5, 6, 7], 2) == [8, 9]    # the caller's room still caps it


@pytest.fixture(scope="module")
def tiny_artifacts(tiny_dir, tmp_path_factory):
    if not (tiny_dir / "model.safetensors").exists():
        pytest.skip("edgekit-tiny is not trained yet")
    out = tmp_path_factory.mktemp("speculative")
    arts = {"gguf": (out / "tiny.gguf", "--to", "gguf", "--outtype", "f32"),
            "onnx": (out / "onnx", "--to", "onnx", "--dtype", "fp32"),
            "onnx-static": (out / "onnx-static", "--to", "onnx", "--dtype", "fp32", "--static", "--context", "256",
                            "--prefill-chunk", "16")}
    for path, *args in arts.values():
        proc = run_cli("convert", str(tiny_dir), "-o", str(path), *args)
        assert proc.returncode == 0, proc.stderr
    return {name: spec[0] for name, spec in arts.items()}


@pytest.mark.parametrize("name", ["gguf", "onnx", "onnx-static"])
def test_tiny_greedy_tokens_identical_with_and_without_speculation(tiny_artifacts, name):
    engine = runtimes.load(tiny_artifacts[name], threads=2, context=256)
    other = "onnx" if name == "gguf" else "gguf"  # the draft model runs on another backend: same vocabulary
    draft = runtimes.load(tiny_artifacts[other], threads=2, context=256)
    prompt = engine.tokenize(PROMPT)
    plain = generate(engine, prompt, max_tokens=48)
    assert plain.speculative is None and len(plain.tokens) >= 24
    looked = generate(engine, prompt, max_tokens=48, draft=PromptLookup(8))
    assert looked.tokens == plain.tokens and looked.text == plain.text
    assert looked.finish_reason == plain.finish_reason
    spec = looked.speculative
    assert spec["accepted"] > 0 and spec["tokens_per_forward"] > 1.0
    assert engine.tokens[:len(prompt)] == prompt  # the KV record holds prompt + output, rejected drafts gone
    drafted = generate(engine, prompt, max_tokens=48, draft=DraftModel(draft, 4))
    assert drafted.tokens == plain.tokens
    # the same model drafting for itself: (nearly) every draft is accepted
    assert drafted.speculative["acceptance_rate"] > 0.8
    # and the cache it leaves behind is what a plain run leaves: the next prompt reuses it the same way
    fresh = runtimes.load(tiny_artifacts[name], threads=2, context=256)
    generate(fresh, prompt, max_tokens=48)
    assert engine.tokens[:len(fresh.tokens) - 1] == fresh.tokens[:-1]


def test_seeded_sampling_identical_with_and_without_lookup(tiny_artifacts):
    engine = runtimes.load(tiny_artifacts["gguf"], threads=2, context=256)
    prompt = engine.tokenize(PROMPT)
    params = SamplingParams(temperature=0.7, top_k=20, seed=11, repeat_penalty=1.1)
    plain = generate(engine, prompt, params, max_tokens=40)
    looked = generate(engine, prompt, params, max_tokens=40, draft=PromptLookup(6))
    assert looked.tokens == plain.tokens and looked.speculative["drafted"] > 0


def test_run_lookup_json(tiny_artifacts):
    art = str(tiny_artifacts["gguf"])
    plain = json.loads(run_cli("run", art, "-p", PROMPT, "-n", "40", "--json", "--threads", "2").stdout)
    proc = run_cli("run", art, "-p", PROMPT, "-n", "40", "--json", "--threads", "2", "--lookup")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["tokens"] == plain["tokens"] and got["text"] == plain["text"]
    spec = got["speculative"]
    assert spec["drafter"] == "lookup" and 0 < spec["accepted"] <= spec["drafted"]
    assert spec["acceptance_rate"] == pytest.approx(spec["accepted"] / spec["drafted"])
    assert spec["tokens_per_forward"] == pytest.approx(len(got["tokens"]) / spec["forwards"])


def test_stop_string_inside_an_accepted_draft(tiny_artifacts):
    engine = runtimes.load(tiny_artifacts["gguf"], threads=2, context=256)
    prompt = engine.tokenize(PROMPT)
    full = generate(engine, prompt, max_tokens=40)
    # the latest 10 characters that occur there for the first time: the stop comes after some accepted drafts
    k = max(i for i in range(1, len(full.text) - 10) if full.text.find(full.text[i:i + 10]) == i)
    word = full.text[k:k + 10]
    plain = generate(engine, prompt, max_tokens=40, stop=[word])
    pieces: list[str] = []
    looked = generate(engine, prompt, max_tokens=40, stop=[word], draft=PromptLookup(8), on_text=pieces.append)
    assert looked.text == plain.text == "".join(pieces) and word not in looked.text
    assert looked.finish_reason == "stop" and looked.speculative["accepted"] > 0


def test_speculative_bad_input(tiny_artifacts):
    from edgekit.models import smollm2

    art = str(tiny_artifacts["gguf"])
    assert_one_line_error(run_cli("run", art, "-p", "hi", "--lookup", "--draft", art), "only one")
    assert_one_line_error(run_cli("run", art, "-p", "hi", "--draft-tokens", "4"), "--lookup")
    assert_one_line_error(run_cli("run", art, "-p", "hi", "--lookup", "--draft-tokens", "0"), "--draft-tokens")
    try:
        other = smollm2.gguf_path()  # another tokenizer (49152 tokens)
    except FileNotFoundError:
        return
    assert_one_line_error(run_cli("run", art, "-p", "hi", "--draft", str(other)), "vocabulary")


def test_smollm2_gguf_greedy_identical_with_lookup():
    from edgekit.models import smollm2

    try:
        gguf = smollm2.gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    engine = runtimes.load(gguf, threads=2, context=1024)
    from runtimes.chat import prompt_tokens

    code = "def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
    prompt = prompt_tokens(engine, [{"role": "user", "content": "Rename w to width in this code, output only the "
                                     f"code:\n\n{code}"}])
    plain = generate(engine, prompt, max_tokens=48)
    looked = generate(engine, prompt, max_tokens=48, draft=PromptLookup())
    assert looked.tokens == plain.tokens
    assert looked.speculative["accepted"] > 0
