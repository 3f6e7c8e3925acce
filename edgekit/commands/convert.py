"""`edgekit convert`: checkpoint to GGUF, ONNX or Core ML."""

from __future__ import annotations

import click

from edgekit.commands import emit
from edgekit.errors import EdgekitError


@click.command("convert")
@click.argument("model")
@click.option("--to", "fmt", required=True, type=click.Choice(["gguf", "onnx", "coreml"]), help="Target format.")
@click.option("-o", "--output", type=click.Path(), help="Output file (gguf) or directory (onnx, coreml).")
@click.option("--adapter", metavar="DIR", help="PEFT LoRA adapter: merged into the weights.")
@click.option("--adapter-only", is_flag=True, help="gguf: write the adapter alone as a GGUF LoRA adapter.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0", "auto"]), help="gguf: tensor type.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), help="onnx: weight precision.")
@click.option("--static", "static", is_flag=True, help="onnx: fixed shapes for NNAPI / QNN / CoreML EP.")
@click.option("--context", type=click.IntRange(min=1),
              help="onnx --static, coreml: context window (KV cache) in tokens.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), help="onnx --static: tokens per prefill call.")
@click.option("--ort", is_flag=True, help="onnx: also write the ORT-format model and required_operators.config.")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), help="coreml: compute precision.")
@click.option("--allow-pickle", is_flag=True, help="Read pytorch_model.bin (torch.load weights_only=True).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def convert_cmd(model: str, fmt: str, output: str | None, adapter: str | None, allow_pickle: bool, force: bool,
                as_json: bool, **options) -> None:
    """Convert MODEL (local Hugging Face directory or hub id) to GGUF, ONNX or Core ML."""
    import converters

    module = converters.get(fmt)
    given = {k: v for k, v in options.items() if v is not None and v is not False}  # 0 is a value
    foreign = sorted(set(given) - set(module.OPTIONS))
    if foreign:
        names = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise EdgekitError(f"{names} does not apply to --to {fmt}",
                           f"options for {fmt}: {', '.join('--' + o.replace('_', '-') for o in module.OPTIONS)}")
    result = module.convert(model, output, adapter=adapter, allow_pickle=allow_pickle, force=force,
                            progress=not as_json, **given)
    emit(result, as_json, _convert_text(result))


def _convert_text(result: dict) -> str:
    size = result.get("bytes")
    return (f"wrote {result.get('output')} ({result.get('format')}"
            + (f", {result.get('outtype') or result.get('dtype') or ''}" if result.get("outtype") or result.get("dtype")
               else "")
            + (f", {size / 1e6:.1f} MB" if size else "") + f") in {result.get('seconds', 0):.1f} s")
