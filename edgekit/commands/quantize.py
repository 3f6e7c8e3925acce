"""`edgekit quantize`: a checkpoint to a quantized GGUF, ONNX or Core ML artifact (rtn, gptq, awq, nf4, or a llama.cpp
k-quant)."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("quantize")
@click.argument("model")
@click.option("--to", "fmt", required=True, type=click.Choice(["gguf", "onnx", "coreml"]), help="Target format.")
@click.option("--method", required=True, help="rtn | gptq | awq | nf4 | a llama.cpp type (q4_k_m, q2_k..q6_k, iq4_nl, "
              "iq4_xs, iq2_*/iq3_*; gguf only).")
@click.option("--type", "qtype", help="rtn/gptq/awq grid: q4_0|q4_1|q5_0|q5_1|q8_0 (gguf), int4|int8 (onnx, coreml).")
@click.option("--group-size", type=int, help="onnx, coreml: block size along the input dimension (32; nf4: 64).")
@click.option("--sym/--asym", "symmetric", default=None, help="onnx/coreml: symmetric codes or with zero points.")
@click.option("--double-quant", is_flag=True, help="nf4: QLoRA's double quantization of the block absmax.")
@click.option("--keep-head/--quantize-head", "keep_head", default=None,
              help="Keep the output head in 16-bit (default, as llama.cpp keeps it more precise).")
@click.option("--keep-embed", is_flag=True, help="Keep the token embeddings in 16-bit.")
@click.option("--then", help="awq: what quantizes the scaled model: rtn (default, onto --type's grid), nf4, or a "
              "llama.cpp type (q4_k_m, ...; gguf only).")
@click.option("--clip/--no-clip", default=None, help="awq: the per-block clip search (default: on for rtn/nf4, "
              "off before k-quants, whose own grids it does not see).")
@click.option("--save-scaled", metavar="DIR", help="awq: also keep the scaled float32 checkpoint (AWQ's fp output).")
@click.option("--calib", metavar="FILE", help="k-quants, gptq, awq: calibration text, plain or JSONL (default: the "
              "bundled one).")
@click.option("--damp", type=float, help="gptq: Hessian damping, a fraction of its mean diagonal (default 0.01).")
@click.option("--act-order", is_flag=True, help="gptq: columns by decreasing Hessian diagonal (static groups).")
@click.option("--imatrix", "imatrix_file", metavar="FILE", help="k-quants: a precomputed importance matrix.")
@click.option("--no-imatrix", is_flag=True, help="k-quants: quantize without an importance matrix.")
@click.option("--samples", type=int, help="Calibration windows (default 64; gptq and awq 128).")
@click.option("--seqlen", type=int, help="Tokens per calibration window (default 512).")
@click.option("-o", "--output", type=click.Path(), help="Output file (gguf) or directory (onnx, coreml).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quantize_cmd(model: str, fmt: str, method: str, output: str | None, force: bool, as_json: bool, **options) -> None:
    """Quantize MODEL (a Hugging Face directory) into a GGUF, ONNX or Core ML artifact."""
    from quant.pipeline import run

    result = run(model, fmt, method.lower(), output, force=force, progress=not as_json, **options)
    size = result.get("bytes")
    emit(result, as_json, f"wrote {result['output']} ({fmt}, {result['quant']['grid']}"
                          + (f", {size / 1e6:.1f} MB" if size else "") + f") in {result['seconds']:.1f} s")
