"""edgekit quantize / eval against llama.cpp's own path, in the same run: wall time and peak RSS.

- ``edgekit quantize --to gguf --method q4_k_m --no-imatrix`` vs llama.cpp's ``convert_hf_to_gguf.py --outtype f16``
  followed by ``llama-quantize ... Q4_K_M`` (times summed, peak RSS the larger), on the 1B-shaped checkpoint of
  benchmarks/convert_gguf.py. Peak RSS is the sampled sum over the whole process tree. edgekit runs
  ``llama_model_quantize`` in 64 MiB slabs of rows (llama-quantize's ``--max-buffer-size``; same bytes), the
  reference at its defaults (a whole tensor at once), as a user runs it;
- ``edgekit quantize --to onnx --method rtn --type int4`` on the same checkpoint (edgekit alone: onnxruntime has
  no exporter from a Hugging Face checkpoint to compare with);
- ``edgekit eval`` vs ``llama-perplexity`` on the same GGUF (edgekit-tiny q4_0) and text (held-out Persuasion),
  10 windows of 512 tokens.

One round each (the 1B jobs read and write ~3 GB each; a few minutes in all on a quiet machine).

llama.cpp's converter comes from $LLAMA_CPP_DIR (default: the copy of the vendored convert_hf_to_gguf.py and gguf-py
that ``make llama-tools`` keeps beside its binaries) and its tools from ``make llama-tools``; without them that half
is skipped.

- ``edgekit quantize --method awq`` on SmolLM2 with 128 x 512 calibration tokens (the default calibration text
  repeated to reach them: this row measures time and memory, not quality; goal <= 10 min and <= 2 GB);
  ``--awq-1b`` adds the 1B-shaped checkpoint (peak RSS against its fp16 size), ``--awq-1b-only`` runs that one alone.

- ``--gptq``: ``edgekit quantize --method gptq`` alone (no other tool runs GPTQ onto these grids on the CPU), on
  SmolLM2 with 128 x 512 calibration tokens (the bundled calibration text, repeated to 65k tokens), to Q4_0:
  wall time, peak RSS and the per-linear ||WX - ŴX||² ratio GPTQ / RTN from the manifest; ``--gptq-1b`` adds the
  1B-shaped checkpoint (peak RSS against its fp16 size: the pass is layer by layer).

The GPTQ and AWQ rows also give ``edgekit_cpu_s`` (CPU seconds of the whole process tree, which a loaded machine
does not inflate as it does wall time), the 1-minute load average, and two peaks of memory: ``edgekit_rss_mb``, the
edgekit process's own (the kernel's high-water mark, exact), and ``edgekit_tree_rss_mb``, the process tree's summed
RSS sampled every 10 ms with each address space counted once (a child between vfork and exec shares its parent's:
see benchmarks/convert_gguf.py); the goal is on the latter.

    python benchmarks/quantize.py [--skip-1b] [--awq | --awq-only] [--awq-samples=128] [--awq-1b | --awq-1b-only]
    python benchmarks/quantize.py --gptq [--gptq-1b] [--gptq-samples=128]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from convert_gguf import CACHE, build_model, measure, measure_fresh, page_in  # noqa: E402

from edgekit.testing import llama_tools  # noqa: E402

CHUNKS = "10"


def edgekit(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgekit.cli", *args]


def converter_script() -> Path | None:
    d = os.environ.get("LLAMA_CPP_DIR")
    if d:
        p = Path(d) / "convert_hf_to_gguf.py"
        return p if p.exists() else None
    p = llama_tools.bin_dir().parent / "convert_hf_to_gguf.py"  # kept by make llama-tools, with its gguf-py
    # a cache made before make llama-tools kept conversion/ (which the converter imports) cannot run it
    return p if p.exists() and (p.parent / "conversion").is_dir() else None


def quantize_1b(d: Path) -> None:
    model = build_model()
    page_in(model)
    out = d / "ek-q4km.gguf"
    ek = measure_fresh(edgekit("quantize", str(model), "--to", "gguf", "--method", "q4_k_m", "--no-imatrix", "-o",
                               str(out)), out)
    row = {"job": "q4_k_m 1B", "edgekit_s": round(ek[0], 2), "edgekit_tree_rss_mb": round(ek[2])}
    print(json.dumps(row), flush=True)
    script, quantizer = converter_script(), llama_tools.find("llama-quantize")
    if script and quantizer:
        f16, q = d / "lc-f16.gguf", d / "lc-q4km.gguf"
        # measure_fresh deletes its second argument afterwards: the f16 file stays for llama-quantize
        a = measure_fresh([sys.executable, str(script), str(model), "--outtype", "f16", "--outfile", str(f16)], d / "x")
        b = measure_fresh([str(quantizer), str(f16), str(q), "Q4_K_M"], q)
        f16.unlink(missing_ok=True)
        lc_s, lc_rss = a[0] + b[0], max(a[2], b[2])
        row.update(llamacpp_s=round(lc_s, 2), llamacpp_convert_s=round(a[0], 2), llamacpp_quantize_s=round(b[0], 2),
                   llamacpp_tree_rss_mb=round(lc_rss), time_ratio=round(ek[0] / lc_s, 2),
                   rss_ratio=round(ek[2] / lc_rss, 2))
        print(json.dumps(row), flush=True)
    else:
        row["llamacpp"] = "skipped: set LLAMA_CPP_DIR and run make llama-tools"
        print(json.dumps(row), flush=True)
    out = d / "ek-int4"
    ek = measure_fresh(edgekit("quantize", str(model), "--to", "onnx", "--method", "rtn", "--type", "int4", "-o",
                               str(out)), d / "x")
    subprocess.run(["rm", "-rf", str(out)], check=False)
    print(json.dumps({"job": "onnx int4 rtn 1B", "edgekit_s": round(ek[0], 2), "edgekit_tree_rss_mb": round(ek[2])}),
          flush=True)


def eval_vs_perplexity(d: Path) -> None:
    from edgekit.models import tiny_path

    text = ROOT / "edgekit" / "data" / "tiny" / "persuasion.txt"
    gguf = d / "tiny-q4_0.gguf"
    subprocess.run(edgekit("quantize", str(tiny_path()), "--to", "gguf", "--method", "rtn", "--type", "q4_0", "-o",
                           str(gguf), "--json"), check=True, capture_output=True, cwd=ROOT)
    ek = measure_fresh(edgekit("eval", str(gguf), "--text", str(text), "--ctx", "512", "--chunks", CHUNKS, "--json"),
                       d / "x")
    row = {"job": f"eval tiny q4_0, {CHUNKS} x 512", "edgekit_s": round(ek[0], 2), "edgekit_tree_rss_mb": round(ek[2])}
    tool = llama_tools.find("llama-perplexity")
    if tool:
        lc = measure_fresh([str(tool), "-m", str(gguf), "-f", str(text), "-c", "512", "--chunks", CHUNKS], d / "x")
        row.update(llamacpp_s=round(lc[0], 2), llamacpp_tree_rss_mb=round(lc[2]), time_ratio=round(ek[0] / lc[0], 2))
    print(json.dumps(row), flush=True)


def cpu_seconds() -> float:
    """User + system CPU seconds of every finished descendant (the measuring wrapper waits for the quantizer, so
    its time lands here too): the work done, which a loaded machine does not inflate the way it does wall time."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def awq_bench(d: Path, samples: int = 128, with_1b: bool = False, only_1b: bool = False) -> None:
    from edgekit.models import smollm2
    from quant import calibration

    text, _ = calibration.load_text()
    calib = d / "calib-x4.txt"
    calib.write_text("\n\n".join([text] * 4), encoding="utf-8")  # ~85k SmolLM2 tokens: 128 windows of 512
    models = [] if only_1b else [("SmolLM2", smollm2.ensure())]
    if with_1b or only_1b:
        models.append(("1B", build_model()))
    for label, model in models:
        out = d / "awq-q4_0.gguf"
        cpu = cpu_seconds()
        ek = measure_fresh(edgekit("quantize", str(model), "--to", "gguf", "--method", "awq", "--type", "q4_0",
                                   "--calib", str(calib), "--samples", str(samples), "--seqlen", "512", "-o", str(out),
                                   "--json"), out)
        row = {"job": f"awq q4_0 {label}, {samples} x 512 calibration tokens", "edgekit_s": round(ek[0], 2),
               "edgekit_cpu_s": round(cpu_seconds() - cpu, 1), "edgekit_rss_mb": round(ek[1]),
               "edgekit_tree_rss_mb": round(ek[2]), "load_avg_1m": round(os.getloadavg()[0], 1)}
        if label == "1B":
            row["fp16_checkpoint_mb"] = round(sum(f.stat().st_size for f in model.glob("*.safetensors")) / 1e6)
        else:
            row["goal"] = "<= 600 s, <= 2048 MB"
        print(json.dumps(row), flush=True)


