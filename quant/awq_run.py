"""``edgekit quantize --method awq`` from start to end: checks, calibration tokens, AWQ on the float32 HF model
(:mod:`quant.awq`), the equivalent scaled checkpoint written beside the destination, then the ordinary
quantize path on it (``--then rtn`` onto the grid AWQ searched against, ``--then nf4``, or a llama.cpp
k-quant with edgekit's importance matrix, AWQ having searched against that k-quant's own round trip,
:mod:`quant.awq_kgrid`), and the manifest: method, grid, calibration source and sha256, alpha per layer and group.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from edgekit.atomic import check_destination
from edgekit.errors import EdgekitError
from quant import calibration, kquant

DEFAULT_SAMPLES, DEFAULT_SEQLEN = 128, 512
KQUANT_SEARCH_GRID = "gguf:q4_1"  # for IQ/TQ types (no round trip here): q4_1, asymmetric blocks of 32
THEN = ("rtn", "nf4", *kquant.METHODS)


def target(fmt: str, then: str, qtype: str | None, group_size: int | None, symmetric: bool | None
           ) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(the quantize plan after AWQ, the grid AWQ searches against, its params)."""
    from quant.pipeline import resolve

    if then not in THEN:
        raise EdgekitError(f"unknown --then {then}",
                           f"after awq: rtn, nf4 or a llama.cpp type ({', '.join(kquant.METHODS)})")
    p = resolve(fmt, then, qtype, group_size, symmetric)
    if p["kind"] == "kquant":
        from quant import awq_kgrid

        kgrid = awq_kgrid.for_method(then)
        return p, f"ggml:{kgrid.name}" if kgrid else KQUANT_SEARCH_GRID, {}
    return p, p["grid"], dict(p["params"])


def run(model: str, fmt: str, output: str | None, *, then: str | None = None, qtype: str | None = None,
        group_size: int | None = None, symmetric: bool | None = None, double_quant: bool = False,
        calib: str | None = None, imatrix_file: str | None = None, no_imatrix: bool = False,
        samples: int | None = None, seqlen: int | None = None, clip: bool | None = None, save_scaled: str | None = None,
        keep_head: bool | None = None, keep_embed: bool = False, force: bool = False, progress: bool = True
        ) -> dict[str, Any]:
    """AWQ, then quantize; ``save_scaled``: also keep the scaled float32 checkpoint (AWQ's fp output) there."""
    from edgekit.archs import get as family_of
    from edgekit.checkpoint import open_checkpoint
    from quant import awq, imatrix, pipeline
    from quant.grids import get as grid_of

    started = time.perf_counter()
    then = (then or "rtn").lower()
    plan, search_grid, params = target(fmt, then, qtype, group_size, symmetric)
    if imatrix_file:
        raise EdgekitError("--imatrix does not apply to awq", "drop --imatrix: the importance matrix is computed "
                           "from the scaled model and --calib")
    if clip is None:  # off before k-quants: measured worse (tiny: KLD +6%) when the search ran on a q4_1 stand-in
        clip = plan["kind"] != "kquant"
    if plan["kind"] == "seam" and no_imatrix:
        raise EdgekitError("--no-imatrix applies to --then k-quants only", "drop --no-imatrix")
    text, source = calibration.load_text(calib)
    ckpt = open_checkpoint(model)
    family_of(ckpt.config.get("model_type"))  # an unsupported architecture fails before any work
    if plan["kind"] == "seam":
        pipeline._check_blocks(ckpt, plan)
    if search_grid.startswith("ggml:"):  # the k-quant's own round trip (llama.cpp's quantizer)
        from quant.awq_kgrid import KQuant

        grid = KQuant(search_grid.split(":", 1)[1])
    else:
        grid = grid_of(search_grid, **params)
    label = f"awq-{then}" if plan["kind"] == "kquant" else f"awq-{plan['grid'].split(':')[1]}"
    suffix = ".gguf" if fmt == "gguf" else "-onnx"
    dest = Path(output).expanduser() if output else Path.cwd() / f"{ckpt.path.name}-{label}{suffix}"
    check_destination(dest, force, sources=(ckpt.path,))
    keep = Path(save_scaled).expanduser() if save_scaled else None
    if keep is not None and keep.exists():
        raise EdgekitError(f"--save-scaled {keep} already exists", "name a new directory for the scaled checkpoint")
    encode, bos = imatrix.tokenizer_for(ckpt.path)
    tokens = calibration.samples(encode, text, samples or DEFAULT_SAMPLES, seqlen or DEFAULT_SEQLEN, bos=bos,
                                 source=f"calibration file {calib}" if calib else "the default calibration text")
    work = (keep or dest).parent / f".{(keep or dest).name}.awq-{secrets.token_hex(4)}"
    # the converters name the model (GGUF general.name) after its directory: the source's name, not the work dir's
    tmp = work / ckpt.path.name
    try:
        result = awq.run(ckpt.path, tokens, grid, tmp, clip=clip, progress=progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        summary = pipeline.run(str(tmp), fmt, then, str(dest), qtype=qtype, group_size=group_size,
                               symmetric=symmetric, double_quant=double_quant,
                               calib=calib if plan["kind"] == "kquant" else None, no_imatrix=no_imatrix,
                               samples=samples, seqlen=seqlen, keep_head=keep_head, keep_embed=keep_embed,
                               force=force, progress=progress)
        if keep is not None:
            tmp.rename(keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    quant_info = {**summary["quant"], "method": "awq", "then": then, "search_grid": search_grid,
                  "search_grid_params": params, "clip": clip, "clipped_linears": result.clipped,
                  "calibration": {"source": source, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                                  "samples": int(tokens.shape[0]), "seqlen": int(tokens.shape[1]),
                                  "tokens": result.tokens},
                  "alpha": result.alphas, "alpha_blocks": result.alpha_blocks, "awq_search": result.search,
                  "awq_seconds": result.seconds,
                  "scaled_checkpoint": str(keep) if keep is not None else None}
    if plan["kind"] == "kquant":
        quant_info["grid"] = plan["grid"]
    pipeline.write_manifest(dest, fmt, {"quant": quant_info, "source": str(ckpt.path),
                                        "source_sha256": ckpt.sha256()})
    summary.update({"quant": quant_info, "output": str(dest), "seconds": round(time.perf_counter() - started, 3)})
    return summary
