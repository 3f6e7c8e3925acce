"""`edgekit run`: generate with an artifact, one prompt or an interactive chat."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


@click.command("run")
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
    """Generate with ARTIFACT (a .gguf file, an ONNX / Core ML directory from edgekit convert, or a store
    model NAME[:TAG] from edgekit create / pull)."""
    import runtimes
    from edgekit.serve.store import resolve_artifact
    from runtimes.chat import ChatSession, prompt_tokens
    from runtimes.generate import generate
    from runtimes.sampling import SamplingParams

    params = SamplingParams(**sampling)
    artifact, lora = resolve_artifact(artifact)  # a store model NAME[:TAG] runs like its artifact (+ adapter)
    engine = runtimes.load(artifact, device=device, threads=threads, fallback=fallback, context=context, lora=lora)
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
