"""edgekit convert --to gguf vs llama.cpp's convert_hf_to_gguf.py: wall time and peak RSS.

The model is a random 1B-shaped Llama checkpoint in fp16 (hidden 2048, 16 layers, 32/8 heads,
intermediate 8192, vocab 32000), built once into a cache directory outside git
($EDGEKIT_BENCH_CACHE, default ~/.cache/edgekit/bench). Its tokenizer is a SentencePiece model
(padded to 32000 entries), which llama.cpp's converter accepts without a pre-tokenizer hash.

llama.cpp comes from a checkout named by $LLAMA_CPP_DIR (the llama-cpp-python sdist vendors one under
vendor/llama.cpp/); without it the llama.cpp half is skipped with a message. Each converter runs in
its own process, measured by a wrapper process (wall clock; ru_maxrss, the largest process; the
sampled peak of the process tree's summed RSS, each address space counted once), after a plain copy of
the weights has put them in the page cache for both. Each writes a new file in a fresh directory.

    LLAMA_CPP_DIR=/path/to/llama.cpp python benchmarks/convert_gguf.py [f16|q8_0 ...] [--rounds N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("EDGEKIT_BENCH_CACHE", Path.home() / ".cache" / "edgekit" / "bench"))
MODEL = CACHE / "llama-1b-fp16"
SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
             rope_theta=10000.0, tie_word_embeddings=False)
# wall clock; peak RSS of the largest process (ru_maxrss of the waited-for descendants: the kernel's exact high-water
# mark); and the peak of the summed RSS of the process tree's distinct address spaces, sampled every 10 ms (edgekit
# measures the tokenizer in short-lived child processes, so the sum is the fair figure). Python starts a child with
# vfork: until the child's exec it shares its parent's address space and /proc reports the parent's whole RSS for it
# too, so a sample in that window counted the parent twice (SmolLM2 GPTQ: 2075 MB for a 1.1 GB process). A process
# whose address space is one already counted (kcmp(2) KCMP_VM; hand-written: psutil has no such query) is skipped.
_TREE_RSS = """\
import ctypes, platform, sys, psutil
KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine()) if sys.platform == "linux" else None
libc = ctypes.CDLL(None, use_errno=True) if KCMP else None
def same_vm(a, b):
    return libc is not None and libc.syscall(KCMP, a, b, 1, 0, 0) == 0  # 1: KCMP_VM, 0: one address space
def tree_rss(procs):
    counted, total = [], 0
    for q in procs:
        try:
            if any(same_vm(q.pid, c) for c in counted):
                continue
            total += q.memory_info().rss
            counted.append(q.pid)
        except psutil.Error:
            pass
    return total
"""
_MEASURE = _TREE_RSS + """\
import resource, subprocess, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
proc, tree = psutil.Process(p.pid), 0
while p.poll() is None:
    try:
        tree = max(tree, tree_rss([proc, *proc.children(recursive=True)]))
    except psutil.Error:
        pass
    time.sleep(0.01)
err = p.stderr.read(); dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, tree // 1024, p.returncode)
sys.stderr.write(err[-2000:] if p.returncode else "")
"""


def build_model() -> Path:
    """The benchmark checkpoint, built once (about 2.2 GB of fp16 safetensors)."""
    if (MODEL / "model.safetensors").exists():
        return MODEL
    import torch
    import transformers
    from safetensors.torch import save_file

    from edgekit.models.random import CHAT_TEMPLATE, sentencepiece_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="llama-1b-", dir=CACHE if CACHE.exists() else None))
    tok = sentencepiece_tokenizer(tmp)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(tmp)
    config = transformers.LlamaConfig(**SHAPE, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config.architectures = ["LlamaForCausalLM"]
    config.torch_dtype = "float16"
    config.save_pretrained(tmp)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.float16) for k, s in shapes.items()}
    for k in tensors:
        if k.endswith("norm.weight"):
            tensors[k] = torch.ones_like(tensors[k])
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    CACHE.mkdir(parents=True, exist_ok=True)
    if MODEL.exists():
        shutil.rmtree(MODEL)
    tmp.rename(MODEL)
    return MODEL


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(seconds, peak RSS of the largest process in MB, peak RSS of the process tree in MB) of ``cmd``."""
    os.sync()  # neither run pays for writing back the other's output
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, check=True)
    seconds, rss_kb, tree_kb, rc = out.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{cmd[0]} failed ({rc}): {out.stderr.strip().splitlines()[-1:]}")
    return float(seconds), int(rss_kb) / 1024, int(tree_kb) / 1024


