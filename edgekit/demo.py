"""``make demo``: the end-to-end job on the bundled models, one step after another, with timings.

Prepares SmolLM2-135M-Instruct as a Hugging Face checkpoint, inspects it and edgekit-tiny, converts
SmolLM2 to every format (GGUF f16 and q8_0, ONNX fp32 and static, Core ML fp16), then asks it the same
question through the GGUF and the ONNX artifact, and once more through ``edgekit serve`` (the GGUF put
in a model store, the server on a free loopback port, Ollama's /api/chat over HTTP); quantizes SmolLM2 to
q4_k_m with edgekit's importance matrix, measures what that cost against the fp32 original (``edgekit eval``)
and asks the question again; packages it for Android (``edgekit package`` and ``verify``). Artifacts go to
``$EDGEKIT_CACHE/demo``.
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


def _quantize(model: Path, out: Path) -> str:
    from quant.pipeline import run

    r = run(str(model), "gguf", "q4_k_m", str(out), samples=16, seqlen=256, force=True, progress=False)
    return f"{r['output']}: {r['bytes'] / 1e6:.1f} MB, {r['bits_per_weight']:.2f} bits/weight in {r['seconds']:.1f} s"


def _eval(artifact: Path, reference: Path) -> str:
    from edgekit.eval.run import run

    r = run(str(artifact), str(reference), ctx=256, chunks=4, progress=False)
    return (f"ppl {r['ppl']:.3f} vs {r['reference_ppl']:.3f} fp32 (Δppl {r['delta_ppl']:+.3f}); KLD mean "
            f"{r['kld_mean']:.4f}, p99 {r['kld_p99']:.4f}; top-1 agreement {100 * r['top1_agreement']:.1f}% "
            f"over {r['tokens']} tokens of Persuasion")


def _bench(artifacts: list[Path]) -> str:
    from edgekit.bench.output import markdown
    from edgekit.bench.run import bench

    return markdown(bench([str(a) for a in artifacts], n_prompt=128, n_gen=32, reps=2, progress=False))


def _ask(artifact: Path) -> str:
    from runtimes import load
    from runtimes.generate import GenerationParams, chat

    engine = load(str(artifact), device="cpu")
    result = chat(engine, [{"role": "user", "content": QUESTION}], GenerationParams(max_tokens=48))
    return (f"{result.text.strip()}\n   [{result.prompt_tokens} prompt tokens at {result.prompt_tps:.0f} tok/s, "
            f"{result.eval_count} generated at {result.eval_tps:.1f} tok/s]")


def _serve(artifact: Path, out: Path) -> str:
    """Store ``artifact`` as ``smollm2``, start ``edgekit serve`` on a free 127.0.0.1 port, chat once, stop."""
    import socket
    import subprocess
    import sys

    import httpx

    from edgekit.serve import build
    from edgekit.serve.modelfile import parse
    from edgekit.serve.store import Store

    home = out / "store"
    build.create(Store(home), "smollm2", parse(f"FROM {artifact}\nPARAMETER temperature 0\n"), progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", "--port", str(port)],
                            env={**os.environ, "EDGEKIT_HOME": str(home)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.head(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        r = httpx.post(url + "/api/chat", json={"model": "smollm2", "stream": False, "options": {"num_predict": 48},
                                                "messages": [{"role": "user", "content": QUESTION}]}, timeout=300)
        r.raise_for_status()
        body = r.json()
    finally:
        proc.terminate()
        try:
            log = proc.communicate(timeout=15)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            log = ""
    request_lines = [line.split("edgekit serve: ")[-1] for line in log.splitlines() if "POST /api/chat" in line]
    return (f"{body['message']['content'].strip()}\n   [{url}/api/chat, {body['eval_count']} tokens at "
            f"{body['eval_count'] / max(body['eval_duration'], 1) * 1e9:.1f} tok/s; server log: "
            f"{request_lines[-1] if request_lines else '-'}]")


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
    _step("A (edgekit serve, Ollama API over HTTP)", lambda: _serve(gguf_f16, out))
    q4 = out / "smollm2-q4_k_m.gguf"
    _step("SmolLM2 -> GGUF q4_k_m with edgekit's importance matrix (16 x 256 calibration tokens)",
          lambda: _quantize(smol, q4))
    _step("edgekit eval: q4_k_m against the fp32 original", lambda: _eval(q4, smol))
    _step("A (GGUF q4_k_m through llama.cpp)", lambda: _ask(q4))
    _step("edgekit bench: GGUF q4_k_m, q8_0 and ONNX fp32 on one token trace (-p 128 -n 32 -r 2)",
          lambda: _bench([q4, out / "smollm2-q8_0.gguf", onnx_dir]))
    _step("SmolLM2 -> Android bundle (fp16, context 512), then edgekit package verify",
          lambda: _bundle(smol, out / "smollm2-android"))


if __name__ == "__main__":
    main()
