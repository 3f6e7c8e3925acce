"""`edgekit run`: generate with an artifact, one prompt or an interactive chat."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command("run")
@click.argument("artifact")
@click.option("-p", "--prompt",
              help="Prompt text. On a chat model (its artifact has a chat template) it is sent as a user message "
                   "through that template; --raw sends it as plain text to complete. Without -p: an interactive "
                   "chat (/help lists its commands; plain line reading when stdin is not a terminal).")
@click.option("--chat", is_flag=True, help="Use the chat template (the default when the artifact has one).")
@click.option("--raw", is_flag=True, help="-p: plain completion of the prompt text, no chat template.")
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
def run_cmd(artifact: str, prompt: str | None, chat: bool, raw: bool, system: str | None, device: str,
            fallback: str | None, max_tokens: int, stop: tuple[str, ...], threads: int | None, context: int | None,
            as_json: bool, **sampling: Any) -> None:
    """Generate with ARTIFACT (a .gguf file, or an ONNX / Core ML directory from edgekit convert).

    With -p, one answer: a chat model (one whose artifact carries a chat template) gets the prompt as a
    user message through its template, --raw completes the text as is. Without -p, an interactive chat."""
    import runtimes
    from edgekit.chat_repl import Chat, reader_for_stdin, valid_text, warn_replaced
    from edgekit.errors import EdgekitError
    from runtimes.chat import ChatSession, prompt_tokens
    from runtimes.generate import generate
    from runtimes.sampling import SamplingParams

    if chat and raw:
        raise EdgekitError("--chat and --raw contradict each other", "pass one of them")
    if raw and prompt is None:
        raise EdgekitError("--raw applies to -p PROMPT", "pass -p PROMPT, or drop --raw for the interactive chat")
    for name, value in (("-p", prompt), ("--system", system)):
        if value is not None and valid_text(value)[1]:
            warn_replaced(f"the {name} text")
    prompt = valid_text(prompt)[0] if prompt is not None else None
    system = valid_text(system)[0] if system is not None else None
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
        if chat or (engine.chat_template and not raw):
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": prompt})
            tokens = prompt_tokens(engine, messages)
        else:
            tokens = engine.tokenize(prompt)
        result = generate(engine, tokens, params, **options)
        report(result)
        if result.eval_count == 0 and not as_json:
            mode = "as plain text (--raw)" if raw or not engine.chat_template else "through the chat template"
            click.echo(f"edgekit: note: the model ended its answer at once (prompt sent {mode})", err=True)
        return
    if not engine.chat_template:
        raise EdgekitError(f"{artifact} has no chat template, so it cannot chat",
                           "pass -p PROMPT for a plain completion")
    session = ChatSession(engine, system)
    Chat(session, params, max_tokens=max_tokens, stop=stop, on_text=stream, report=report).loop(reader_for_stdin())
