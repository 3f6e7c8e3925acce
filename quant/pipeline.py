"""``edgekit quantize`` from start to end: checks first (a method the format cannot hold fails before any
work, naming the closest one that fits), then either llama.cpp's quantizer on edgekit's GGUF (k-quants, fed
edgekit's importance matrix) or a streaming conversion whose tensor seam hands each weight to rtn / nf4.
The result records method, grid and calibration in the artifact's manifest (``edgekit.json`` in an ONNX or
Core ML directory; for a GGUF file, ``edgekit.quant.*`` metadata keys and ``<file>.edgekit.json`` beside it).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.atomic import atomic_output, check_destination
from edgekit.errors import EdgekitError
from quant import kquant

GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
ONNX_TYPES = ("int4", "int8")
METHODS = ("rtn", "nf4", "gptq", *kquant.METHODS)
CALIBRATED = ("gptq",)  # seam methods that run the model on calibration text (quant/layerwise.py)


def resolve(fmt: str, method: str, qtype: str | None, group_size: int | None, symmetric: bool | None) -> dict[str, Any]:
    """The grid a (format, method, type) names, or an EdgekitError naming the closest method that fits."""
    if method not in METHODS:
        raise EdgekitError(f"unknown --method {method}", f"methods: rtn, nf4, gptq, awq, {', '.join(kquant.METHODS)}")
    if method in kquant.METHODS:
        if fmt != "gguf":
            raise EdgekitError(f"{method} is a llama.cpp GGUF type; {fmt} cannot hold it",
                               f"for --to {fmt} use --method rtn --type int4, or --method nf4")
        if qtype or group_size or symmetric is not None:
            raise EdgekitError(f"--type/--group-size/--sym/--asym do not apply to {method}",
                               "llama.cpp's mix fixes its own types and blocks")
        return {"kind": "kquant", "grid": f"gguf:{method}"}
    if fmt == "gguf":
        if method == "nf4":
            raise EdgekitError("nf4 is not a GGUF type",
                               "use --method iq4_nl (llama.cpp's non-linear 4-bit type), or --to onnx for NF4")
        t = qtype or "q4_0"
        if t not in GGUF_TYPES:
            raise EdgekitError(f"--type {t} is not a GGUF block type for rtn", f"GGUF types: {', '.join(GGUF_TYPES)}")
        if group_size not in (None, 32) or symmetric is not None:
            raise EdgekitError(f"GGUF {t} has a fixed block of 32 and its own symmetry",
                               "drop --group-size/--sym/--asym (q4_0/q5_0 are symmetric, q4_1/q5_1 asymmetric)")
        return {"kind": "seam", "grid": f"gguf:{t}", "params": {}}
    return _per_block(fmt, method, qtype, group_size, symmetric)


# per-block formats: (nf4 grid, what the int grids are called, whether nf4 refuses --sym/--asym). ONNX: MatMulNBits
# and MatMulBnb4; Core ML (iOS 18): constexpr_blockwise_shift_scale and NF4 as a 16-entry table per block
# (constexpr_lut_to_dense), where a symmetry flag has nothing to act on
_PER_BLOCK = {"onnx": ("onnx:nf4", "an ONNX MatMulNBits type", False),
              "coreml": ("coreml:palette4", "a Core ML per-block type", True)}


def _per_block(fmt: str, method: str, qtype: str | None, group_size: int | None,
               symmetric: bool | None) -> dict[str, Any]:
    nf4_grid, int_kind, nf4_refuses_sym = _PER_BLOCK[fmt]
    if method == "nf4":
        if qtype not in (None, "nf4"):
            raise EdgekitError(f"--type {qtype} does not apply to nf4", "drop --type")
        if nf4_refuses_sym and symmetric is not None:
            raise EdgekitError("--sym/--asym do not apply to nf4 (a table per block)", "drop --sym/--asym")
        return {"kind": "seam", "grid": nf4_grid, "params": {"block_size": group_size or 64}}
    t = qtype or "int4"
    if t not in ONNX_TYPES:
        raise EdgekitError(f"--type {t} is not {int_kind}", "use --type int4 or --type int8")
    return {"kind": "seam", "grid": f"{fmt}:{t}",
            "params": {"block_size": group_size or 32, "symmetric": True if symmetric is None else symmetric}}


def run(model: str, fmt: str, method: str, output: str | None = None, *, qtype: str | None = None,
        group_size: int | None = None, symmetric: bool | None = None, double_quant: bool = False,
        calib: str | None = None, imatrix_file: str | None = None, no_imatrix: bool = False,
        samples: int | None = None, seqlen: int | None = None, keep_head: bool | None = None,
        keep_embed: bool = False, force: bool = False, progress: bool = True, damp: float | None = None,
        act_order: bool = False, then: str | None = None, clip: bool | None = None,
        save_scaled: str | None = None) -> dict[str, Any]:
    from edgekit.checkpoint import open_checkpoint
    from quant import calibration

    if (damp is not None or act_order) and method != "gptq":
        raise EdgekitError("--damp/--act-order apply to --method gptq only", "drop them or use --method gptq")
    if method == "awq":  # calibrated scales first, then one of the paths below on the scaled checkpoint
        from quant import awq_run

        return awq_run.run(model, fmt, output, then=then, qtype=qtype, group_size=group_size, symmetric=symmetric,
                           double_quant=double_quant, calib=calib, imatrix_file=imatrix_file, no_imatrix=no_imatrix,
                           samples=samples, seqlen=seqlen, clip=clip, save_scaled=save_scaled, keep_head=keep_head,
                           keep_embed=keep_embed, force=force, progress=progress)
    if then is not None or clip is not None or save_scaled:
        raise EdgekitError("--then/--clip/--no-clip/--save-scaled apply to --method awq only",
                           "drop them, or use --method awq")
    started = time.perf_counter()
    plan = resolve(fmt, method, qtype, group_size, symmetric)
    if plan["kind"] == "seam" and double_quant:
        if plan["grid"] not in ("onnx:nf4", "coreml:palette4"):
            raise EdgekitError("--double-quant applies to nf4 only", "drop --double-quant")
        plan["params"]["double_quant"] = True
    if plan["kind"] == "seam" and (imatrix_file or (calib and method not in CALIBRATED)):
        raise EdgekitError(f"{method} uses no calibration data", "drop --calib/--imatrix (they feed k-quants)")
    if method in CALIBRATED:
        calibration.load_text(calib)  # a missing or empty file fails now, not after the calibration pass
    if imatrix_file and no_imatrix:
        raise EdgekitError("--imatrix and --no-imatrix contradict each other", "pass one of them")
    if plan["kind"] == "kquant" and not no_imatrix and not imatrix_file:
        calibration.load_text(calib)  # a missing or empty file fails now, not after the conversion
    ckpt = open_checkpoint(model)
    if plan["kind"] == "seam":
        _check_blocks(ckpt, plan)
    label = method if plan["kind"] == "kquant" else f"{method}-{plan['grid'].split(':')[1]}"
    if fmt == "gguf":
        dest = Path(output).expanduser() if output else Path.cwd() / f"{ckpt.path.name}-{label}.gguf"
    else:
        dest = Path(output).expanduser() if output else Path.cwd() / f"{ckpt.path.name}-{label}-{fmt}"
    check_destination(dest, force)
    quant_info: dict[str, Any] = {"method": method, "grid": plan["grid"], **plan.get("params", {})}
    if plan["kind"] == "kquant":
        summary = _kquant(ckpt, model, dest, method, quant_info, calib=calib, imatrix_file=imatrix_file,
                          no_imatrix=no_imatrix, samples=samples, seqlen=seqlen, keep_head=keep_head,
                          keep_embed=keep_embed, force=force, progress=progress)
    else:
        from edgekit.spec import from_config

        tied = from_config(ckpt.config).tied_embeddings
        keep_head = True if keep_head is None else keep_head  # llama.cpp's default: the head stays precise
        calibrated = None
        if method == "gptq":
            if fmt == "onnx":  # what the ONNX converter refuses (MoE), refused before the calibration pass
                from converters.onnx.decoder import check_supported

                check_supported(from_config(ckpt.config))
            from quant import gptq
            from quant.grids import get as get_grid

            calibrated, info = gptq.run(model, get_grid(plan["grid"], **plan["params"]), calib=calib,
                                        samples=samples, seqlen=seqlen, damp=0.01 if damp is None else damp,
                                        act_order=act_order, progress=progress)
            quant_info.update({"calibration": info["calibration"], "damp": info["damp"],
                               "act_order": info["act_order"], "damp_max_used": info["max_damp_used"],
                               "layer_error_ratio_mean": info["err_ratio_mean"],
                               # ||WX - ŴX||² of GPTQ and of RTN on the same grid, per linear, on the calibration inputs
                               "layer_errors": {e["name"]: [e["err_gptq"], e["err_rtn"]] for e in calibrated.errors
                                                if "err_gptq" in e}})
        summary = _seam(model, fmt, dest, method, plan, tied=tied, keep_head=keep_head, keep_embed=keep_embed,
                        force=force, progress=progress, calibrated=calibrated)
        quant_info.update({"keep_head": keep_head, "keep_embed": keep_embed})
    summary["quant"] = quant_info
    write_manifest(dest, fmt, {"quant": quant_info})
    summary.update({"output": str(dest), "format": fmt, "seconds": round(time.perf_counter() - started, 3)})
    return summary


def _check_blocks(ckpt: Any, plan: dict[str, Any]) -> None:
    """Every linear weight's input dimension must split into whole blocks: checked on shapes, before any work."""
    from edgekit.roles import LINEAR, role_of

    block = plan["params"].get("block_size", 32)
    for name, info in ckpt.tensors.items():
        role, _ = role_of(name)
        if role in LINEAR and len(info.shape) == 2 and info.shape[-1] % block:
            raise EdgekitError(f"--group-size {block} does not divide the input dimension {info.shape[-1]} of {name}",
                               "choose a group size that divides every linear layer's input dimension")


