"""Serving overhead: one client, time to first token (TTFT) and decode tokens/s of the same GGUF
(SmolLM2-135M-Instruct Q4_1) three ways, measured in the same run:

* ``edgekit run`` raw: ``runtimes.load`` + ``runtimes.generate.generate`` in this process (what
  ``edgekit run`` does), TTFT = time to the first streamed text;
* ``edgekit serve``: a server subprocess on a free loopback port, streamed ``/v1/completions`` (SSE) and
  ``/api/generate`` (NDJSON) through httpx, TTFT = request sent -> first text chunk received;
* ``llama_cpp.server`` (llama-cpp-python's own OpenAI server), streamed ``/v1/completions`` the same way.

Same threads, same context (4096), greedy, raw prompt (no template); every request starts with a
different number so no side reuses a cached prefix. Decode tokens/s = (chunks - 1) / (last chunk time -
first chunk time) at the client. Sides alternate; the median of ``--repeats`` is reported. Goal
(issue 15): serve's decode within 3% of raw run, TTFT within 15 ms. Nothing asserts a time.

    python benchmarks/serve.py [--threads N] [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import runtimes  # noqa: E402 - first: sets OMP_WAIT_POLICY before llama_cpp loads libgomp

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters. ")
CONTEXT = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise SystemExit(f"server did not start: {url}")


def stream_times(url: str, body: dict, sse: bool) -> list[float]:
    """Client-side arrival times of the text chunks of one streamed request (t=0 when it is sent)."""
    import httpx

    times: list[float] = []
    t0 = time.perf_counter()
    with httpx.stream("POST", url, json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.strip():
                continue
            if sse:
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                text = obj["choices"][0].get("text", "") if obj.get("choices") else ""
            else:
                obj = json.loads(line)
                text = obj.get("response", "")
            if text:
                times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    """(TTFT seconds, decode tokens/s) from chunk arrival times."""
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return times[0], decode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from edgekit.models import smollm2
    from runtimes.devices import physical_cores
    from runtimes.generate import generate

    gguf = smollm2.gguf_path()
    threads = args.threads or physical_cores()
    prompts = [f"{i}. {TEXT}" for i in range(args.repeats * 8 + 8)]  # one per run: no side reuses a prefix
    home = Path(tempfile.mkdtemp(prefix="edgekit-bench-serve-"))
    env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    (home / "Modelfile").write_text(f"FROM {gguf}\n")
    subprocess.run([sys.executable, "-m", "edgekit.cli", "create", "smol", "-f", str(home / "Modelfile")], env=env,
                   check=True, capture_output=True)
    ek_port, lc_port = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", "--port", str(ek_port), "--keep-alive", "-1"],
                         env={**env, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_ctx", str(CONTEXT),
                          "--n_threads", str(threads), "--n_threads_batch", str(threads), "--port", str(lc_port),
                          "--host", "127.0.0.1", "--verbose", "False"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        ek, lc = f"http://127.0.0.1:{ek_port}", f"http://127.0.0.1:{lc_port}"
        wait_up(ek + "/", procs[0])
        wait_up(lc + "/v1/models", procs[1])
        engine = runtimes.load(gguf, threads=threads, context=CONTEXT)
        greedy = {"temperature": 0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
        n = args.tokens

        def raw_run(prompt: str) -> tuple[float, float]:
            engine.reset()
            times: list[float] = []
            t0 = time.perf_counter()
            generate(engine, engine.tokenize(prompt), max_tokens=n,
                     on_text=lambda _t: times.append(time.perf_counter() - t0))
            return summary(times)

        sides = {
            "edgekit run (in-process)": raw_run,
            "edgekit serve /v1/completions": lambda p: summary(stream_times(ek + "/v1/completions", {
                "model": "smol", "prompt": p, "max_tokens": n, "stream": True, "temperature": 0, "top_p": 1.0}, True)),
            "edgekit serve /api/generate": lambda p: summary(stream_times(ek + "/api/generate", {
                "model": "smol", "prompt": p, "raw": True, "options": {**greedy, "num_predict": n}}, False)),
            "llama_cpp.server /v1/completions": lambda p: summary(stream_times(lc + "/v1/completions", {
                "model": "x", "prompt": p, "max_tokens": n, "stream": True, **greedy}, True)),
        }
        for j, run in enumerate(sides.values()):  # warm-up: page in weights, load the servers' models
            run(prompts[-1 - j])
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
        for i in range(args.repeats):
            for j, (name, run) in enumerate(sides.items()):
                results[name].append(run(prompts[i * len(sides) + j]))
        print(f"SmolLM2-135M-Instruct Q4_1 GGUF, {threads} threads, context {CONTEXT}, {n} tokens, "
              f"median of {args.repeats}")
        print(f"{'side':<36} {'TTFT ms':>9} {'decode tok/s':>13}")
        med = {}
        for name, rows in results.items():
            ttft = statistics.median(r[0] for r in rows) * 1000
            tps = statistics.median(r[1] for r in rows)
            med[name] = (ttft, tps)
            print(f"{name:<36} {ttft:>9.1f} {tps:>13.1f}")
        raw = med["edgekit run (in-process)"]
        for name in ("edgekit serve /v1/completions", "edgekit serve /api/generate"):
            ttft, tps = med[name]
            print(f"{name}: decode {100 * (1 - tps / raw[1]):+.1f}% slower than raw run (goal <= 3%), "
                  f"TTFT +{ttft - raw[0]:.1f} ms (goal <= 15 ms)")
        lc_ttft, lc_tps = med["llama_cpp.server /v1/completions"]
        ttft, tps = med["edgekit serve /v1/completions"]
        print(f"edgekit serve vs llama_cpp.server: decode {tps / lc_tps:.2f}x, TTFT {ttft / lc_ttft:.2f}x")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
