"""edgekit convert --to gguf, proven in llama.cpp (llama-cpp-python) against transformers.

Every conversion goes through the CLI. References are independent of the converter: transformers
fp32 logits and tokenization, peft's own merge, the sentencepiece library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.models.random import ARCHITECTURES
from helpers import assert_one_line_error, run_cli

llama_cpp = pytest.importorskip("llama_cpp")

N_TOKENS = 16
PROBES = [
    "Hello world, it's a test of the tokenizer.",
    "我想在apple工作1314151天～ 你好，世界！",
    "def f(x):\n    return x ** 2  # square\n\tif x: pass\n",
    "🚀 emoji 😶\u200d🌫️ ✅🦙 concatenated",
    "a  b   c    d\n\n\ne\t\tf \n \n  g",
    "Anne Elliot's 1814 letters... 'RE you sure? I'll see. We'Ve a'lL",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and trailing ones   ",
]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def convert(src: Path, out: Path, *args: str) -> dict:
    proc = run_cli("convert", str(src), "--to", "gguf", "-o", str(out), "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def load(path: Path, **kw) -> llama_cpp.Llama:
    # type_k/type_v F32: llama.cpp's default F16 KV cache alone costs ~1e-3 relative error, which would
    # hide conversion errors at the F32 tolerance; with it the runtime adds ~1e-6.
    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False, type_k=0, type_v=0,
                           **kw)


def input_ids(vocab: int) -> list[int]:
    return [int(i) for i in np.random.RandomState(0).randint(3, vocab, size=N_TOKENS)]


def hf_logits(src: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def gguf_logits(path: Path, ids: list[int], **kw) -> np.ndarray:
    llm = load(path, **kw)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def metadata(path: Path) -> dict:
    return load(path, vocab_only=True).metadata


# ---- every architecture, F32 logits -------------------------------------------------------------
# near-duplicates of a fast family (mistral, mixtral ~ llama; qwen2, qwen3 ~ qwen2_moe) run under slow
FAST = ("llama", "phi3", "gemma2", "gemma3_text", "gpt2", "qwen2_moe")


@pytest.mark.parametrize("arch", [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in ARCHITECTURES])
def test_f32_logits_match_transformers(arch, random_model, tmp_path):
    src = random_model(arch)
    out = tmp_path / f"{arch}.gguf"
    summary = convert(src, out, "--outtype", "f32")
    assert summary["format"] == "gguf" and summary["outtype"] == "f32" and out.stat().st_size == summary["bytes"]
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    ids = input_ids(vocab)
    ref, got = hf_logits(src, ids), gguf_logits(out, ids)
    assert got.shape == ref.shape
    assert rel_diff(got, ref) <= 1e-3, rel_diff(got, ref)
    meta = metadata(out)
    assert meta["general.file_type"] == "0"  # ALL_F32
    assert len(meta["edgekit.source_sha256"]) == 64 and meta["edgekit.source_sha256"] == summary["source_sha256"]
    assert meta["edgekit.version"]


# Argmax checks run on models with transformers' default init (0.02), not build()'s 0.2. At 0.2 every sublayer
# dominates the logits (what lets the F32 tests above see layout bugs: a q/k rope permutation moves them ~100%
# vs ~1% at 0.02) and amplifies weight rounding: Q8_0 logits were 3-16% off (max |diff| / max |logit|) and 5.6%
# of argmaxes flipped over 1024 random positions (bf16 1.8%, f16 0.5%). At 0.02: 0.7-1.6% off, 1.6% flipped
# (bf16 0.4%, f16 0), and on these 16 inputs every architecture and type agrees 16/16, the closest position's
# top-1/top-2 margin at least 3.6x its error.
ARGMAX_INIT_STD = 0.02


def _argmax_agreement(src: Path, out: Path) -> int:
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    ids = input_ids(vocab)
    return int((gguf_logits(out, ids).argmax(-1) == hf_logits(src, ids).argmax(-1)).sum())


@pytest.mark.parametrize("outtype", [pytest.param("f16", marks=pytest.mark.slow),
                                     pytest.param("bf16", marks=pytest.mark.slow), "q8_0"])
def test_reduced_precision_argmax_llama(outtype, random_model, tmp_path):
    src = random_model("llama", init_std=ARGMAX_INIT_STD)
    out = tmp_path / "m.gguf"
    convert(src, out, "--outtype", outtype)
    assert _argmax_agreement(src, out) >= 15


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "llama"])
def test_reduced_precision_argmax_all(arch, outtype, random_model, tmp_path):
    src = random_model(arch, init_std=ARGMAX_INIT_STD)
    out = tmp_path / "m.gguf"
    convert(src, out, "--outtype", outtype)
    assert _argmax_agreement(src, out) >= 15


def test_q8_0_tensors_are_q8_0(random_model, tmp_path):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    out = tmp_path / "m.gguf"
    convert(random_model("llama"), out, "--outtype", "q8_0")
    types = {t.name: Q(t.tensor_type) for t in GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["token_embd.weight"] == Q.Q8_0
    assert types["blk.0.attn_norm.weight"] == Q.F32  # llama.cpp keeps norms in F32


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_moe_routers_stay_f32(arch, random_model, tmp_path):
    """llama.cpp keeps MoE routers and the shared expert's gate in F32 whatever --outtype says; the
    experts and the rest follow --outtype. Planned for every type; one file written and read back."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    from converters.gguf.base import open_model
    from converters.gguf.stream import plan
    from converters.gguf.types import OUTTYPES

    src = random_model(arch)
    ckpt, fam = open_model(str(src), None, False)
    routers = {"blk.0.ffn_gate_inp.weight", "blk.1.ffn_gate_inp.weight"}
    if arch == "qwen2_moe":
        routers |= {"blk.0.ffn_gate_inp_shexp.weight", "blk.1.ffn_gate_inp_shexp.weight"}
    for outtype in ("f16", "bf16", "q8_0"):
        types = {p.job.name: p.qtype for p in plan(fam.jobs(), ckpt, OUTTYPES[outtype])}
        assert routers <= types.keys()
        assert {n: types[n] for n in routers} == {n: Q.F32 for n in routers}, outtype
        assert types["blk.0.ffn_up_exps.weight"] == OUTTYPES[outtype]
    out = tmp_path / "m.gguf"
    convert(src, out, "--outtype", "q8_0")
    written = {t.name: Q(t.tensor_type) for t in GGUFReader(str(out)).tensors}
    assert {n: written[n] for n in routers} == {n: Q.F32 for n in routers}
    assert written["blk.0.ffn_down_exps.weight"] == Q.Q8_0


