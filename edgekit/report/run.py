"""`edgekit report`: every target of a model converted or quantized, evaluated and benched, into one report card
(report.md, report.json, plots), with a memory plan per target checked against its measured peak RSS and, per
device of the table, which targets fit and their predicted decode speed."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

PLAN_TOLERANCE = 0.15  # the plan is checked against the measured peak RSS within this share


def _check_inputs(model: str, text: str | None, calib: str | None, out_dir: Path) -> Path:
    from edgekit.artifacts import is_checkpoint

    path = Path(model).expanduser()
    if not path.is_dir() or not is_checkpoint(path):
        raise EdgekitError(f"{model} is not a Hugging Face checkpoint directory",
                           "pass the directory with config.json and the weights (what edgekit convert takes)")
    for what, f in (("--text", text), ("--calib", calib)):
        if f and not Path(f).expanduser().is_file():
            raise EdgekitError(f"{what} {f} not found", f"pass an existing text file to {what}")
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgekitError(f"-o {out_dir} exists and is not a directory", "choose a directory for the report")
    return path.resolve()


def report(model: str, targets: Sequence[str], out_dir: str | Path, *, text: str | None = None,
           calib: str | None = None, samples: int | None = None, seqlen: int | None = None,
           devices: Sequence[str] = (), executor: str = "local", address: str | None = None, ctx: int = 512,
           chunks: int | None = 20, n_prompt: int = 512, n_gen: int = 128, reps: int = 3, threads: int | None = None,
           context: int = 2048, progress: bool = True) -> dict[str, Any]:
    """Build, eval and bench every target of ``model`` into ``out_dir`` (report.md, report.json, kld_vs_size.png,
    decode_vs_size.png; the artifacts under ``artifacts/``). Every input is checked before any work: an unknown
    target or device is one EdgekitError. A target that fails is a failed row; ``result["failed"]`` counts them.
    ``context`` is the KV cache the memory plan and the device table assume."""
    from edgekit.bench.run import check_options
    from edgekit.checkpoint import open_checkpoint
    from edgekit.report import devices as device_table
    from edgekit.report import executors, tasks
    from edgekit.report.targets import parse_all
    from edgekit.spec import from_config

    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    model_path = _check_inputs(model, text, calib, out)
    parsed = parse_all(targets)
    chosen = device_table.resolve(devices)
    check_options(n_prompt, n_gen, reps, [threads or 1], [0], "auto")
    if context < 1:
        raise EdgekitError(f"--context {context} must be at least 1", "pass the KV cache size to plan for")
    spec = from_config(open_checkpoint(str(model_path)).config)
    run = executors.make(executor, address)
    artifacts = out / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    bar = tqdm(total=2 * len(parsed), desc="report", unit="step", disable=not progress, file=sys.stderr)
    try:
        prepared = run.prepare(tasks.prepare, [(str(model_path), t.spec, str(artifacts), calib, samples, seqlen, text,
                                                ctx, chunks, threads) for t in parsed], lambda: bar.update(1))
        to_bench = [p for p in prepared if "error" not in p and tasks.runnable_here(p["format"]) is None]
        bar.update(len(parsed) - len(to_bench))
        benched = run.bench(tasks.bench, [(p["artifact"], n_prompt, n_gen, reps, threads) for p in to_bench],
                            [p.get("node") for p in to_bench], lambda: bar.update(1))
    finally:
        bar.close()
        run.close()
    by_artifact = {p["artifact"]: b for p, b in zip(to_bench, benched, strict=True)}
    rows = [_row(p, by_artifact.get(p["artifact"]), spec, context, n_prompt, n_gen) for p in prepared]
    system = next((b["system"] for b in benched if "system" in b), None)
    result = {"model": str(model_path), "model_name": model_path.name, "executor": run.name,
              "options": {"ctx": ctx, "chunks": chunks, "text": text or "held-out Persuasion", "n_prompt": n_prompt,
                          "n_gen": n_gen, "reps": reps, "threads": threads, "context": context, "calib": calib,
                          "samples": samples, "seqlen": seqlen},
              "host": platform.node(), "system": system, "rows": rows,
              "devices": [_device_rows(d, rows, context) for d in chosen],
              "failed": sum(1 for r in rows if "error" in r), "seconds": time.perf_counter() - started}
    from edgekit.report import render

    result["files"] = render.write(result, out)
    return result


def _row(prepared: dict[str, Any], benched: dict[str, Any] | None, spec: Any, context: int, n_prompt: int,
         n_gen: int) -> dict[str, Any]:
    from edgekit.report import memory, tasks

    row = dict(prepared)  # "node": where Ray built it (and benched it)
    row["parameters"] = spec.parameter_count()
    if "error" in row:
        return row
    path = Path(row["artifact"])
    row["plan"] = memory.plan(path, row["format"], spec, context, n_prompt)
    if benched is None:
        row["bench"] = {"skipped": tasks.runnable_here(row["format"])}
        return row
    if "error" in benched or any("error" in r for r in benched["rows"]):
        row["error"] = "bench: " + (benched.get("error") or next(r["error"] for r in benched["rows"] if "error" in r))
        return row
    tests = {r["test"]: r for r in benched["rows"]}
    pp, tg = tests.get(f"pp{n_prompt}"), tests.get(f"tg{n_gen}")
    first = benched["rows"][0]
    row["bench"] = {"pp_tps": pp and pp["tps_mean"], "pp_sd": pp and pp["tps_sd"], "tg_tps": tg and tg["tps_mean"],
                    "tg_sd": tg and tg["tps_sd"], "ttft_ms": pp and pp["ttft_ms_mean"],
                    "load_seconds": first["load_seconds"], "peak_rss_bytes": first["peak_rss_bytes"],
                    "context": first["context"], "threads": first["threads"],
                    "roofline_share": tg and tg.get("roofline_share")}
    # the plan at the context the bench ran, against what the bench's process held at its peak
    at_bench = memory.plan(path, row["format"], spec, first["context"], n_prompt)
    measured = first["peak_rss_bytes"]
    row["plan_check"] = {"context": first["context"], "predicted_bytes": at_bench["total"], "measured_bytes": measured,
                         "error": at_bench["total"] / measured - 1,
                         "within": abs(at_bench["total"] / measured - 1) <= PLAN_TOLERANCE}
    return row


def _device_rows(device: Any, rows: list[dict[str, Any]], context: int) -> dict[str, Any]:
    from edgekit.report import devices as device_table

    out = []
    for r in rows:
        if "error" in r or not device_table.runs(device, r["format"]):
            continue
        entry = {"target": r["target"], "fits": device_table.fits(device, r["plan"]["total"]),
                 "planned_bytes": r["plan"]["total"]}
        share = (r.get("bench") or {}).get("roofline_share")
        if share:
            entry["predicted_decode_tps"] = device_table.predict_decode_tps(device, r["bytes_per_token"], share)
        out.append(entry)
    return {"device": device.name, "label": device.label, "ram_gib": device.ram_gib,
            "bandwidth_gbs": device.bandwidth_gbs, "targets": out}
