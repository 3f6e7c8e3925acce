"""One artifact measured in this process, as llama-bench measures a GGUF: ``python -m edgekit.bench.measure SPEC``
prints one JSON line, ``{"result": ...}`` or ``{"error": ..., "fix": ...}``.

The parent runs every artifact in a child of its own, so ``peak_rss_bytes`` (the process's high-water mark) is that
artifact's, and a crash in a native runtime is one failed row. What is timed is what llama-bench times: for ``pp``,
the forward of the prompt tokens after the depth's tokens are in the cache; for ``tg``, ``n`` one-token forwards
after the depth's. The token trace is the same for every artifact of a model (seeded, from its vocabulary), so GGUF,
ONNX and Core ML do identical work. Each test is warmed up once, as llama-bench's are."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident set size now (0 where the OS does not say)."""
    return _status_kib("VmRSS") or 0


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM on Linux (of this program's own memory: ``ru_maxrss`` also
    counts the parent's pages at fork), ``ru_maxrss`` elsewhere (bytes on macOS)."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def trace(vocab_size: int, length: int, seed: int) -> list[int]:
    """The token trace every artifact of a model runs: ``length`` ids drawn uniformly from the vocabulary, as
    llama-bench draws its tokens, but seeded so that every format gets the same ones."""
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab_size, size=length)]


def _stats(samples: list[float]) -> dict[str, Any]:
    return {"samples_tps": samples, "tps_mean": statistics.fmean(samples),
            "tps_sd": statistics.stdev(samples) if len(samples) > 1 else 0.0}


def measure(artifact: str, *, threads: int, n_prompt: int, n_gen: int, reps: int, depths: list[int],
            device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Load ``artifact`` with a context of ``n_prompt + n_gen + max(depths)`` tokens (llama-bench's), then for each
    depth: ``pp{n_prompt}`` (with time to first token) and ``tg{n_gen}``, ``reps`` repetitions each after one
    warm-up. Returns the tests' tokens/s samples, mean and sample sd, the load time and the peak RSS."""
    import runtimes

    rss_start = rss_bytes()
    context = n_prompt + n_gen + max(depths)
    t0 = time.perf_counter()
    engine = runtimes.load(artifact, device=device, threads=threads, context=context)
    load_seconds = time.perf_counter() - t0
    rss_loaded = rss_bytes()
    try:
        tokens = trace(engine.vocab_size, max(depths) + max(n_prompt, n_gen), seed)
        tests = []
        for depth in depths:
            base = tokens[:depth]

            def at_depth(base: list[int] = base) -> None:  # untimed: the cache holds exactly the depth's tokens
                engine.reset()
                if base:
                    engine.prefill(base)

            if n_prompt:
                prompt = tokens[depth:depth + n_prompt]
                samples, ttft = [], []
                for rep in range(reps + 1):  # the first is the warm-up
                    at_depth()
                    start = time.perf_counter()
                    logits = engine.prefill(base + prompt)  # runs the prompt's tokens only: the base is cached
                    int(np.argmax(logits))
                    took = time.perf_counter() - start
                    if rep:
                        samples.append(n_prompt / took)
                        ttft.append(1000 * took)
                tests.append({"test": f"pp{n_prompt}", "depth": depth, "n_tokens": n_prompt, **_stats(samples),
                              "ttft_ms_mean": statistics.fmean(ttft)})
            if n_gen:
                gen = tokens[depth:depth + n_gen]
                samples = []
                for rep in range(reps + 1):
                    at_depth()
                    start = time.perf_counter()
                    for token in gen if rep else gen[:1]:  # llama-bench warms tg up with one token
                        engine.decode(token)
                    took = time.perf_counter() - start
                    if rep:
                        samples.append(n_gen / took)
                tests.append({"test": f"tg{n_gen}", "depth": depth, "n_tokens": n_gen, **_stats(samples)})
        info = engine.describe()
    finally:
        engine.close()
    return {"kind": engine.kind, "context": context, "threads": threads, "load_seconds": load_seconds,
            "tests": tests, "engine": info, "rss_start_bytes": rss_start, "rss_loaded_bytes": rss_loaded,
            "peak_rss_bytes": peak_rss_bytes()}


def main(argv: list[str]) -> None:
    from edgekit.errors import EdgekitError

    spec = json.loads(argv[0])
    try:
        result = measure(spec.pop("artifact"), **spec)
    except EdgekitError as err:
        print(json.dumps({"error": err.what, "fix": err.fix}))
        return
    except Exception as err:  # a runtime's own failure is this artifact's failed row, not the bench's
        print(json.dumps({"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                          "fix": None}))
        return
    print(json.dumps({"result": result}))


if __name__ == "__main__":
    main(sys.argv[1:])
