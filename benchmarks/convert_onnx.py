"""ONNX export of a 1B-shaped checkpoint: wall time and peak RSS, fp32 (past the 2 GiB protobuf limit) and fp16.

The checkpoint is random fp16 Llama weights in the shape of a 1B model (hidden 2048, 16 layers,
32 heads / 8 KV heads, intermediate 5632, vocab 32000: 0.85 B parameters, 1.7 GB), built once into
``$EDGEKIT_CACHE/bench/llama-1b-random`` (outside git; default ``~/.cache/edgekit``). Each export runs
in its own child process (``edgekit convert --to onnx``) and its peak RSS is that child's
``ru_maxrss``, printed beside its peak anonymous RSS (RSS also counts the memory-mapped checkpoint's
file pages, which the kernel reclaims at will). optimum's exporter cannot be installed beside
transformers 5 (optimum-onnx pins transformers<4.58), so there is no side-by-side figure for it here.

    python benchmarks/convert_onnx.py [--dtype fp32|fp16 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048)


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit").expanduser() / "bench"


def build_1b_llama(out: Path | None = None, seed: int = 0) -> Path:
    """The 1B-shaped random fp16 Llama checkpoint (config.json + model.safetensors), built once."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    out = out or cache_dir() / "llama-1b-random"
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    config = LlamaConfig(**SHAPE, tie_word_embeddings=False, rms_norm_eps=1e-5, torch_dtype="float16",
                         bos_token_id=1, eos_token_id=2)
    config.architectures = ["LlamaForCausalLM"]
    gen = torch.Generator().manual_seed(seed)
    h, i, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    kv = h // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.float16)

    tensors = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": torch.ones(h, dtype=torch.float16),
               "lm_head.weight": rand(v, h)}
    for n in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors.update({p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
                        p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
                        p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
                        p + "mlp.down_proj.weight": rand(h, i),
                        p + "input_layernorm.weight": torch.ones(h, dtype=torch.float16),
                        p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.float16)})
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp)
    tmp.rename(out)
    return out


def measure(model: Path, out: Path, extra: list[str]) -> dict:
    exe = Path(sys.executable).with_name("edgekit")
    cmd = [str(exe), "convert", str(model), "--to", "onnx", "-o", str(out), "--force", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    anon = _watch_anon_rss(proc.pid, proc)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"export failed: {stderr.strip().splitlines()[-1]}")
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = maxrss / (1 << 20) if sys.platform == "darwin" else maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "peak_anon_mb": anon, "bytes": json.loads(stdout)["bytes"]}


def _watch_anon_rss(pid: int, proc: subprocess.Popen) -> float:
    """Peak RssAnon (MiB) sampled every 50 ms from /proc: RSS also counts the memory-mapped checkpoint's
    file pages, which the kernel can drop at will; the anonymous part is what the export really allocates.
    -1 where /proc is not available. (The child's stdout is small: --json summary only.)"""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return -1.0
    peak = 0
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    return peak / 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", choices=["fp32", "fp16"], default=["fp32", "fp16"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one export per process, so RUSAGE_CHILDREN covers exactly that export
        r = measure(Path(args.child[0]), Path(args.child[1]), ["--dtype", args.child[2]])
        print(f"{r['seconds']:.3f} {r['peak_rss_mb']:.1f} {r['peak_anon_mb']:.1f} {r['bytes']}")
        return 0
    t0 = time.perf_counter()
    model = build_1b_llama()
    print(f"checkpoint {model} ready in {time.perf_counter() - t0:.1f} s "
          f"({(model / 'model.safetensors').stat().st_size / 1e9:.2f} GB)")
    print(f"{'dtype':6} {'seconds':>8} {'peak RSS MB':>12} {'of it anon MB':>14} {'output GB':>10}")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        for dtype in args.dtype:
            line = subprocess.run([sys.executable, __file__, "--child", str(model), str(Path(tmp) / dtype), dtype],
                                  capture_output=True, text=True, check=True).stdout.split()
            seconds, rss, anon, size = float(line[0]), float(line[1]), float(line[2]), int(line[3])
            print(f"{dtype:6} {seconds:8.1f} {rss:12.0f} {anon:14.0f} {size / 1e9:10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
