"""`edgekit eval`: perplexity of an artifact and what it lost against the original model."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("eval")
@click.argument("artifact")
@click.option("--reference", metavar="MODEL", help="The original (Hugging Face directory, fp32) or a GGUF base: "
              "adds KL divergence, top-1 agreement and Δppl.")
@click.option("--text", "text_file", metavar="FILE", help="Plain text to score (default: held-out Persuasion).")
@click.option("--ctx", type=int, default=512, show_default=True, help="Window length in tokens.")
@click.option("--chunks", type=int, help="Score at most this many windows.")
@click.option("--threads", type=int, help="CPU threads.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_cmd(artifact: str, reference: str | None, text_file: str | None, ctx: int, chunks: int | None,
             threads: int | None, as_json: bool) -> None:
    """Perplexity of ARTIFACT (.gguf or ONNX directory) and, with --reference, its KL divergence from it."""
    from edgekit.eval.run import run

    r = run(artifact, reference, text_file, ctx, chunks, threads, progress=not as_json)
    text = f"ppl {r['ppl']:.4f} ± {r['ppl_error']:.4f} over {r['tokens']} tokens ({r['chunks']} x {r['ctx']})"
    if "kld_mean" in r:
        text += (f"; reference ppl {r['reference_ppl']:.4f} (Δppl {r['delta_ppl']:+.4f}); KLD mean {r['kld_mean']:.6f}"
                 f" p99 {r['kld_p99']:.6f} max {r['kld_max']:.6f}; top-1 agreement {100 * r['top1_agreement']:.2f}%")
    emit(r, as_json, text)
