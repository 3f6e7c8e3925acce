"""The bench as a picture: prefill and decode tokens/s per artifact (mean with sd error bars), one bar per thread
count. matplotlib, without a display."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.atomic import atomic_file


def plot(result: dict[str, Any], dest: Path) -> Path:
    """Write ``dest`` (PNG) atomically; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result["rows"] if "error" not in r]
    tests = sorted({(r["test"], r["depth"]) for r in ok}, key=lambda t: (not t[0].startswith("pp"), t[1], t[0]))
    fig, axes = plt.subplots(1, max(1, len(tests)), figsize=(5.5 * max(1, len(tests)), 4.2), squeeze=False)
    artifacts = list(dict.fromkeys(r["artifact"] for r in ok))
    threads = sorted({r["threads"] for r in ok})
    width = 0.8 / max(1, len(threads))
    for ax, (test, depth) in zip(axes[0], tests, strict=False):
        for j, t in enumerate(threads):
            rows = {r["artifact"]: r for r in ok if r["test"] == test and r["depth"] == depth and r["threads"] == t}
            xs = [i + j * width for i, a in enumerate(artifacts) if a in rows]
            ax.bar(xs, [rows[a]["tps_mean"] for a in artifacts if a in rows], width,
                   yerr=[rows[a]["tps_sd"] for a in artifacts if a in rows], label=f"{t} threads", capsize=3)
        ax.set_xticks([i + width * (len(threads) - 1) / 2 for i in range(len(artifacts))])
        ax.set_xticklabels([Path(a).name for a in artifacts], rotation=30, ha="right", fontsize=8)
        ax.set_title(test + (f" @ depth {depth}" if depth else ""))
        ax.set_ylabel("tokens/s")
        ax.grid(axis="y", alpha=0.3)
        if len(threads) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"edgekit bench on {result['system']['cpu']}", fontsize=10)
    fig.tight_layout()
    with atomic_file(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return dest
