"""The importance matrix from start to end: checkpoint + calibration text -> imatrix file, atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgekit.atomic import atomic_output, check_destination
from edgekit.checkpoint import open_checkpoint
from quant import calibration, imatrix


def compute_for(model: str, calib: str | None = None, samples: int | None = None, seqlen: int | None = None,
                progress: bool = True) -> imatrix.IMatrix:
    ckpt = open_checkpoint(model)
    text, name = calibration.load_text(calib)
    encode, bos = imatrix.tokenizer_for(ckpt.path)
    tokens = calibration.samples(encode, text, samples or calibration.DEFAULT_SAMPLES,
                                 seqlen or calibration.DEFAULT_SEQLEN, bos=bos,
                                 source=f"calibration file {calib}" if calib else "the default calibration text")
    return imatrix.compute(ckpt.path, tokens, name, progress=progress)


def run(model: str, output: str, *, calib: str | None = None, samples: int | None = None, seqlen: int | None = None,
        force: bool = False, progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    dest = Path(output).expanduser()
    check_destination(dest, force)
    im = compute_for(model, calib, samples, seqlen, progress)
    with atomic_output(dest, force=force) as tmp:
        imatrix.write(tmp, im)
    return {"output": str(dest), "entries": len(im.sums), "chunks": im.chunk_count, "chunk_size": im.chunk_size,
            "dataset": im.datasets[0] if im.datasets else None, "seconds": round(time.perf_counter() - started, 3)}
