"""`edgekit bench`: llama-bench's prefill and decode tokens/s for GGUF, ONNX and Core ML artifacts on one token trace,
with TTFT, load time, peak RSS, file size and the share of the memory-bandwidth roofline."""

from __future__ import annotations

import sys

import click

from edgekit.commands import emit


class IntList(click.ParamType):
    """A comma-separated list of integers, e.g. ``1,2,4`` (llama-bench's syntax)."""

    name = "N[,N...]"

    def convert(self, value, param, ctx) -> list[int]:  # noqa: ANN001 - Click's signature
        if isinstance(value, list):
            return value
        try:
            return [int(x) for x in str(value).split(",") if x.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("-p", "--n-prompt", type=int, default=512, show_default=True, help="Prompt tokens (pp test; 0: none).")
@click.option("-n", "--n-gen", type=int, default=128, show_default=True, help="Generated tokens (tg test; 0: none).")
@click.option("-r", "--repetitions", "reps", type=int, default=5, show_default=True, help="Repetitions per test.")
@click.option("-t", "--threads", type=IntList(), help="Thread counts, e.g. 1,2,4 (default: the device profile's).")
@click.option("-d", "--depth", "depths", type=IntList(), default="0", show_default=True,
              help="Tokens already in the KV cache when a test starts, e.g. 0,512.")
@click.option("--device", default="auto", show_default=True,
              help="auto | cpu | apple-silicon | android-nnapi | jetson.")
@click.option("-o", "--output", "fmt", type=click.Choice(["md", "csv", "json", "jsonl"]), default="md",
              show_default=True, help="Output format.")
@click.option("--plot", "plot_file", metavar="FILE.png", help="Also draw tokens/s per artifact into this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (same as -o json).")
def bench_cmd(artifacts: tuple[str, ...], n_prompt: int, n_gen: int, reps: int, threads: list[int] | None,
              depths: list[int], device: str, fmt: str, plot_file: str | None, as_json: bool) -> None:
    """Measure ARTIFACT... (.gguf files, ONNX / Core ML directories, or store names) as llama-bench measures a GGUF.

    Every artifact runs in a process of its own on the same seeded token trace; one that fails to load or run is a
    failed row, the others still run, and the command exits 1 at the end."""
    from pathlib import Path

    from edgekit.bench.output import render
    from edgekit.bench.run import bench

    result = bench(artifacts, n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=threads, depths=depths,
                   device=device, progress=not as_json and sys.stderr.isatty())
    if plot_file:
        from edgekit.bench.plot import plot

        result["plot"] = str(plot(result, Path(plot_file)))
    emit(result, as_json, None if as_json else render(result, fmt))
    if result["failed"]:
        sys.exit(1)
