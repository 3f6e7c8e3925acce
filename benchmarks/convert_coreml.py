"""Core ML conversion: wall time and peak RSS for edgekit-tiny and SmolLM2-135M-Instruct.

Each conversion runs in its own child process (``edgekit convert --to coreml``), so the peak RSS is
that conversion's alone: the child's ``ru_maxrss`` from ``resource.getrusage(RUSAGE_CHILDREN)`` read
after it exits (the only child at that moment). There is no reference tool to compare with on Linux
(Apple's recipe is a hand-written script per model); the figures are edgekit's alone. Time includes
interpreter start and imports (torch, transformers, coremltools: a few seconds).

    python benchmarks/convert_coreml.py [--precision fp16|fp32] [--context N]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(model: Path, out: Path, extra: list[str]) -> dict:
    exe = Path(sys.executable).with_name("edgekit")
    cmd = [str(exe), "convert", str(model), "--to", "coreml", "-o", str(out), "--force", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"conversion of {model} failed: {proc.stderr.strip().splitlines()[-1]}")
    # ru_maxrss of the children reaped so far: kilobytes on Linux, bytes on macOS
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak_mb = maxrss / (1 << 20) if sys.platform == "darwin" else maxrss / 1024
    size = sum(p.stat().st_size for p in (out / "model.mlpackage").rglob("*") if p.is_file())
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "package_mb": size / 1e6}


def _child(model: str, out: str, extra: list[str]) -> None:
    """Run one measurement in a fresh process, so RUSAGE_CHILDREN covers exactly one conversion."""
    r = measure(Path(model), Path(out), extra)
    print(f"{r['seconds']:.3f} {r['peak_rss_mb']:.1f} {r['package_mb']:.3f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--context", type=int)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    extra = ["--precision", args.precision] + (["--context", str(args.context)] if args.context else [])
    if args.child:
        _child(args.child[0], args.child[1], extra)
        return 0
    from edgekit.models import smollm2, tiny_path

    models = {"edgekit-tiny": tiny_path(), "SmolLM2-135M-Instruct": smollm2.ensure()}
    print(f"{'model':24} {'precision':9} {'seconds':>8} {'peak RSS MB':>12} {'package MB':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models.items():
            if not (path / "model.safetensors").exists():
                print(f"{name:24} skipped: {path / 'model.safetensors'} missing")
                continue
            out = Path(tmp) / name
            line = subprocess.run([sys.executable, __file__, "--child", str(path), str(out), *argv],
                                  capture_output=True, text=True, check=True).stdout.split()
            seconds, rss, size = (float(x) for x in line)
            print(f"{name:24} {args.precision:9} {seconds:8.1f} {rss:12.0f} {size:11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
