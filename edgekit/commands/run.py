"""`edgekit run`: generate with an artifact, one prompt or an interactive chat."""

from __future__ import annotations

import json
from typing import Any

import click

from edgekit.commands import FINITE, NON_NEGATIVE


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
@click.option("--temperature", type=NON_NEGATIVE, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="Keep the k most likely tokens (0 = off).")
@click.option("--top-p", type=FINITE, default=1.0, help="Nucleus sampling mass (1 = off).")
@click.option("--min-p", type=FINITE, default=0.0, help="Drop tokens below min-p x the top probability (0 = off).")
@click.option("--repeat-penalty", type=FINITE, default=1.0,
              help="Repetition penalty over the last 64 tokens (1 = off).")
@click.option("--presence-penalty", type=FINITE, default=0.0, help="Subtract from tokens already present.")
@click.option("--frequency-penalty", type=FINITE, default=0.0, help="Subtract per earlier occurrence.")
@click.option("--seed", type=int, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop when this text appears (repeatable); it is not printed.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: physical cores).")
@click.option("--context", type=click.IntRange(min=1),
              help="KV-cache size in tokens (default: the model's, at most 4096 for GGUF).")
@click.option("--verify", is_flag=True, help="Check every file's sha256 against the manifest before loading.")
@click.option("--lookup", is_flag=True, help="Speculative decoding with prompt-lookup drafts (no second model).")
@click.option("--draft", "draft_model", metavar="ARTIFACT", help="Speculative decoding with this smaller model "
              "(same vocabulary) drafting.")
@click.option("--draft-tokens", type=click.IntRange(min=1),
              help="Most tokens drafted per step (default: 16 with --lookup, adapting to acceptance; 5 with --draft).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with text, tokens and timings.")
def run_cmd(artifact: str, prompt: str | None, chat: bool, raw: bool, system: str | None, device: str,
            fallback: str | None, max_tokens: int, stop: tuple[str, ...], threads: int | None, context: int | None,
            verify: bool, as_json: bool, lookup: bool, draft_model: str | None, draft_tokens: int | None,
            **sampling: Any) -> None:
    """Generate with ARTIFACT (a .gguf file, an ONNX / Core ML directory from edgekit convert, or a store
    model NAME[:TAG] from edgekit create / pull).

    With -p, one answer: a chat model (one whose artifact carries a chat template) gets the prompt as a
    user message through its template, --raw completes the text as is. Without -p, an interactive chat."""
    import runtimes
    from edgekit.chat_repl import Chat, reader_for_stdin, valid_text, warn_replaced
    from edgekit.errors import EdgekitError
    from edgekit.serve.store import resolve_artifact
    from runtimes.chat import ChatSession, prompt_tokens
    from runtimes.generate import generate
    from runtimes.sampling import SamplingParams
    from runtimes.speculative import drafter

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
    artifact, lora = resolve_artifact(artifact)  # a store model NAME[:TAG] runs like its artifact (+ adapter)
    engine = runtimes.load(artifact, device=device, threads=threads, fallback=fallback, context=context,
                           verify=verify, lora=lora)
    draft = drafter(engine, draft=draft_model, lookup=lookup, tokens=draft_tokens, device=device, threads=threads)
    stream = None if as_json else (lambda text: click.echo(text, nl=False))

    def report(result: Any) -> None:
        if as_json:
            click.echo(json.dumps({**result.as_dict(), "engine": engine.describe(), "sampling": params.as_dict()}))
        else:
            click.echo("")
            click.echo(f"prompt: {result.prompt_tokens} tokens ({result.prompt_evaluated} evaluated), "
                       f"{result.prompt_tps:.1f} tokens/s | generation: {result.eval_count} tokens, "
                       f"{result.eval_tps:.1f} tokens/s | {result.finish_reason}"
                       + (f" | {result.speculative['drafter']}: {result.speculative['acceptance_rate']:.0%} of "
                          f"drafts accepted" if result.speculative else ""), err=True)

    options = {"max_tokens": max_tokens, "stop": stop, "on_text": stream, "draft": draft}
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