def manifest_path(artifact: Path) -> Path:
    """Where an artifact's edgekit.json lives: inside a directory, beside a file (``<file>.edgekit.json``)."""
    return artifact / "edgekit.json" if artifact.is_dir() else artifact.with_name(artifact.name + ".edgekit.json")


def write_manifest(artifact: Path, fmt: str, update: dict[str, Any]) -> Path:
    """Merge ``update`` into the artifact's manifest, atomically."""
    path = manifest_path(artifact)
    data = json.loads(path.read_text()) if path.exists() else {"format": fmt, "file": artifact.name}
    data.update(update)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _kquant(ckpt: Any, model: str, dest: Path, method: str, quant_info: dict[str, Any], *, calib: str | None,
            imatrix_file: str | None, no_imatrix: bool, samples: int | None, seqlen: int | None,
            keep_head: bool | None, keep_embed: bool, force: bool, progress: bool) -> dict[str, Any]:
    import converters
    from quant import imatrix as im_mod
    from quant.imatrix_run import compute_for

    if method in kquant.NEEDS_IMATRIX and no_imatrix:
        raise EdgekitError(f"{method} needs an importance matrix", "drop --no-imatrix, or pass --imatrix FILE")
    if imatrix_file:
        im = im_mod.read(imatrix_file)
        quant_info["imatrix"] = {"file": str(imatrix_file), "datasets": im.datasets, "chunks": im.chunk_count}
    elif not no_imatrix:
        im = compute_for(model, calib, samples, seqlen, progress)  # bad calibration fails before the conversion
        quant_info["imatrix"] = {"computed": True, "datasets": im.datasets, "chunks": im.chunk_count,
                                 "chunk_size": im.chunk_size}
    else:
        im = None
        quant_info["imatrix"] = None
    shapes = gguf_shapes(model)  # from shapes alone: a foreign imatrix fails before the conversion
    if im is not None:
        im_mod.check_matches(im, shapes, imatrix_file or "computed")
    base = dest.parent / f".{dest.name}.base-{secrets.token_hex(4)}.gguf"
    try:
        converters.get("gguf").convert(model, str(base), force=True, progress=progress)
        means = {n: v for n, v in im.means().items() if n in shapes} if im is not None else None
        kv = {"edgekit.quant.method": method, "edgekit.quant.grid": quant_info["grid"],
              "edgekit.quant.calibration": (im.datasets[0] if im is not None and im.datasets else "none")}
        with atomic_output(dest, force=force) as tmp:
            result = kquant.quantize(base, tmp, method, means, keep_head=bool(keep_head), keep_embed=keep_embed,
                                     kv=kv, progress=progress)
        return {"tensors": result["tensors"], "bytes": dest.stat().st_size,
                "bits_per_weight": _bpw(dest)}
    finally:
        base.unlink(missing_ok=True)