def page_in(model: Path) -> float:
    """Read (and write) the weights once: the plain-copy baseline, and warm cache for both converters."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=CACHE) as d:
        shutil.copyfile(model / "model.safetensors", Path(d) / "copy")
    return time.perf_counter() - t


def measure_fresh(cmd: list[str], out: Path) -> tuple[float, float, float]:
    """:func:`measure` writing a new ``out`` (file or directory), deleted (and its deletion synced) afterwards."""
    try:
        return measure(cmd)
    finally:
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink(missing_ok=True)
        os.sync()


def main(outtypes: list[str], rounds: int) -> int:
    model = build_model()
    llama_dir = os.environ.get("LLAMA_CPP_DIR")
    script = Path(llama_dir) / "convert_hf_to_gguf.py" if llama_dir else None
    have_llama = script is not None and script.exists()
    copy = page_in(model)
    size = (model / "model.safetensors").stat().st_size
    print(f"model: {model} ({size / 1e9:.2f} GB fp16); plain copy of the weights: {copy:.1f} s; "
          f"median of {rounds} alternating rounds, peak RSS the largest seen; load average {os.getloadavg()[0]:.1f}")
    edgekit = str(Path(sys.executable).with_name("edgekit"))
    with tempfile.TemporaryDirectory(dir=CACHE) as d:
        for outtype in outtypes:
            sides = {"edgekit": ([edgekit, "convert", str(model), "--to", "gguf", "--outtype", outtype, "-o",
                                  str(Path(d) / f"edgekit-{outtype}.gguf")], Path(d) / f"edgekit-{outtype}.gguf")}
            if have_llama:
                out = Path(d) / f"llamacpp-{outtype}.gguf"
                sides["llamacpp"] = ([sys.executable, str(script), str(model), "--outtype", outtype, "--outfile",
                                      str(out)], out)
            row = compare(sides, rounds)
            # the machine's load while it ran: ratios measured under load are not the quiet figures
            print(json.dumps({"outtype": outtype, **row, "loadavg_1m": round(os.getloadavg()[0], 1)}), flush=True)
    if not have_llama:
        print("llama.cpp: skipped (set LLAMA_CPP_DIR to a llama.cpp checkout holding convert_hf_to_gguf.py; "
              "the llama-cpp-python sdist has one under vendor/llama.cpp)")
    return 0


def compare(sides: dict[str, tuple[list[str], Path]], rounds: int) -> dict[str, Any]:
    """Run each side's (command, output) once per round, alternating; per side its median seconds, largest
    peak RSS and tree RSS (MB) and every run's seconds, then the first side's ratios to the second's."""
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (cmd, out) in sides.items():
            runs[name].append(measure_fresh(cmd, out))
    row: dict[str, Any] = {}
    for name, r in runs.items():
        row.update({f"{name}_s": round(statistics.median(x[0] for x in r), 2),
                    f"{name}_rss_mb": round(max(x[1] for x in r)), f"{name}_tree_rss_mb": round(max(x[2] for x in r)),
                    f"{name}_runs_s": [round(x[0], 2) for x in r]})
    if len(runs) == 2:
        a, b = list(runs)
        for key, suffix in (("time_ratio", "_s"), ("rss_ratio", "_rss_mb"), ("tree_rss_ratio", "_tree_rss_mb")):
            row[key] = round(row[a + suffix] / row[b + suffix], 2)
    return row


def kinds_and_rounds(argv: list[str], default: list[str]) -> tuple[list[str], int]:
    """``[KIND ...] [--rounds N]`` (3 rounds unless told)."""
    args, n = list(argv), 3
    if "--rounds" in args:
        at = args.index("--rounds")
        n = int(args[at + 1])
        del args[at:at + 2]
    return args or default, n


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(*kinds_and_rounds(sys.argv[1:], ["f16", "q8_0"])))
