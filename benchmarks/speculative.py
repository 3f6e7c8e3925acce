"""Speculative decoding on an input-echoing task: decode tokens/s of SmolLM2-135M-Instruct rewriting a ~300-token
code snippet with one change, plain vs prompt lookup (what ``edgekit run --lookup`` runs), greedy.

Each run is a fresh process with the user's environment, through the public API (``runtimes.load``, the
model's chat template, ``generate`` with or without ``PromptLookup``); rounds alternate which side goes
first and medians are reported. Decode tokens/s = (n - 1) / time from the first to the last generated token.
The two sides' tokens are compared (they must be identical: speculation never changes greedy output), and
the acceptance rate and target forwards per token are printed. Nothing asserts a time.

    python benchmarks/speculative.py [--artifact X.gguf|ONNX_DIR] [--tokens 256] [--rounds 5] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = '''\
def summarize_orders(orders, tax_rate=0.2, currency="EUR"):
    """Totals per customer, with tax, skipping cancelled orders."""
    totals = {}
    for order in orders:
        if order.get("status") == "cancelled":
            continue
        customer = order["customer"]
        amount = sum(item["price"] * item["quantity"] for item in order["items"])
        if order.get("discount"):
            amount -= amount * order["discount"]
        totals[customer] = totals.get(customer, 0.0) + amount
    report = []
    for customer, amount in sorted(totals.items()):
        tax = amount * tax_rate
        report.append({
            "customer": customer,
            "net": round(amount, 2),
            "tax": round(tax, 2),
            "gross": round(amount + tax, 2),
            "currency": currency,
        })
    return report


def print_report(report):
    width = max(len(row["customer"]) for row in report)
    for row in report:
        print(f"{row['customer']:<{width}}  {row['gross']:>10.2f} {row['currency']}")
    print("-" * (width + 16))
    print(f"{'total':<{width}}  {sum(row['gross'] for row in report):>10.2f}")
'''
TASK = ("Rewrite the following Python code with one change: rename the parameter tax_rate to vat_rate everywhere. "
        "Output only the complete code.\n\n```python\n" + SNIPPET + "```")


def side(artifact: str, lookup: bool, n: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import runtimes
    from runtimes.chat import prompt_tokens
    from runtimes.generate import generate
    from runtimes.speculative import drafter

    engine = runtimes.load(artifact, threads=threads)
    prompt = prompt_tokens(engine, [{"role": "user", "content": TASK}])
    generate(engine, prompt[:16], max_tokens=8)  # warm-up
    engine.reset()
    out = generate(engine, prompt, max_tokens=n, draft=drafter(engine, lookup=lookup))
    return {"prompt_tokens": len(prompt), "snippet_tokens": len(engine.tokenize(SNIPPET, add_special=False)),
            "decode_tps": (out.eval_count - 1) / out.eval_seconds, "tokens": out.tokens, "text": out.text,
            "speculative": out.speculative}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", help="a GGUF file or ONNX directory (default: SmolLM2 q8_0 from edgekit convert)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--side", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        artifact, lookup, n, threads = args.side
        print(json.dumps(side(artifact, lookup == "1", int(n), int(threads))))
        return
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from runtime import q8_0_gguf

    from runtimes.devices import physical_cores

    threads = args.threads or physical_cores()
    artifact = args.artifact or str(q8_0_gguf(Path.home() / ".cache" / "edgekit" / "bench"))
    print(f"{artifact}, {threads} threads, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    runs: dict[str, list[dict]] = {"plain": [], "lookup": []}
    for r in range(args.rounds):
        for name in (("plain", "lookup") if r % 2 == 0 else ("lookup", "plain")):
            proc = subprocess.run([sys.executable, __file__, "--side", artifact, "1" if name == "lookup" else "0",
                                   str(args.tokens), str(threads)], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  round {r + 1}/{args.rounds}: plain {runs['plain'][-1]['decode_tps']:.1f}, lookup "
              f"{runs['lookup'][-1]['decode_tps']:.1f} decode tok/s", flush=True)
    plain = statistics.median(x["decode_tps"] for x in runs["plain"])
    look = statistics.median(x["decode_tps"] for x in runs["lookup"])
    spec = runs["lookup"][0]["speculative"]
    same = all(x["tokens"] == runs["plain"][0]["tokens"] for x in runs["plain"] + runs["lookup"])
    first = runs["plain"][0]
    report = {"artifact": artifact, "threads": threads, "snippet_tokens": first["snippet_tokens"],
              "prompt_tokens": first["prompt_tokens"], "generated": len(first["tokens"]),
              "plain_decode_tps": plain, "lookup_decode_tps": look, "speedup": look / plain,
              "same_tokens": same, "speculative": spec, "loadavg_end": os.getloadavg()}
    print(f"echo task: rewrite a {first['snippet_tokens']}-token snippet ({first['prompt_tokens']} prompt tokens), "
          f"{len(first['tokens'])} generated, median of {args.rounds} rounds")
    print(f"  plain           {plain:8.1f} decode tok/s")
    print(f"  prompt lookup   {look:8.1f} decode tok/s   {look / plain:.2f}x   acceptance "
          f"{spec['acceptance_rate']:.0%}, {spec['tokens_per_forward']:.2f} tokens per target forward")
    print(f"  same greedy tokens: {same}")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