def gptq_bench(d: Path, with_1b: bool = False, samples: int = 128) -> None:
    from edgekit.models import smollm2
    from quant import calibration

    calib = d / "calib.txt"
    calib.write_text("\n\n".join([calibration.DEFAULT.read_text(encoding="utf-8")] * 4), encoding="utf-8")
    models = [("SmolLM2-135M", smollm2.ensure())]
    if with_1b:
        models.append(("1B", build_model()))
    for label, model in models:
        out = d / "gptq.gguf"
        cmd = edgekit("quantize", str(model), "--to", "gguf", "--method", "gptq", "--type", "q4_0", "--calib",
                      str(calib), "--samples", str(samples), "--seqlen", "512", "-o", str(out), "--json")
        cpu = cpu_seconds()
        ek = measure(cmd)
        cpu = cpu_seconds() - cpu
        manifest = json.loads(out.with_name(out.name + ".edgekit.json").read_text())["quant"]
        ratios = [g / r for g, r in manifest["layer_errors"].values() if r > 0]
        row = {"job": f"gptq q4_0 {label}, {samples} x 512 calibration tokens", "edgekit_s": round(ek[0], 2),
               "edgekit_cpu_s": round(cpu, 1), "load_avg_1m": round(os.getloadavg()[0], 1),
               "edgekit_rss_mb": round(ek[1]), "edgekit_tree_rss_mb": round(ek[2]),
               "tokens": manifest["calibration"]["tokens"], "linears": len(manifest["layer_errors"]),
               "err_ratio_max": round(max(ratios), 4), "err_ratio_mean": round(sum(ratios) / len(ratios), 4)}
        if label == "1B":
            row["fp16_checkpoint_mb"] = round(sum(f.stat().st_size for f in model.glob("*.safetensors")) / 1e6)
        else:
            row["goal"] = "<= 600 s, <= 2048 MB"
        if samples == 128:  # the README's per-linear table is of the full calibration set
            (HERE / f"gptq-layer-errors-{label}.json").write_text(json.dumps(manifest["layer_errors"], indent=0))
        out.unlink(missing_ok=True)
        print(json.dumps(row), flush=True)


def main(argv: list[str]) -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    if "--gptq" in argv:
        with tempfile.TemporaryDirectory(dir=CACHE) as d:
            n = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--gptq-samples=")), 128)
            gptq_bench(Path(d), "--gptq-1b" in argv, n)
        return 0
    if "--awq-1b-only" in argv:
        argv = [*argv, "--awq-only"]
    if "--awq" in argv or "--awq-only" in argv:  # minutes of calibration: asked for, not part of the default run
        with tempfile.TemporaryDirectory(dir=CACHE) as d:
            n = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--awq-samples=")), 128)
            awq_bench(Path(d), n, "--awq-1b" in argv, "--awq-1b-only" in argv)
        if "--awq-only" in argv:
            return 0
    with tempfile.TemporaryDirectory(dir=CACHE) as d:
        eval_vs_perplexity(Path(d))
        if "--skip-1b" not in argv:
            quantize_1b(Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
