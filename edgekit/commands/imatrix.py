"""`edgekit imatrix`: the importance matrix of a Hugging Face model on calibration text (llama-imatrix's job)."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("imatrix")
@click.argument("model")
@click.option("--calib", metavar="FILE", help="Calibration text (plain text, or JSONL with a \"text\" field); "
              "default: edgekit's shipped calibration text.")
@click.option("--samples", type=int, default=None, help="Number of calibration windows (default 64).")
@click.option("--seqlen", type=int, default=None, help="Tokens per window (default 512).")
@click.option("-o", "--output", required=True, type=click.Path(), help="imatrix file to write (GGUF imatrix format).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def imatrix_cmd(model: str, calib: str | None, samples: int | None, seqlen: int | None, output: str, force: bool,
                as_json: bool) -> None:
    """Compute MODEL's importance matrix (sum of squared inputs of every linear layer) for `quantize --imatrix`."""
    from quant.imatrix_run import run

    result = run(model, output, calib=calib, samples=samples, seqlen=seqlen, force=force, progress=not as_json)
    emit(result, as_json, f"wrote {result['output']} ({result['entries']} tensors, {result['chunks']} chunks of "
                          f"{result['chunk_size']} tokens) in {result['seconds']:.1f} s")
