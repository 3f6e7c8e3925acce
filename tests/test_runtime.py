"""runtimes/: sampling, streamed detokenization, chat templates, device profiles (no model load needed,
except real tokenizers for the UTF-8 stream)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from helpers import run_cli
from runtimes import devices
from runtimes.generate import StreamDecoder, _held_back
from runtimes.sampling import Sampler, SamplingParams, apply_penalties, distribution

# a hand-written distribution: every expectation below is computed from these five numbers by hand
P = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
LOGITS = np.log(P).astype(np.float32)


def dist(**kw) -> dict[int, float]:
    ids, probs = distribution(LOGITS, [], SamplingParams(temperature=1.0, **kw))
    return {int(i): float(p) for i, p in zip(ids, probs, strict=True)}


def assert_dist(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5), (k, got, want)


def test_full_distribution_is_softmax():
    assert_dist(dist(), {i: float(p) for i, p in enumerate(P)})


def test_top_k():
    assert_dist(dist(top_k=3), {0: 0.5 / 0.85, 1: 0.2 / 0.85, 2: 0.15 / 0.85})


def test_top_p_keeps_the_token_that_crosses_p():
    # cumulative 0.5, 0.7, 0.85: p = 0.75 is crossed by token 2
    assert_dist(dist(top_p=0.75), {0: 0.5 / 0.85, 1: 0.2 / 0.85, 2: 0.15 / 0.85})
    assert_dist(dist(top_p=0.4), {0: 1.0})


def test_min_p():
    # threshold 0.35 * 0.5 = 0.175: tokens 0 (0.5) and 1 (0.2) survive
    assert_dist(dist(min_p=0.35), {0: 0.5 / 0.7, 1: 0.2 / 0.7})


def test_temperature_reshapes_the_survivors():
    # T = 2: p_i^(1/2), renormalised
    root = np.sqrt(P)
    ids, probs = distribution(LOGITS, [], SamplingParams(temperature=2.0))
    assert_dist(dict(zip(ids.tolist(), probs.tolist(), strict=True)), dict(enumerate(root / root.sum())))


def test_chain_order_top_k_then_top_p_then_min_p():
    # top-k 4 renormalises to 0.526, 0.211, 0.158, 0.105; top-p 0.7 is crossed by token 1 (0.737);
    # min-p 0.5 on the survivors (0.714, 0.286) keeps only token 0 (0.286 < 0.5 * 0.714)
    assert_dist(dist(top_k=4, top_p=0.7), {0: 0.5 / 0.7, 1: 0.2 / 0.7})
    assert_dist(dist(top_k=4, top_p=0.7, min_p=0.5), {0: 1.0})


def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
    out = apply_penalties(logits, [0, 1, 1], SamplingParams(repeat_penalty=2.0))
    np.testing.assert_allclose(out, [1.0, -2.0, 0.5, 3.0])


def test_presence_and_frequency_penalties():
    logits = np.array([2.0, -1.0, 0.5], np.float32)
    out = apply_penalties(logits, [0, 0, 1], SamplingParams(presence_penalty=1.0, frequency_penalty=0.5))
    # token 0: 2 - 1 - 2 * 0.5 = 0; token 1: -1 - 1 - 0.5 = -2.5; token 2 untouched
    np.testing.assert_allclose(out, [0.0, -2.5, 0.5])


def test_penalty_window_is_the_last_n_tokens():
    logits = np.array([2.0, 2.0], np.float32)
    out = apply_penalties(logits, [0, 1, 1], SamplingParams(repeat_penalty=2.0, penalty_last_n=2))
    np.testing.assert_allclose(out, [2.0, 1.0])  # token 0 fell out of the window


def test_greedy_is_argmax_after_penalties():
    logits = np.array([3.0, 2.0, 1.0], np.float32)
    assert Sampler()(logits) == 0
    assert Sampler(SamplingParams(repeat_penalty=4.0))(logits, [0]) == 1


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    params = SamplingParams(temperature=1.0, seed=1234)
    a = [Sampler(params)(LOGITS) for _ in range(1)]
    s1, s2, s3 = Sampler(params), Sampler(params), Sampler(SamplingParams(temperature=1.0, seed=99))
    draws1 = [s1(LOGITS) for _ in range(200)]
    assert draws1 == [s2(LOGITS) for _ in range(200)]
    assert draws1 != [s3(LOGITS) for _ in range(200)]
    assert a[0] == draws1[0]
    # 20000 draws: frequencies within 4 standard errors of the hand-written probabilities
    s = Sampler(SamplingParams(temperature=1.0, seed=7))
    counts = np.bincount([s(LOGITS) for _ in range(20000)], minlength=5) / 20000
    assert np.all(np.abs(counts - P) < 4 * np.sqrt(P * (1 - P) / 20000)), counts


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"min_p": 2}, {"top_k": -3},
                                 {"repeat_penalty": 0}])
def test_bad_sampling_parameters(bad):
    with pytest.raises(EdgekitError):
        SamplingParams(**bad)


# -- streamed detokenization --------------------------------------------------------------------------

TEXT = "naïve café – 日本語の文 🦙🚀 ok"


def check_stream(tokens: list[int], detokenize, expected: str) -> None:
    # the input really splits characters: some single token does not decode to whole characters
    assert any("\ufffd" in detokenize([t]) for t in tokens), "no multi-byte character is split: test proves nothing"
    stream = StreamDecoder(detokenize)
    pieces = [stream.push(t) for t in tokens]
    pieces.append(stream.flush())
    assert all("\ufffd" not in p for p in pieces), pieces
    assert "".join(pieces) == expected
    assert sum(1 for p in pieces if p) > 5  # it did stream, not emit everything at the end


def test_stream_utf8_split_across_tokens_hf_tokenizer(random_model):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(random_model("llama") / "tokenizer.json"))
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    check_stream(ids, lambda t: tok.decode(list(t), skip_special_tokens=True), TEXT)


def test_stream_utf8_split_across_tokens_llamacpp():
    pytest.importorskip("llama_cpp")
    import runtimes
    from edgekit.models import smollm2

    engine = runtimes.load(smollm2.gguf_path(), context=64, threads=2)
    ids = engine.tokenize(TEXT, add_special=False)
    check_stream(ids, engine.detokenize, TEXT)


def test_llamacpp_detokenize_from_many_threads_at_once():
    """The server's request threads detokenize through one engine; each must get its own tokens' text."""
    pytest.importorskip("llama_cpp")
    import threading

    import runtimes
    from edgekit.models import smollm2

    path = smollm2.gguf_path()
    reference = runtimes.load(path, context=64, threads=1)
    engine = runtimes.load(path, context=64, threads=1)
    vocab = range(0, reference.vocab_size, 7)
    want = {t: reference.detokenize([t]) for t in vocab}
    got: dict[int, str] = {}
    start = threading.Barrier(8)

    def run(k: int) -> None:
        start.wait()
        for t in list(vocab)[k::8]:
            got[t] = engine.detokenize([t])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_stop_string_hold_back():
    assert _held_back("abc Uni", ["United"]) == 3
    assert _held_back("abc U", ["United", "xU"]) == 1
    assert _held_back("abc", ["United"]) == 0


# -- chat templates ---------------------------------------------------------------------------------

def test_chat_template_renders_like_transformers(random_model):
    from transformers import AutoTokenizer

    from edgekit.tokenizer import chat_template
    from runtimes.chat import render

    d = random_model("llama")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ünïcode \"quotes\""},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]
    ref = AutoTokenizer.from_pretrained(d).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render(chat_template(d), messages, add_generation_prompt=True) == ref


def test_chat_template_features():
    from runtimes.chat import render

    tpl = ("{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}"
           "{{ bos_token }}{{ m | tojson }}{% generation %}!{% endgeneration %}{% endfor %}"
           "{% if add_generation_prompt %}>{% endif %}")
    assert render(tpl, [{"role": "u", "content": "é"}], bos_token="<s>") == '<s>{"role": "u", "content": "é"}!>'
    with pytest.raises(EdgekitError, match="no bad roles"):
        render(tpl, [{"role": "bad", "content": ""}])
    with pytest.raises(EdgekitError):  # the sandbox refuses attribute access to internals
        render("{{ messages.__class__.__mro__ }}", [])


# -- device profiles ----------------------------------------------------------------------------------

LINUX = devices.HostFacts("Linux", "x86_64", onnx_providers=["CPUExecutionProvider"])
MAC = devices.HostFacts("Darwin", "arm64", onnx_providers=["CoreMLExecutionProvider", "CPUExecutionProvider"],
                        gpu_offload=True)
JETSON = devices.HostFacts("Linux", "aarch64", tegra=True, gpu_offload=True, onnx_providers=[
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
JETSON_NO_TRT = devices.HostFacts("Linux", "aarch64", tegra=True, gpu_offload=False,
                                  onnx_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
ANDROID = devices.HostFacts("Linux", "aarch64", android=True, onnx_providers=[
    "NnapiExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider"])


@pytest.mark.parametrize("facts, profile", [(LINUX, "cpu"), (MAC, "apple-silicon"), (JETSON, "jetson"),
                                            (ANDROID, "android-nnapi"),
                                            (devices.HostFacts("Darwin", "x86_64"), "cpu"),
                                            (devices.HostFacts("Linux", "aarch64"), "cpu")])
def test_detect(facts, profile):
    assert devices.detect(facts) == profile


def test_provider_choice_with_fake_provider_lists():
    sel = devices.select
    assert sel("auto", "onnx", MAC).providers == ["CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert sel("auto", "gguf", MAC).gpu_layers == -1
    assert sel("auto", "coreml", MAC).compute_units == "ALL"
    assert sel("cpu", "coreml", MAC).compute_units == "CPU_ONLY"
    assert sel("jetson", "onnx", JETSON).providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                       "CPUExecutionProvider"]
    assert sel("jetson", "onnx", JETSON_NO_TRT).providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert sel("android-nnapi", "onnx", ANDROID, static_onnx=True).providers == ["NnapiExecutionProvider",
                                                                                 "CPUExecutionProvider"]
    assert sel("android-nnapi", "gguf", ANDROID).gpu_layers == 0  # llama.cpp CPU on Android
    assert sel("cpu", "onnx", JETSON).providers == ["CPUExecutionProvider"]


def test_missing_accelerator_is_an_error_naming_what_is_available_unless_fallback():
    with pytest.raises(EdgekitError) as err:
        devices.select("jetson", "onnx", LINUX)
    assert "TensorrtExecutionProvider" in str(err.value) and "available: CPUExecutionProvider" in str(err.value)
    with pytest.raises(EdgekitError, match="CUDA offload"):
        devices.select("jetson", "gguf", JETSON_NO_TRT)
    with pytest.raises(EdgekitError, match="CoreMLExecutionProvider"):
        devices.select("apple-silicon", "onnx", ANDROID)
    with pytest.raises(EdgekitError, match="static"):
        devices.select("android-nnapi", "onnx", ANDROID, static_onnx=False)
    with pytest.raises(EdgekitError, match="only on macOS"):
        devices.select("cpu", "coreml", LINUX, fallback="cpu")
    fb = devices.select("jetson", "onnx", LINUX, fallback="cpu")
    assert fb.providers == ["CPUExecutionProvider"] and fb.fell_back
    fb = devices.select("android-nnapi", "onnx", ANDROID, fallback="cpu", static_onnx=False)
    assert fb.providers == ["CPUExecutionProvider"]
    # auto never fails for want of an accelerator: it is the best this host has
    assert devices.select("auto", "gguf", JETSON_NO_TRT).gpu_layers == 0
    with pytest.raises(EdgekitError, match="unknown device"):
        devices.select("tpu", "onnx", LINUX)


def test_real_selection_on_this_host():
    import onnxruntime

    facts = devices.host_facts()
    assert facts.onnx_providers == onnxruntime.get_available_providers()
    assert devices.host_facts("onnx").onnx_providers == facts.onnx_providers
    profile = devices.detect(facts)
    sel = devices.select("auto", "onnx", facts)
    # DESIGN.md's device table, written out here rather than read from the implementation's own
    design = {"cpu": [], "apple-silicon": ["CoreMLExecutionProvider"], "android-nnapi": ["NnapiExecutionProvider"],
              "jetson": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}
    wanted = [p for p in design[profile] if p in facts.onnx_providers]
    assert sel.profile == profile and sel.providers == [*wanted, "CPUExecutionProvider"]
    assert devices.select("cpu", "onnx", facts).providers == ["CPUExecutionProvider"]
    # doctor reports the same choice
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["detected_profile"] == profile
    assert rep["profiles"]["auto"]["onnx"]["providers"] == sel.providers
    assert rep["backends"]["onnxruntime"]["providers"] == facts.onnx_providers
    assert rep["cpu"]["physical_cores"] >= 1 and rep["memory"]["total_gb"] > 0


def test_a_gguf_loads_without_onnxruntime(smollm2_gguf):
    """Each backend's host facts come from its own library only: running a GGUF never imports onnxruntime (~1 s)."""
    import subprocess
    import sys

    import llama_cpp

    assert devices.host_facts("gguf").gpu_offload == bool(llama_cpp.llama_supports_gpu_offload())
    code = "import sys, runtimes; runtimes.load(sys.argv[1], context=64); print('onnxruntime' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code, str(smollm2_gguf)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
