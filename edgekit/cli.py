"""The ``edgekit`` command line: thin Click wrappers over the public API.

Every command takes ``--json``. User errors (EdgekitError) print one line and exit 2; nothing prints
a traceback unless EDGEKIT_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from edgekit.errors import EdgekitError


def emit(result: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(text if text is not None else str(result))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit")
def cli() -> None:
    """edgekit: convert, quantize, run, serve and benchmark causal LMs on devices."""


@cli.command("inspect")
@click.argument("model")
@click.option("--adapter", metavar="DIR", help="PEFT LoRA adapter to merge on the fly.")
@click.option("--allow-pickle", is_flag=True, help="Read pytorch_model.bin (torch.load weights_only=True).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(model: str, adapter: str | None, allow_pickle: bool, as_json: bool) -> None:
    """Describe MODEL (a local Hugging Face directory or hub id org/name[@rev])."""
    from edgekit.inspect import format_text, inspect

    info = inspect(model, adapter=adapter, allow_pickle=allow_pickle)
    emit(info, as_json, format_text(info))


@cli.command("convert")
@click.argument("model")
@click.option("--to", "fmt", required=True, type=click.Choice(["gguf", "onnx", "coreml"]), help="Target format.")
@click.option("-o", "--output", type=click.Path(), help="Output file (gguf) or directory (onnx, coreml).")
@click.option("--adapter", metavar="DIR", help="PEFT LoRA adapter: merged into the weights.")
@click.option("--adapter-only", is_flag=True, help="gguf: write the adapter alone as a GGUF LoRA adapter.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0", "auto"]), help="gguf: tensor type.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), help="onnx: weight precision.")
@click.option("--static", "static", is_flag=True, help="onnx: fixed shapes for NNAPI / QNN / CoreML EP.")
@click.option("--context", type=int, help="onnx --static, coreml: context window (KV cache) in tokens.")
@click.option("--prefill-chunk", type=int, help="onnx --static: tokens per prefill call.")
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
    given = {k: v for k, v in options.items() if v not in (None, False)}
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


@cli.command("run")
@click.argument("artifact")
@click.option("-p", "--prompt", help="Prompt text; without it, an interactive chat on stdin (/bye or EOF ends it).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template as a user message.")
@click.option("--system", help="System message for --chat and the interactive chat.")
# --device / --fallback are checked by runtimes.load, so a wrong value is edgekit's one-line error
@click.option("--device", default="auto", show_default=True,
              help="Device profile: auto, cpu, apple-silicon, android-nnapi, jetson.")
@click.option("--fallback", help="cpu: run on the CPU if the device's accelerator is missing.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most tokens to generate.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, help="Keep the k most likely tokens (0 = off).")
@click.option("--top-p", type=float, default=1.0, help="Nucleus sampling mass (1 = off).")
@click.option("--min-p", type=float, default=0.0, help="Drop tokens below min-p x the top probability (0 = off).")
@click.option("--repeat-penalty", type=float, default=1.0, help="Repetition penalty over the last 64 tokens (1 = off).")
@click.option("--presence-penalty", type=float, default=0.0, help="Subtract from tokens already present.")
@click.option("--frequency-penalty", type=float, default=0.0, help="Subtract per earlier occurrence.")
@click.option("--seed", type=int, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop when this text appears (repeatable); it is not printed.")
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--context", type=int, help="KV-cache size in tokens (default: the model's, at most 4096 for GGUF).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with text, tokens and timings.")
def run_cmd(artifact: str, prompt: str | None, chat: bool, system: str | None, device: str, fallback: str | None,
            max_tokens: int, stop: tuple[str, ...], threads: int | None, context: int | None, as_json: bool,
            **sampling: Any) -> None:
    """Generate with ARTIFACT (a .gguf file, or an ONNX / Core ML directory from edgekit convert)."""
    import runtimes
    from runtimes.chat import ChatSession, prompt_tokens
    from runtimes.generate import generate
    from runtimes.sampling import SamplingParams

    params = SamplingParams(**sampling)
    engine = runtimes.load(artifact, device=device, threads=threads, fallback=fallback, context=context)
    stream = None if as_json else (lambda text: click.echo(text, nl=False))

    def report(result: Any) -> None:
        if as_json:
            click.echo(json.dumps({**result.as_dict(), "engine": engine.describe(), "sampling": params.as_dict()}))
        else:
            click.echo("")
            click.echo(f"prompt: {result.prompt_tokens} tokens ({result.prompt_evaluated} evaluated), "
                       f"{result.prompt_tps:.1f} tokens/s | generation: {result.eval_count} tokens, "
                       f"{result.eval_tps:.1f} tokens/s | {result.finish_reason}", err=True)

    options = {"max_tokens": max_tokens, "stop": stop, "on_text": stream}
    if prompt is not None:
        if chat:
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": prompt})
            tokens = prompt_tokens(engine, messages)
        else:
            tokens = engine.tokenize(prompt)
        report(generate(engine, tokens, params, **options))
        return
    session = ChatSession(engine, system)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo(">>> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/bye":
            break
        if not line.strip():
            continue
        report(session.ask(line.rstrip("\n"), params, **options))


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(as_json: bool) -> None:
    """What this host can run: CPU, memory, backends, onnxruntime providers, device profiles."""
    from runtimes.doctor import format_text, report

    rep = report()
    emit(rep, as_json, format_text(rep))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except EdgekitError as err:
        click.echo(f"edgekit: error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("edgekit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        click.echo(f"edgekit: internal error: {type(err).__name__}: {first} (set EDGEKIT_DEBUG=1 for the traceback)",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
