"""`edgekit report`: convert, quantize, eval and bench every target of a model into one report card."""

from __future__ import annotations

import sys

import click

from edgekit.commands import emit


def _split(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


@click.command("report")
@click.argument("model")
@click.option("--targets", required=True, help="Comma-separated FORMAT:QUANT[-METHOD][-bN], e.g. gguf:q4_k_m,gguf:q8_0,"
              "onnx:int4,onnx:int4-gptq,coreml:int4.")
@click.option("-o", "--output", "out_dir", type=click.Path(), help="Report directory (default: ./report-MODEL).")
@click.option("--text", metavar="FILE", help="Text to evaluate on (default: held-out Persuasion).")
@click.option("--calib", metavar="FILE", help="Calibration text for gptq, awq and k-quants (default: the bundled one).")
@click.option("--samples", type=int, help="Calibration windows (the quantizers' defaults otherwise).")
@click.option("--seqlen", type=int, help="Tokens per calibration window.")
@click.option("--devices", help="Comma-separated devices to plan for, e.g. pixel-8,iphone-15,jetson-orin-nano,m2-8gb.")
@click.option("--ctx", type=int, default=512, show_default=True, help="eval: window length in tokens.")
@click.option("--chunks", type=int, default=20, show_default=True, help="eval: windows scored.")
@click.option("-p", "--n-prompt", type=int, default=512, show_default=True, help="bench: prompt tokens.")
@click.option("-n", "--n-gen", type=int, default=128, show_default=True, help="bench: generated tokens.")
@click.option("-r", "--repetitions", "reps", type=int, default=3, show_default=True, help="bench: repetitions.")
@click.option("--threads", type=int, help="CPU threads for eval and bench (default: the device profile's).")
@click.option("--context", type=int, default=2048, show_default=True,
              help="KV cache tokens the memory plan and the device table assume.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where targets are built and evaluated: this process, or Ray tasks.")
@click.option("--address", help="ray: the cluster to join (host:port); default: start a local one.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report_cmd(model: str, targets: str, out_dir: str | None, devices: str | None, as_json: bool, **options) -> None:
    """Build, evaluate and bench every target of MODEL (a Hugging Face directory) into one report card: report.md,
    report.json and plots; a memory plan per target and per device. A failed target is a failed row, and the command
    exits 1 at the end."""
    from pathlib import Path

    from edgekit.report.run import report

    out = out_dir or f"report-{Path(model).name}"
    result = report(model, _split(targets), out, devices=_split(devices), progress=not as_json, **options)
    ok = len(result["rows"]) - result["failed"]
    failed = [r["target"] for r in result["rows"] if "error" in r]
    emit(result, as_json, f"wrote {result['files']['markdown']} ({ok} of {len(result['rows'])} targets, "
                          f"{result['seconds']:.0f} s)" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if result["failed"]:
        sys.exit(1)
