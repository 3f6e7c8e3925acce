"""A report's files: report.json (everything), report.md (the card people read) and the two plots (KLD vs size and
decode tokens/s vs size, the Pareto front marked), each written all-or-nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.artifacts import human_size
from edgekit.atomic import atomic_file, write_text


def pareto(points: list[tuple[str, float, float]], higher_is_better: bool) -> set[str]:
    """Labels of the points no other point beats on both axes: smaller size and better value."""
    front = set()
    for label, size, value in points:
        beaten = any(s <= size and (v > value if higher_is_better else v < value) and (s, v) != (size, value)
                     or s < size and v == value for _, s, v in points)
        if not beaten:
            front.add(label)
    return front


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def markdown(result: dict[str, Any], plots: dict[str, str]) -> str:
    opts = result["options"]
    lines = [f"# {result['model_name']}: report card", "",
             f"Quality: `edgekit eval` on {opts['text']}, ctx {opts['ctx']}, {opts['chunks']} windows, against the "
             f"original. Speed: `edgekit bench` -p {opts['n_prompt']} -n {opts['n_gen']} -r {opts['reps']} on "
             f"{(result['system'] or {}).get('cpu', 'this host')}. Memory plan: predicted before running, checked "
             f"at the bench's context against its measured peak RSS; device rows plan for a {opts['context']}-token "
             f"KV cache. Executor: {result['executor']}.", "",
             "| target | size | bits/w | ppl | mean KLD | top-1 | pp t/s | tg t/s | TTFT ms | roofline | peak RSS | "
             "plan | plan vs RSS |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['target']} | failed: {r['error']} |" + " |" * 11)
            continue
        q, b, c = r.get("quality", {}), r.get("bench", {}), r.get("plan_check")
        bpw = 8 * r["size_bytes"] / r["parameters"] if r.get("parameters") else None
        quality = (f"{q['ppl']:.3f} | {q['kld_mean']:.5f} | {100 * q['top1_agreement']:.1f}%" if "ppl" in q
                   else f"({q.get('skipped', '')}) | |")
        speed = (f"{b['pp_tps']:.1f} | {b['tg_tps']:.1f} | {b['ttft_ms']:.0f} | {100 * b['roofline_share']:.0f}% | "
                 f"{human_size(b['peak_rss_bytes'])}" if b.get("tg_tps") else "(not run here) | | | |")
        check = f"{100 * c['error']:+.1f}% {'ok' if c['within'] else 'OFF'}" if c else ""
        lines.append(f"| {r['target']} | {human_size(r['size_bytes'])} | {_fmt(bpw, '.2f')} | {quality} | {speed} | "
                     f"{human_size(r['plan']['total'])} | {check} |")
    for name, file in plots.items():
        lines += ["", f"![{name}]({file})"]
    if result["devices"]:
        lines += ["", "## Devices (predictions)", "",
                  "Fits: the plan at the chosen context within the share of RAM one app can use. Decode t/s: the "
                  "device's memory bandwidth x the roofline share measured here / bytes read per token. Both are "
                  "predictions from the device table (`edgekit/report/devices.json`, sources there), not "
                  "measurements.", "",
                  "| device | RAM | bandwidth | " + " | ".join(r["target"] for r in result["rows"]
                                                         if "error" not in r) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---" for r in result["rows"] if "error" not in r) + " |"]
        for d in result["devices"]:
            cells = {t["target"]: t for t in d["targets"]}
            row = []
            for r in result["rows"]:
                if "error" in r:
                    continue
                t = cells.get(r["target"])
                if t is None:
                    row.append("-")
                elif not t["fits"]:
                    row.append("does not fit")
                else:
                    row.append(f"fits, ~{t['predicted_decode_tps']:.0f} t/s" if t.get("predicted_decode_tps")
                               else "fits")
            lines.append(f"| {d['label']} | {d['ram_gib']} GiB | {d['bandwidth_gbs']} GB/s | " + " | ".join(row)
                         + " |")
    system = result.get("system")
    if system:
        from edgekit.bench.output import header_lines

        lines += ["", "## System", "", *[f"    {x}" for x in header_lines(system)]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], key: str, dest: Path) -> bool:
    """One scatter of ``key`` ("kld" | "decode") against file size, the Pareto front joined; False when no target
    has the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    for r in result["rows"]:
        if "error" in r:
            continue
        value = (r.get("quality") or {}).get("kld_mean") if key == "kld" else (r.get("bench") or {}).get("tg_tps")
        if value is not None:
            pts.append((r["target"], r["size_bytes"] / 1e6, float(value)))
    if not pts:
        return False
    better_high = key == "decode"
    front = pareto(pts, better_high)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"gguf": "tab:blue", "onnx": "tab:orange", "coreml": "tab:green"}
    for label, size, value in pts:
        fmt = label.split(":")[0]
        ax.scatter(size, value, s=60 if label in front else 30, color=colors.get(fmt, "gray"),
                   edgecolors="black" if label in front else "none", zorder=3)
        ax.annotate(label, (size, value), textcoords="offset points", xytext=(5, 4), fontsize=7)
    line = sorted((s, v) for label, s, v in pts if label in front)
    ax.plot([s for s, _ in line], [v for _, v in line], "--", color="black", linewidth=1, label="Pareto front")
    for fmt, color in colors.items():
        ax.scatter([], [], color=color, label=fmt)
    ax.set_xlabel("file size (MB)")
    if key == "kld":
        ax.set_ylabel("mean KL divergence vs the original (lower is better)")
        ax.set_yscale("log")
    else:
        ax.set_ylabel("decode tokens/s (higher is better)")
    ax.set_title(f"{result['model_name']}: {'quality' if key == 'kld' else 'decode speed'} vs size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def write(result: dict[str, Any], out: Path) -> dict[str, str]:
    """report.json, report.md and the plots into ``out``; returns their paths by role."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for key, name, title in (("kld", "kld_vs_size.png", "KLD vs size"),
                             ("decode", "decode_vs_size.png", "decode tok/s vs size")):
        if plot(result, key, out / name):
            plots[title] = name
    files = {"markdown": str(out / "report.md"), "json": str(out / "report.json"),
             **{name: str(out / name) for name in plots.values()}}
    write_text(out / "report.md", markdown(result, plots))
    write_text(out / "report.json", json.dumps({**result, "files": files}, indent=2, default=str))
    return files
