"""The two tasks a report runs per target, plain functions of JSON-able arguments (an executor may run them in
another process or on another machine): :func:`prepare` builds the artifact and evaluates it, :func:`bench` times
it. Each returns its failure as data (``{"error": one line}``) so one bad target is one failed row."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.report.targets import Target, parse


def _one_line(err: BaseException) -> str:
    if isinstance(err, EdgekitError):
        return str(err)
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"


def runnable_here(fmt: str) -> str | None:
    """None when this host can run ``fmt``, else why not."""
    if fmt == "coreml" and platform.system() != "Darwin":
        return "Core ML predicts only on macOS: built and checked here, measured by the macOS workflow"
    return None


def build(model: str, target: Target, dest: Path, calib: str | None, samples: int | None,
          seqlen: int | None) -> dict[str, Any]:
    """``edgekit convert`` or ``edgekit quantize`` of ``model`` into ``dest`` for ``target``."""
    if target.command == "convert":
        import converters

        return converters.get(target.fmt).convert(model, str(dest), force=True, progress=False, **target.options)
    from quant.pipeline import run

    options = dict(target.options)
    method = options.pop("method")
    if target.calibrated:
        options.update({k: v for k, v in (("calib", calib), ("samples", samples), ("seqlen", seqlen)) if v})
    return run(model, target.fmt, method, str(dest), force=True, progress=False, **options)


def prepare(model: str, spec: str, artifacts_dir: str, calib: str | None, samples: int | None, seqlen: int | None,
            text: str | None, ctx: int, chunks: int | None, threads: int | None) -> dict[str, Any]:
    """Build target ``spec`` of ``model`` under ``artifacts_dir``, then score it with ``edgekit eval`` against the
    model on ``text``. Returns the artifact's facts and its quality, or the failure of either as ``error``."""
    from edgekit.bench.roofline import artifact_bytes, weight_bytes_per_token

    target = parse(spec)
    dest = Path(artifacts_dir) / target.filename
    out: dict[str, Any] = {"target": spec, "format": target.fmt, "method": target.method, "artifact": str(dest)}
    started = time.perf_counter()
    try:
        built = build(model, target, dest, calib, samples, seqlen)
    except Exception as err:  # noqa: BLE001 - any failure is this target's row
        return {**out, "error": f"build: {_one_line(err)}"}
    out.update({"build_seconds": time.perf_counter() - started, "size_bytes": artifact_bytes(dest),
                "bytes_per_token": weight_bytes_per_token(dest), "quant": built.get("quant")})
    why = runnable_here(target.fmt)
    if why:
        out["quality"] = {"skipped": why}
        return out
    try:
        from edgekit.eval.run import run

        result = run(str(dest), model, text, ctx, chunks, threads, progress=False)
    except Exception as err:  # noqa: BLE001
        return {**out, "error": f"eval: {_one_line(err)}"}
    out["quality"] = {k: result[k] for k in ("ppl", "ppl_error", "reference_ppl", "delta_ppl", "kld_mean", "kld_p99",
                                             "top1_agreement", "tokens", "chunks", "ctx", "text") if k in result}
    return out


def bench(artifact: str, n_prompt: int, n_gen: int, reps: int, threads: int | None) -> dict[str, Any]:
    """``edgekit bench`` of one artifact; the rows and the system header of the machine that ran it."""
    from edgekit.bench.run import bench as run_bench

    try:
        result = run_bench([artifact], n_prompt=n_prompt, n_gen=n_gen, reps=reps,
                           threads=None if threads is None else [threads], progress=False)
    except Exception as err:  # noqa: BLE001
        return {"error": _one_line(err)}
    return {"rows": result["rows"], "system": result["system"]}