# ---- tokenizer ------------------------------------------------------------------------------------
# ---- streaming: the fast paths write what the plain path writes ---------------------------------
def _recast(src: Path, dst: Path, dtype: str) -> Path:
    """A copy of the model at ``src`` with its weights stored as ``dtype`` (float16, bfloat16)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = {k: v.to(getattr(torch, dtype)) for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_chunked_and_copied_tensors_equal_whole_ones(arch, random_model, tmp_path, monkeypatch):
    """Row chunks across threads, kernel copies and their read/write fallback, and Q/K rows gathered in
    chunks (or written in rope order by pwritev, in spans of a few rows, with short writes resumed), into a file
    whose data extent was not reserved beforehand, give the same bytes as encoding each tensor whole, for f32 and bf16
    checkpoints and every output type."""
    from converters import streaming
    from converters.gguf import base, stream

    sources = {"f32": random_model(arch), "bf16": _recast(random_model(arch), tmp_path / "bf16", "bfloat16")}

    def run(src: Path, outtype: str, name: str) -> bytes:
        out = tmp_path / name
        base.convert(str(src), str(out), adapter=None, allow_pickle=False, force=True, progress=False,
                     outtype=outtype)
        return out.read_bytes()

    for kind, src in sources.items():
        for outtype in ("f32", "f16", "bf16", "q8_0"):
            whole = run(src, outtype, "whole.gguf")
            with monkeypatch.context() as m:
                m.setattr(streaming, "_CHUNK", 96)  # several chunks per row block, ragged last chunk
                m.setattr(streaming.os, "copy_file_range", _no_copy_file_range, raising=False)
                m.setattr(streaming, "_ROWS_BUFFER", 1000)  # a few rows per span: spans cut inside a head
                m.setattr(streaming.os, "pwritev", _short_pwritev, raising=False)
                m.setattr(stream, "preallocate", lambda fd, start, end: False)  # the data's extent not reserved
                chunked = run(src, outtype, "chunked.gguf")
            assert chunked == whole, (kind, outtype)
            if outtype in ("f16", "q8_0"):  # q/k reordered as whole tensors, not gathered by rows
                found, row_order = [], stream._row_order
                with monkeypatch.context() as m:
                    m.setattr(stream, "_row_order", lambda *a, f=found, r=row_order: f.append(r(*a)))
                    assert run(src, outtype, "whole-qk.gguf") == whole, (kind, outtype)
                n_layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
                assert sum(r is not None for r in found) == 2 * n_layers  # every q and k was gathered above


def test_preallocate_reserves_the_range(tmp_path):
    """converters.streaming.preallocate: on Linux the file takes the reserved size (what the GGUF writer then fills
    exactly) with its blocks allocated; an empty range does nothing."""
    from converters.streaming import preallocate

    path = tmp_path / "f"
    with path.open("wb") as fh:
        fh.write(b"head")
        fh.flush()
        assert not preallocate(fh.fileno(), 4, 4)
        done = preallocate(fh.fileno(), 4, 4 + (1 << 20))
    if sys.platform.startswith("linux"):
        assert done and path.stat().st_size == 4 + (1 << 20) and path.stat().st_blocks * 512 >= 1 << 20
        assert path.read_bytes() == b"head" + bytes(1 << 20)


def test_bulk_array_packing_writes_what_gguf_writes(tmp_path):
    """The writer's one-step packing of str/float/int arrays gives gguf's bytes, and leaves to gguf (with its
    error) what it cannot pack exactly."""
    import gguf

    from converters.gguf.stream import Writer

    arrays = {"tokens": [f"t\u2581{i}\u00e9" for i in range(300)] + ["", "<s>"],
              "scores": [i * -0.37 for i in range(300)] + [float("nan"), -0.0, 1e-45, float("inf")],
              "types": [i % 7 for i in range(300)] + [-(2 ** 31), 2 ** 31 - 1], "bools": [True, False],
              "one": ["x"], "int32 overflow": [1, 2 ** 31], "int64 overflow": [1, 2 ** 70],
              "float32 overflow": [1.0, 1e300], "mixed": [1, 2.0], "numpy": [np.float32(1), np.float32(2)]}

    def pack(cls, key):
        path = tmp_path / f"{cls.__name__}.gguf"
        w = cls(path, "llama")
        w.add_array(key, arrays[key])
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
        except Exception as err:
            return type(err)
        finally:
            w.close()
        return path.read_bytes()

    for key in arrays:
        assert pack(Writer, key) == pack(gguf.GGUFWriter, key), key


def _short_pwritev(fd, buffers, offset):
    """os.pwritev that writes only part of its first buffer, as a short write may."""
    first = buffers[0]
    return os.pwrite(fd, first[:max(1, len(first) // 2)], offset)


def _no_copy_file_range(*args):
    import errno

    raise OSError(errno.EXDEV, "cross-device link")


def test_copy_path_is_taken_and_torch_is_not_imported(random_model, tmp_path):
    """An f16 checkpoint to F16 copies every untransformed matrix as stored, and the whole conversion
    runs with torch made unimportable (the CLI process and the tokenizer's child)."""
    src = _recast(random_model("llama", init_std=ARGMAX_INIT_STD), tmp_path / "f16", "float16")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {"PYTHONPATH": str(hook) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "m.gguf"
    proc = run_cli("convert", str(src), "--to", "gguf", "--outtype", "f16", "-o", str(out), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    # q/k are permuted and norms stay F32; every other matrix is copied
    n_layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    assert summary["copied"] == summary["types"]["F16"] - 2 * n_layers
    ids = input_ids(json.loads((src / "config.json").read_text())["vocab_size"])
    assert int((gguf_logits(out, ids).argmax(-1) == hf_logits(src, ids).argmax(-1)).sum()) >= 15


def test_tokenizer_facts_same_in_child_process(tiny_dir, random_model, tmp_path):
    """The tokenizer measured in a child process without torch equals the one measured in this process."""
    from dataclasses import asdict

    from converters.gguf import hf_tokenizer
    from edgekit.models.random import build

    spm = build("llama", tmp_path / "spm", tokenizer="sentencepiece")
    for d in (tiny_dir, random_model("qwen2"), spm):
        assert asdict(hf_tokenizer.start(d, child=True).result()) == asdict(hf_tokenizer.measure(d)), d


def test_tokenizer_child_reads_transformers_model_files_once():
    """edgekit.child's import hook: in a tokenizer child, transformers' second scan of its model directories (by
    transformers.models, after transformers) is served from the cache. Fails when a transformers release changes what
    the hook works around (then drop or adapt it)."""
    code = ("import sys; from edgekit.child import _WholeImportCache; sys.modules['torch'] = None; "
            "sys.meta_path.insert(0, _WholeImportCache()); import transformers, transformers.models; "
            "from transformers.utils import import_utils as iu; i = iu.create_import_structure_from_path.cache_info(); "
            "print(i.hits, i.misses, i.maxsize)")
    from edgekit.child import env

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    hits, _, maxsize = proc.stdout.split()
    assert maxsize == "None" and int(hits) > 100, proc.stdout  # without the hook: maxsize 128, 0 hits


def test_tokenizer_job_errors_same_from_child_and_thread(tiny_dir, tmp_path):
    """edgekit.child.Job: the function's EdgekitError reaches the caller whole from a child as from a thread; a
    child that dies without an answer is one error naming its last stderr line."""
    from converters.gguf import hf_tokenizer
    from edgekit.child import Job
    from edgekit.errors import EdgekitError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "tokenizer.json").write_text("{not json")
    errors = []
    for child in (True, False):
        with pytest.raises(EdgekitError) as err:
            hf_tokenizer.start(broken, child=child).result()
        errors.append((err.value.what, err.value.fix))
    assert errors[0] == errors[1] and errors[0][0].startswith(f"cannot load the tokenizer in {broken}"), errors
    with pytest.raises(EdgekitError, match="measuring failed: .*No module named edgekit.nothing; fix it"):
        Job("edgekit.nothing", len, [], "measuring failed", "fix it", child=True).result()


def _tokenizer_parity(src: Path, gguf_path: Path, texts: list[str]) -> list[tuple[str, list[int], list[int]]]:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(src))
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    bad = []
    for text in texts:
        ref = hf.encode(text)
        got = llm.tokenize(text.encode(), add_bos=True, special=True)
        if ref != got:
            bad.append((text, ref, got))
    return bad


def _heldout_paragraphs(n: int) -> list[str]:
    from edgekit.models.random import sample_text

    paras = [p for p in sample_text().split("\n\n") if p.strip()]
    step = max(1, len(paras) // n)
    return paras[::step][:n]


def test_tokenizer_parity_random_bpe(random_model, tmp_path):
    src = random_model("qwen2")
    out = tmp_path / "m.gguf"
    summary = convert(src, out, "--outtype", "f16")
    assert summary["tokenizer"]["model"] == "gpt2" and summary["tokenizer"]["pre"] == "gpt-2"
    assert summary["tokenizer"]["pre_check"] == "unknown hash"  # llama.cpp's own converter would refuse it
    assert _tokenizer_parity(src, out, PROBES + _heldout_paragraphs(40)) == []


def test_tokenizer_parity_sentencepiece(tmp_path):
    import sentencepiece as spm

    from edgekit.models.random import build

    # mistral: transformers loads it with tokenizer.json's Metaspace as saved (prepend_scheme=always), the
    # Llama 2 / Mistral behaviour llama.cpp implements; LlamaTokenizer in transformers 5 forces
    # prepend_scheme=first, which GGUF cannot express (the converter reports it in pre_check)
    src = build("mistral", tmp_path / "spm", tokenizer="sentencepiece")
    out = tmp_path / "m.gguf"
    summary = convert(src, out, "--outtype", "f32")
    assert summary["tokenizer"]["model"] == "llama" and summary["tokenizer"]["add_bos"] is True
    assert summary["tokenizer"]["pre_check"] is None
    # tokenizers' Metaspace does not prepend "▁" to a text that already starts with a space, while
    # sentencepiece (and llama.cpp) always do: for those texts the sentencepiece library is the reference
    leading = [p for p in PROBES if p.startswith(" ")]
    assert _tokenizer_parity(src, out, [p for p in PROBES if p not in leading] + _heldout_paragraphs(40)) == []
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    for text in leading:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == [sp.bos_id()] + sp.encode(text)
    ids = input_ids(json.loads((src / "config.json").read_text())["vocab_size"])
    assert rel_diff(gguf_logits(out, ids), hf_logits(src, ids)) <= 1e-3


@pytest.mark.slow
def test_unknown_hash_derived_pre_tokenizers(random_model, tmp_path):
    """Fresh vocabularies (llama.cpp's hash table cannot know them) get the pre-tokenizer they declare."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from converters.gguf import pretokenizer
    from edgekit.models.random import SPECIALS, sample_text

    def split_then_bytes(regex: str):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    cases = {
        "llama-bpe": split_then_bytes(pretokenizer.LLAMA3),
        "qwen2": split_then_bytes(pretokenizer.QWEN2),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    }
    for name, pre in cases.items():
        tok = Tokenizer(models.BPE(ignore_merges=name == "llama-bpe"))
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(sample_text().split("\n\n"), trainer=trainer)
        src = tmp_path / name
        shutil.copytree(random_model("llama"), src)
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[0],
                                clean_up_tokenization_spaces=False).save_pretrained(src)
        out = tmp_path / f"{name}.gguf"
        summary = convert(src, out, "--outtype", "f16")
        assert summary["tokenizer"]["pre"] == name and summary["tokenizer"]["pre_check"] == "unknown hash"
        assert _tokenizer_parity(src, out, PROBES + _heldout_paragraphs(20)) == [], name


def test_unknown_pre_tokenizer_is_refused(random_model, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(random_model("llama"), src)
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{L}+|[0-9]{1,5}|\s"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (src / "tokenizer.json").write_text(json.dumps(tj))
    out = tmp_path / "out.gguf"
    proc = run_cli("convert", str(src), "--to", "gguf", "-o", str(out))
    assert_one_line_error(proc, "pre-tokenizer", "no llama.cpp equivalent")
    assert not out.exists() and not list(tmp_path.glob(".out.gguf.tmp-*"))


def test_chat_template_round_trip(random_model, tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    src = random_model("llama")
    out = tmp_path / "m.gguf"
    convert(src, out, "--outtype", "f16")
    meta = metadata(out)
    template = (src / "chat_template.jinja").read_text()
    assert meta["tokenizer.chat_template"] == template
    hf = AutoTokenizer.from_pretrained(str(src))
    expected = hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    bos = llm.detokenize([llm.token_bos()]).decode()
    eos = llm.detokenize([llm.token_eos()]).decode()
    formatter = Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    assert formatter(messages=CONVERSATION).prompt == expected


# ---- real models ----------------------------------------------------------------------------------
def _real_model_checks(src: Path, tmp_path: Path, n_paragraphs: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m-f16.gguf"
    convert(src, out, "--outtype", "f16")
    assert _tokenizer_parity(src, out, PROBES + _heldout_paragraphs(n_paragraphs)) == []
    hf = AutoTokenizer.from_pretrained(str(src))
    prompt = hf.apply_chat_template([{"role": "user", "content": "Tell me about Anne Elliot."}], tokenize=False,
                                    add_generation_prompt=True)
    ids = hf.encode(prompt, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                             min_new_tokens=32)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(str(out), n_ctx=512, n_threads=2, verbose=False)
    got = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        got.append(tok)
        if len(got) == 32:
            break
    assert got == ref
    from edgekit.tokenizer import chat_template

    assert metadata(out)["tokenizer.chat_template"] == chat_template(src)


@pytest.mark.slow
def test_smollm2_greedy_and_tokenizer(smollm2_dir, tmp_path):
    _real_model_checks(smollm2_dir, tmp_path, 200)


def test_tiny_greedy_and_tokenizer(tiny_dir, tmp_path):
    if not (tiny_dir / "model.safetensors").exists():
        pytest.skip("edgekit-tiny is not trained yet (edgekit/data/tiny/model.safetensors missing)")
    _real_model_checks(tiny_dir, tmp_path, 100)


# ---- LoRA -----------------------------------------------------------------------------------------
def _make_adapter(src: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                     init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(str(out))
    return out


def test_lora_merged_and_adapter_only(random_model, tmp_path):
    src = random_model("llama")
    adapter = _make_adapter(src, tmp_path / "adapter")
    ids = input_ids(json.loads((src / "config.json").read_text())["vocab_size"])
    ref = hf_logits(src, ids, adapter=adapter)
    base_only = hf_logits(src, ids)
    assert rel_diff(base_only, ref) > 1e-2  # the adapter changes the model measurably

    merged = tmp_path / "merged.gguf"
    convert(src, merged, "--outtype", "f32", "--adapter", str(adapter))
    merged_logits = gguf_logits(merged, ids)
    assert rel_diff(merged_logits, ref) <= 1e-3
    assert metadata(merged)["edgekit.adapter"]

    base = tmp_path / "base.gguf"
    convert(src, base, "--outtype", "f32")
    lora = tmp_path / "lora.gguf"
    summary = convert(src, lora, "--outtype", "f32", "--adapter", str(adapter), "--adapter-only")
    assert summary["lora_pairs"] == 2 * 5
    from gguf import GGUFReader

    fields = GGUFReader(str(lora)).fields
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
    applied = gguf_logits(base, ids, lora_path=str(lora))
    assert rel_diff(applied, merged_logits) <= 1e-3


# ---- bad input ------------------------------------------------------------------------------------
def _no_leftovers(directory: Path, name: str) -> None:
    assert not (directory / name).exists()
    assert not list(directory.glob(f".{name}.tmp-*"))


def test_gguf_refuses_what_llama_cpp_cannot_represent(random_model, tmp_path):
    """llama.cpp fixes gemma3's attention scale at 1/sqrt(head_dim): another query_pre_attn_scalar is refused."""
    out = tmp_path / "m.gguf"
    proc = run_cli("convert", str(random_model("gemma3_text", query_pre_attn_scalar=40)), "--to", "gguf", "-o",
                   str(out))
    assert_one_line_error(proc, "query_pre_attn_scalar", "onnx")
    _no_leftovers(tmp_path, "m.gguf")


def test_unsupported_architecture(random_model, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(random_model("llama"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(model_type="falcon", architectures=["FalconForCausalLM"])
    (src / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli("convert", str(src), "--to", "gguf", "-o", str(tmp_path / "o.gguf")),
                          "falcon", "not supported")
    _no_leftovers(tmp_path, "o.gguf")


def test_no_tokenizer_files(random_model, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(random_model("llama"), src)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).unlink()
    assert_one_line_error(run_cli("convert", str(src), "--to", "gguf", "-o", str(tmp_path / "o.gguf")),
                          "no tokenizer")
    _no_leftovers(tmp_path, "o.gguf")


def test_truncated_safetensors(random_model, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(random_model("llama"), src)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    assert_one_line_error(run_cli("convert", str(src), "--to", "gguf", "-o", str(tmp_path / "o.gguf")),
                          "truncated")
    _no_leftovers(tmp_path, "o.gguf")


def test_output_exists_and_force(random_model, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"keep me")  # not a GGUF: edgekit did not write it, so not even --force replaces it
    for force in ((), ("--force",)):
        proc = run_cli("convert", str(random_model("llama")), "--to", "gguf", "-o", str(out), *force)
        assert_one_line_error(proc, "did not write", "choose a new path")
        assert "--force" not in proc.stderr
    assert out.read_bytes() == b"keep me"


def test_destination_not_writable(random_model, tmp_path):
    if os.geteuid() == 0:
        # root ignores directory permissions; a path under a regular file is unwritable for everyone
        blocker = tmp_path / "file"
        blocker.write_text("x")
        dest = blocker / "sub" / "o.gguf"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        dest = ro / "o.gguf"
    proc = run_cli("convert", str(random_model("llama")), "--to", "gguf", "-o", str(dest))
    assert_one_line_error(proc, "output directory")
    assert not dest.exists()


def test_disk_full_while_writing(random_model, tmp_path):
    """ENOSPC in the middle of the tensor data (GGUFWriter's padding after each tensor patched to raise it,
    loaded by sitecustomize)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, gguf\n"
        "_orig = gguf.GGUFWriter.write_padding\n"
        "_n = [0]\n"
        "def _full(self, *a, **k):\n"
        "    _n[0] += 1\n"
        "    if _n[0] > 5:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return _orig(self, *a, **k)\n"
        "gguf.GGUFWriter.write_padding = _full\n")
    env = {"PYTHONPATH": str(hook) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "o.gguf"
    proc = run_cli("convert", str(random_model("llama")), "--to", "gguf", "-o", str(out), env=env)
    assert_one_line_error(proc, "disk full")
    _no_leftovers(tmp_path, "o.gguf")
