"""`edgekit bench` against llama-bench on the same GGUF, in the same run: pp512 and tg128 tokens/s.

Rounds alternate the two tools (A B, then B A, ...), each a process running ``-p 512 -n 128 -r R``: this host runs in
fast and slow spells of tens of seconds, so figures taken far apart differ more than the tools do. A round's ratio
is edgekit's mean over llama-bench's mean in that round; the summary is the median ratio over rounds, with the
per-round spread. llama-bench is built from the llama.cpp that llama-cpp-python vendors (``make llama-tools``).
Nothing asserts a time: the ratios are printed (and written with ``--json``) for a person to judge; the goal is
within 5% (0.95x - 1.05x).

    python benchmarks/bench.py [--rounds 6] [--reps 3] [--threads N] [--only q8_0|Q4_1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT, q8_0_gguf

sys.path.insert(0, str(ROOT))


def edgekit_side(gguf: Path, reps: int, threads: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "bench", str(gguf), "-p", "512", "-n", "128",
                           "-r", str(reps), "-t", str(threads), "--json"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"edgekit bench failed: {proc.stderr[-2000:]}")
    return {r["test"]: r["tps_mean"] for r in json.loads(proc.stdout)["rows"]}


def llama_bench_side(exe: Path, gguf: Path, reps: int, threads: int) -> dict[str, float]:
    proc = subprocess.run([str(exe), "-m", str(gguf), "-p", "512", "-n", "128", "-r", str(reps), "-t", str(threads),
                           "-o", "json"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"llama-bench failed: {proc.stderr[-2000:]}")
    out = {}
    for row in json.loads(proc.stdout):
        out[f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"] = row["avg_ts"]
    return out


def main() -> None:
    from edgekit.models import smollm2
    from edgekit.testing import llama_tools
    from runtimes.devices import default_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=default_threads("cpu"))
    ap.add_argument("--only", choices=("q8_0", "Q4_1"))
    ap.add_argument("--json", dest="json_file")
    args = ap.parse_args()
    exe = llama_tools.find("llama-bench")
    if exe is None:
        raise SystemExit("llama-bench is not built: run `make llama-tools` first")
    artifacts = {"q8_0": q8_0_gguf(Path.home() / ".cache" / "edgekit" / "bench"), "Q4_1": smollm2.gguf_path()}
    summary = {}
    for label, gguf in artifacts.items():
        if args.only and label != args.only:
            continue
        print(f"SmolLM2-135M-Instruct {label} ({gguf.name}), threads {args.threads}, {args.rounds} rounds of "
              f"-r {args.reps}", flush=True)
        rounds = []
        for i in range(args.rounds):
            sides = [("edgekit", lambda g=gguf: edgekit_side(g, args.reps, args.threads)),
                     ("llama-bench", lambda g=gguf: llama_bench_side(exe, g, args.reps, args.threads))]
            got = dict((name, fn()) for name, fn in (sides if i % 2 == 0 else sides[::-1]))
            ratio = {t: got["edgekit"][t] / got["llama-bench"][t] for t in ("pp512", "tg128")}
            rounds.append({**got, "ratio": ratio})
            print(f"  round {i + 1}: pp512 {got['edgekit']['pp512']:.1f} vs {got['llama-bench']['pp512']:.1f} "
                  f"({ratio['pp512']:.3f}x), tg128 {got['edgekit']['tg128']:.1f} vs {got['llama-bench']['tg128']:.1f}"
                  f" ({ratio['tg128']:.3f}x)", flush=True)
        med = {t: statistics.median(r["ratio"][t] for r in rounds) for t in ("pp512", "tg128")}
        spread = {t: (min(r["ratio"][t] for r in rounds), max(r["ratio"][t] for r in rounds)) for t in med}
        summary[label] = {"median_ratio": med, "spread": spread, "rounds": rounds}
        print(f"  edgekit bench / llama-bench, median over rounds: pp512 {med['pp512']:.3f}x "
              f"[{spread['pp512'][0]:.3f} - {spread['pp512'][1]:.3f}], tg128 {med['tg128']:.3f}x "
              f"[{spread['tg128'][0]:.3f} - {spread['tg128'][1]:.3f}] (goal: 0.95x - 1.05x)", flush=True)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
