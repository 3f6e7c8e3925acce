"""The reference's logits, computed once per (reference, tokens, ctx) and cached on disk: for every scored
position the top-k logits and their ids, the log-sum-exp over the whole vocabulary, the log-probability of the
next token (for the reference's own perplexity), and the rest of the vocabulary as one byte per token.

Why the byte per token: the top-k alone hold too little of the mass (edgekit-tiny: 84% in its top 256, SmolLM2:
93%), and KL inside the tail is not small: top-256 plus one lumped tail bin gave 0.00135 where the full-vocabulary
KLD is 0.00151 (tiny q4_0, 12 x 128). llama-perplexity keeps all log-probs as uint16 on a 16-nat range; here the
top-k stay exact and the tail gets uint8 codes on the 16 nats below the k-th logit (step 16/255), renormalised to
the tail's exact mass at use and with the rounding's expected KL removed (metrics.kld): on that case 0.0015135 vs
the full-vocabulary 0.0015135, at one byte per vocabulary entry and scored token in the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

TOP_K = 256
TAIL_RANGE = 16.0  # nats below the k-th logit that the tail codes cover; below that, llama.cpp also drops
FORMAT = 2  # bumped when the cached arrays change


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")).expanduser() / "eval"


def identity(path: Path) -> str:
    """What the reference is: its path and the size and mtime of its weights (re-computed when they change)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".gguf",
                                                                                            ".onnx", ".bin", ".data"))
    parts = [str(path.resolve())] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return "|".join(parts)


def key(ref: Path, windows: np.ndarray, ctx: int) -> str:
    h = hashlib.sha256()
    h.update(identity(ref).encode())
    h.update(np.ascontiguousarray(windows, dtype=np.int64).tobytes())
    h.update(f"ctx={ctx};k={TOP_K};format={FORMAT}".encode())
    return h.hexdigest()[:32]


def summarize(logits: np.ndarray, targets: np.ndarray, k: int | None = None) -> dict[str, np.ndarray]:
    """Top-k (ids, logits), log-sum-exp, log p(target) and the tail's uint8 codes of float32 ``logits`` [n, vocab]."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
    k = min(k or TOP_K, x.shape[1])
    ids = np.argpartition(-x, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(x, ids, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids, vals = np.take_along_axis(ids, order, axis=1), np.take_along_axis(vals, order, axis=1)
    logp_next = x[np.arange(len(x)), targets] - lse
    # code c >= 1 stands for logit lo + c*step; 0 for "below the range or in the top-k" (hand-written: no library
    # stores a distribution this way)
    lo = vals[:, -1:] - TAIL_RANGE
    step = TAIL_RANGE / 255
    tail = np.clip(np.rint((x - lo) / step), 0, 255).astype(np.uint8)
    np.put_along_axis(tail, ids, 0, axis=1)
    return {"ids": ids.astype(np.int32), "logits": vals.astype(np.float32), "lse": lse, "logp_next": logp_next,
            "tail": tail}


def load_or_compute(ref: Path, windows: np.ndarray, ctx: int, source_factory: Any, progress: Any = None
                    ) -> dict[str, np.ndarray]:
    """Cached summaries of the reference over the scored half of every window."""
    path = cache_dir() / f"{key(ref, windows, ctx)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    source = source_factory()
    parts: list[dict[str, np.ndarray]] = []
    try:
        first = ctx // 2
        for w in windows:
            logits = source.window([int(t) for t in w], first)
            parts.append(summarize(logits[:ctx - 1 - first], np.asarray(w[first + 1:ctx])))
            if progress is not None:
                progress(1)
    finally:
        source.close()
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out
