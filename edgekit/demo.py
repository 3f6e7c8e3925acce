"""``make demo``: the end-to-end job on the bundled models, one step after another, with timings.

Prepares SmolLM2-135M-Instruct as a Hugging Face checkpoint, inspects it and edgekit-tiny, converts
SmolLM2 to every format (GGUF f16 and q8_0, ONNX fp32 and static, Core ML fp16), then asks it the same
question through the GGUF and the ONNX artifact, and packages it for Android (``edgekit package`` and
``verify``). Artifacts go to ``$EDGEKIT_CACHE/demo``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import converters
from edgekit.inspect import format_text, inspect
from edgekit.models import smollm2, tiny_path

QUESTION = "What is the capital of France? Answer in one sentence."


def _step(title: str, fn: Callable[[], str]) -> None:
    print(f"\n== {title}", flush=True)
    t0 = time.perf_counter()
    out = fn()
    if out:
        print(out)
    print(f"-- {time.perf_counter() - t0:.1f} s", flush=True)


def _convert(model: Path, fmt: str, out: Path, **options) -> str:
    result = converters.get(fmt).convert(str(model), str(out), adapter=None, allow_pickle=False, force=True,
                                         progress=False, **options)
    size = result.get("bytes") or 0
    return f"{result['output']}: {size / 1e6:.1f} MB in {result['seconds']:.1f} s"


def _ask(artifact: Path) -> str:
    from runtimes import load
    from runtimes.generate import GenerationParams, chat

    engine = load(str(artifact), device="cpu")
    result = chat(engine, [{"role": "user", "content": QUESTION}], GenerationParams(max_tokens=48))
    return (f"{result.text.strip()}\n   [{result.prompt_tokens} prompt tokens at {result.prompt_tps:.0f} tok/s, "
            f"{result.eval_count} generated at {result.eval_tps:.1f} tok/s]")


def _bundle(model: Path, out: Path) -> str:
    from edgekit.package import package, verify

    made = package(str(model), "android", str(out), dtype="fp16", context=512, force=True, progress=False)
    checked = verify(out)
    nnapi = ", ".join(f"{g} {v['NNAPI']}" for g, v in made["mobile_usability"].items())
    return (f"{made['output']}: {made['bytes'] / 1e6:.1f} MB in {made['seconds']:.1f} s; NNAPI usability {nnapi}\n"
            f"   verify: schema, {checked['files']} file hashes, graph I/O ok; the reference loop reproduced "
            f"{checked['numeric']['greedy_tokens']} greedy tokens: {checked['numeric']['text']!r}")


def main() -> None:
    out = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")) / "demo"
    out.mkdir(parents=True, exist_ok=True)
    smol = smollm2.ensure()
    _step("inspect edgekit-tiny", lambda: format_text(inspect(tiny_path())))
    _step("inspect SmolLM2-135M-Instruct", lambda: format_text(inspect(smol)))
    gguf_f16, onnx_dir = out / "smollm2-f16.gguf", out / "smollm2-onnx"
    _step("SmolLM2 -> GGUF f16", lambda: _convert(smol, "gguf", gguf_f16, outtype="f16"))
    _step("SmolLM2 -> GGUF q8_0", lambda: _convert(smol, "gguf", out / "smollm2-q8_0.gguf", outtype="q8_0"))
    _step("SmolLM2 -> ONNX fp32", lambda: _convert(smol, "onnx", onnx_dir, dtype="fp32"))
    _step("SmolLM2 -> ONNX static (context 512, prefill chunk 32)",
          lambda: _convert(smol, "onnx", out / "smollm2-onnx-static", static=True, context=512, prefill_chunk=32))
    _step("SmolLM2 -> Core ML fp16 (context 512)",
          lambda: _convert(smol, "coreml", out / "smollm2-coreml", context=512, precision="fp16"))
    print(f"\nQ: {QUESTION}")
    _step("A (GGUF f16 through llama.cpp)", lambda: _ask(gguf_f16))
    _step("A (ONNX fp32 through onnxruntime)", lambda: _ask(onnx_dir))
    _step("SmolLM2 -> Android bundle (fp16, context 512), then edgekit package verify",
          lambda: _bundle(smol, out / "smollm2-android"))


if __name__ == "__main__":
    main()
