"""The bench: artifacts x thread counts, each measured in a child process (:mod:`edgekit.bench.measure`), into rows
llama-bench would print, plus what it does not measure (TTFT, load time, peak RSS, file size, roofline share)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit import child
from edgekit.errors import EdgekitError

DEVICES = ("auto", "cpu", "apple-silicon", "android-nnapi", "jetson")


def resolve(refs: Sequence[str]) -> list[tuple[str, Path]]:
    """(what the user typed, artifact path) for every ARTIFACT or store NAME, before any work: one that is neither
    raises EdgekitError."""
    from edgekit.serve.store import resolve_artifact

    out = []
    for ref in refs:
        path, _adapter = resolve_artifact(ref)
        if not Path(path).exists():
            raise EdgekitError(f"{ref} is neither an artifact nor a model in the store",
                               "pass a .gguf file, an ONNX or Core ML directory, or a name from edgekit list")
        out.append((ref, Path(path)))
    return out


def check_options(n_prompt: int, n_gen: int, reps: int, threads: Sequence[int], depths: Sequence[int],
                  device: str) -> None:
    """One line for a nonsensical option, before any work."""
    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0:
        raise EdgekitError(f"-p {n_prompt} -n {n_gen}: nothing to measure", "give -p and/or -n a positive count")
    if reps < 1:
        raise EdgekitError(f"-r {reps} must be at least 1", "pass the number of repetitions, e.g. -r 5")
    if not threads or min(threads) < 1:
        raise EdgekitError(f"--threads {','.join(map(str, threads))}: every count must be at least 1",
                           "pass positive thread counts, e.g. --threads 1,2")
    if min(depths, default=0) < 0:
        raise EdgekitError(f"--depth {','.join(map(str, depths))}: depths are token counts >= 0", "e.g. --depth 0,512")
    if device not in DEVICES:
        raise EdgekitError(f"unknown device {device!r}", f"choose one of: {', '.join(DEVICES)}")


def measure_in_child(path: Path, *, threads: int, n_prompt: int, n_gen: int, reps: int, depths: Sequence[int],
                     device: str, seed: int = 0, timeout: float = 3600) -> dict[str, Any]:
    """:func:`edgekit.bench.measure.measure` in a child process: its result, or ``{"error": one line}``."""
    spec = {"artifact": str(path), "threads": threads, "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
            "depths": list(depths), "device": device, "seed": seed}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit.bench.measure", json.dumps(spec)], capture_output=True,
                              text=True, env=child.env(TRANSFORMERS_VERBOSITY="error"), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer in {timeout:.0f} s"}
    try:
        return child.answer(proc.stdout, proc.stderr, proc.returncode, "the runtime died", None)
    except EdgekitError as err:
        return {"error": str(err)}


def bench(refs: Sequence[str], *, n_prompt: int = 512, n_gen: int = 128, reps: int = 5,
          threads: Sequence[int] | None = None, depths: Sequence[int] = (0,), device: str = "auto",
          progress: bool = True, system: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every artifact at every thread count. Returns ``{"system": header, "rows": [...], "failed": n}``: one
    row per artifact, thread count, test and depth (``tps_mean`` ± ``tps_sd``; TTFT on pp rows; share of the
    memory-bandwidth roofline on tg rows), or one row with ``error`` for an artifact that did not load or run.
    ``threads`` defaults to the device profile's count."""
    from edgekit.bench import roofline
    from edgekit.bench import system as system_mod

    if threads is None:  # the device profile's count, as `edgekit run` would use on this host
        from runtimes.devices import default_threads, detect, host_facts

        # "coreml": the facts detect() reads, without loading onnxruntime or llama.cpp in this process
        threads = [default_threads(detect(host_facts("coreml")) if device == "auto" else device)
                   if device in DEVICES else 1]
    check_options(n_prompt, n_gen, reps, threads, depths, device)
    artifacts = resolve(refs)
    sizes = {path: roofline.artifact_bytes(path) for _, path in artifacts}
    per_token: dict[Path, int | None] = {}
    rows: list[dict[str, Any]] = []
    jobs = [(ref, path, t) for ref, path in artifacts for t in threads]
    from tqdm import tqdm

    bar = tqdm(jobs, desc="bench", unit="run", disable=not progress, file=sys.stderr)
    for ref, path, t in bar:
        bar.set_postfix_str(f"{path.name} threads {t}")
        base = {"artifact": ref, "path": str(path), "size_bytes": sizes[path], "threads": t}
        got = measure_in_child(path, threads=t, n_prompt=n_prompt, n_gen=n_gen, reps=reps, depths=depths,
                               device=device)
        if "error" in got:
            rows.append({**base, "error": got["error"]})
            continue
        if path not in per_token:  # once per artifact, whatever the thread counts
            try:
                per_token[path] = roofline.weight_bytes_per_token(path)
            except Exception:  # tables that do not read give no roofline, not a failed row  # noqa: BLE001
                per_token[path] = None
        common = {**base, "format": got["kind"], "load_seconds": got["load_seconds"],
                  "peak_rss_bytes": got["peak_rss_bytes"], "rss_start_bytes": got["rss_start_bytes"],
                  "context": got["context"], "bytes_per_token": per_token[path],
                  "providers": got["engine"].get("providers"), "profile": got["engine"].get("profile")}
        rows.extend({**common, **test} for test in got["tests"])
    # the system header last: its bandwidth test moves a GiB, and the kernel's reclaim of it afterwards costs the
    # next seconds' measurements CPU time (measured: pp512 ~0.8x of llama-bench when it ran first)
    header = system if system is not None else system_mod.header(list(threads))
    bandwidth = header.get("bandwidth_bytes_per_s")
    for row in rows:
        if row.get("test", "").startswith("tg") and row.get("bytes_per_token") and bandwidth:
            row["roofline_share"] = row["tps_mean"] * row["bytes_per_token"] / bandwidth
    return {"system": header, "rows": rows, "failed": sum(1 for r in rows if "error" in r),
            "options": {"n_prompt": n_prompt, "n_gen": n_gen, "reps": reps, "threads": list(threads),
                        "depths": list(depths), "device": device}}
