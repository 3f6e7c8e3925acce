"""Runtime speed: prefill and decode tokens/s through edgekit vs the reference tool on the same artifact.

* GGUF: ``runtimes.load`` + ``runtimes.generate.generate`` vs raw llama-cpp-python
  (``Llama.create_completion``) on SmolLM2-135M-Instruct Q4_1, same threads, same context, greedy.
* ONNX: the edgekit ONNX export of SmolLM2 (fp32) through edgekit's onnxruntime backend vs
  onnxruntime-genai on the same directory when it is installed, and vs a plain onnxruntime loop that
  feeds numpy arrays each step (what a user without IO binding writes).

Both sides are measured the same way, by wall clock through their public API, cache emptied first:
prefill tokens/s = prompt tokens / time of a 1-token generation; decode tokens/s = (n - 1) /
(time of an n-token generation - that prefill time). Runs alternate between the sides and the median
of ``--repeats`` is reported (the host may be shared). Both sides generate the same greedy tokens,
which is checked. Nothing asserts a time.

    python benchmarks/runtime.py [--threads N] [--prompt-tokens 256] [--tokens 128] [--repeats 3] [--no-onnx]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runtimes  # noqa: E402 - first: sets OMP_WAIT_POLICY for both sides before llama_cpp loads libgomp
from runtimes.generate import generate  # noqa: E402
from runtimes.sampling import SamplingParams  # noqa: E402

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters. ")


def prompt_of(engine, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += engine.tokenize(TEXT, add_special=False)
    return ids[:n]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(sides: dict[str, Callable[[int], list[int]]], n_prompt: int, n_gen: int, repeats: int) -> dict:
    """sides: name -> run(max_tokens) that empties the cache, generates greedily and returns the tokens
    (at least the first max_tokens - 1; a side may not expose its last sampled token)."""
    pre: dict[str, list[float]] = {k: [] for k in sides}
    full: dict[str, list[float]] = {k: [] for k in sides}
    tokens: dict[str, list[int]] = {}
    for name, run in sides.items():  # warm-up (page in weights, allocate buffers)
        tokens[name] = run(n_gen)
    for r in range(repeats):
        order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]  # no side always goes first
        for name, run in order:
            pre[name].append(timed(lambda run=run: run(1)))
            full[name].append(timed(lambda run=run: run(n_gen)))
    out = {}
    for name in sides:
        # decode time of a run = its n-token time minus the 1-token time measured next to it
        decode = [(n_gen - 1) / max(tn - t1, 1e-9) for t1, tn in zip(pre[name], full[name], strict=True)]
        out[name] = {"prefill_tps": statistics.median(n_prompt / t for t in pre[name]),
                     "decode_tps": statistics.median(decode), "seconds_1": statistics.median(pre[name]),
                     f"seconds_{n_gen}": statistics.median(full[name])}
    first = tokens[next(iter(sides))][: n_gen - 1]
    out["same_tokens"] = all(t[: n_gen - 1] == first and len(t) >= n_gen - 1 for t in tokens.values())
    return out


def bench_gguf(gguf: Path, threads: int, n_prompt: int, n_gen: int, repeats: int, context: int) -> dict:
    import llama_cpp

    engine = runtimes.load(gguf, threads=threads, context=context)
    prompt = prompt_of(engine, n_prompt)
    greedy = SamplingParams()
    llm = llama_cpp.Llama(str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False)

    def edgekit(n: int) -> list[int]:
        engine.reset()
        out = generate(engine, prompt, greedy, max_tokens=n)
        assert out.eval_count == n, "hit end of text: pick a longer-running prompt"
        return out.tokens

    def raw(n: int) -> list[int]:
        llm.reset()  # no prefix reuse across runs: each run prefills the whole prompt
        out = llm.create_completion(prompt, max_tokens=n, temperature=0, top_k=1)
        assert out["usage"]["completion_tokens"] == n
        # create_completion returns text: its ids are in the cache, all but the last (never evaluated)
        return llm.input_ids[len(prompt):llm.n_tokens].tolist()

    res = measure({"edgekit": edgekit, "llama-cpp-python": raw}, n_prompt, n_gen, repeats)
    res["ratio"] = {k: res["edgekit"][k] / res["llama-cpp-python"][k] for k in ("prefill_tps", "decode_tps")}
    return res


def bench_onnx(directory: Path, threads: int, n_prompt: int, n_gen: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    engine = runtimes.load(directory, threads=threads)
    prompt = prompt_of(engine, n_prompt)

    def edgekit(n: int) -> list[int]:
        engine.reset()
        out = generate(engine, prompt, max_tokens=n)
        assert out.eval_count == n, "hit end of text: pick a longer-running prompt"
        return out.tokens

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(str(directory / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    past_inputs = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    kv_dtype = np.float16 if "float16" in past_inputs[0].type else np.float32

    def plain(n: int) -> list[int]:  # numpy in, numpy out, every step
        past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), kv_dtype) for i in past_inputs}
        ids, out = list(prompt), []
        while True:
            p = next(iter(past.values())).shape[2]
            feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, p + len(ids)), np.int64),
                     "position_ids": np.arange(p, p + len(ids), dtype=np.int64)[None], **past}
            got = dict(zip(names, sess.run(None, feeds), strict=True))
            token = int(got["logits"][0, -1].argmax())
            out.append(token)
            if len(out) == n:
                return out
            past = {k: got[k.replace("past_key_values", "present")] for k in past}
            ids = [token]

    sides = {"edgekit": edgekit, "onnxruntime (numpy loop)": plain}
    try:
        import onnxruntime_genai as og

        model = og.Model(str(directory))

        def genai(n: int) -> list[int]:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(prompt) + n, do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(prompt)
            toks = []
            while len(toks) < n and not gen.is_done():
                gen.generate_next_token()
                toks.append(int(gen.get_next_tokens()[0]))
            return toks

        sides["onnxruntime-genai"] = genai
    except ImportError:
        pass
    res = measure(sides, n_prompt, n_gen, repeats)
    for other in sides:
        if other != "edgekit":
            res[f"ratio vs {other}"] = {k: res["edgekit"][k] / res[other][k] for k in ("prefill_tps", "decode_tps")}
    if "onnxruntime-genai" not in sides:
        res["onnxruntime-genai"] = "not installed here (no wheel for this platform/Python in the registry)"
    return res


def table(title: str, res: dict) -> str:
    lines = [f"{title}", f"  {'':<28}{'prefill tok/s':>14}{'decode tok/s':>14}"]
    for k, v in res.items():
        if isinstance(v, dict) and "prefill_tps" in v and not k.startswith("ratio"):
            lines.append(f"  {k:<28}{v['prefill_tps']:>14.1f}{v['decode_tps']:>14.1f}")
    for k, v in res.items():
        if k.startswith("ratio"):
            lines.append(f"  {k:<28}{v['prefill_tps']:>13.3f}x{v['decode_tps']:>13.3f}x")
    lines.append(f"  same greedy tokens: {res['same_tokens']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from edgekit.models import smollm2
    from runtimes.devices import physical_cores

    threads = args.threads or physical_cores()
    context = 1024
    gguf = smollm2.gguf_path()
    report = {"threads": threads, "prompt_tokens": args.prompt_tokens, "tokens": args.tokens, "repeats": args.repeats}
    report["gguf"] = bench_gguf(gguf, threads, args.prompt_tokens, args.tokens, args.repeats, context)
    print(table(f"GGUF {gguf.name}, {threads} threads", report["gguf"]), flush=True)
    if not args.no_onnx:
        import converters.onnx as conv

        src = smollm2.ensure()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "smollm2-onnx"
            t0 = time.perf_counter()
            conv.convert(str(src), str(out), progress=False, dtype="fp32")
            print(f"(ONNX fp32 export: {time.perf_counter() - t0:.1f} s)", flush=True)
            report["onnx"] = bench_onnx(out, threads, args.prompt_tokens, args.tokens, args.repeats)
        print(table(f"ONNX fp32 SmolLM2-135M-Instruct, {threads} threads", report["onnx"]), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