def gguf_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> shape (rows, columns) of ``model``'s GGUF conversion, planned without reading weights."""
    from converters.gguf.base import open_model
    from converters.gguf.stream import plan
    from converters.gguf.types import Q

    ckpt, fam = open_model(model, None, False)
    return {p.job.name: p.shape for p in plan(fam.jobs(), ckpt, Q.F16, architecture=fam.spec.architecture)}


def _bpw(path: Path) -> float:
    import gguf

    r = gguf.GGUFReader(str(path))
    n = sum(int(np.prod(t.shape)) for t in r.tensors)
    b = sum(int(t.n_bytes) for t in r.tensors)
    return round(8.0 * b / max(1, n), 4)


def _seam(model: str, fmt: str, dest: Path, method: str, plan: dict[str, Any], *, tied: bool, keep_head: bool,
          keep_embed: bool, force: bool, progress: bool, calibrated: Any = None) -> dict[str, Any]:
    import converters
    from converters.seam import Seam
    from quant import quantize as run_quantizer

    grid, params = plan["grid"], plan["params"]
    storage_name = grid.split(":")[1].upper()

    def wanted(t: Any) -> bool:
        # ONNX stores codes for the decoder's linear layers only (embeddings are a Gather, the head a MatMul
        # the converter keeps in floats); GGUF and Core ML store codes for any matrix, and there a tied
        # model's token embedding is also its output head
        if t.role == "head" or (t.role == "embed" and tied):
            return fmt in ("gguf", "coreml") and not keep_head
        if t.role == "embed":
            return fmt in ("gguf", "coreml") and not keep_embed
        return t.linear

    def storage(t: Any, default: str) -> str:
        if not wanted(t):
            return default
        return storage_name if fmt == "gguf" else grid

    def transform(t: Any):
        if not wanted(t):
            return None
        if calibrated is not None and t.layer is not None:  # GPTQ's codes for a decoder linear
            return lambda a: calibrated.tensor(a, t.layer, t.name)
        return lambda a: run_quantizer("rtn" if calibrated is not None else method, a, grid, **params)

    seam = Seam(storage=storage, transform=transform)
    result = converters.get(fmt).convert(model, str(dest), force=force, progress=progress, seam=seam)
    return {k: result.get(k) for k in ("bytes", "tensors", "types") if k in result}

