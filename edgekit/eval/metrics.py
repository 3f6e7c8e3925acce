"""Perplexity and KL divergence of an artifact's full logits against the reference's cached top-k."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def kld_topk(ref: dict[str, np.ndarray], rows: slice, logq: np.ndarray) -> np.ndarray:
    """KL(P_ref || Q) per position from P's top-k (the rest of P's mass lumped into one bin, as is Q's over the
    same ids): exact when the top-k hold all of P's mass, otherwise a lower bound that differs by the
    divergence inside the tail."""
    ids, lse = ref["ids"][rows], ref["lse"][rows]
    logp = ref["logits"][rows].astype(np.float64) - lse[:, None]
    lq = np.take_along_axis(logq, ids.astype(np.int64), axis=1)
    p, q = np.exp(logp), np.exp(lq)
    head = (p * (logp - lq)).sum(axis=1)
    p_tail = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    q_tail = np.clip(1.0 - q.sum(axis=1), 1e-30, 1.0)
    tail = np.where(p_tail > 1e-12, p_tail * (np.log(np.maximum(p_tail, 1e-30)) - np.log(q_tail)), 0.0)
    return np.maximum(head + tail, 0.0)


def summary(nll: np.ndarray, ref_logp_next: np.ndarray | None, kld: np.ndarray | None,
            top1: np.ndarray | None) -> dict[str, float]:
    out = {"tokens": int(len(nll)), "ppl": float(np.exp(nll.mean()))}
    # llama-perplexity's "+/-": the standard error of the mean nll carried through exp
    out["ppl_error"] = float(out["ppl"] * nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else 0.0
    if ref_logp_next is not None:
        out["reference_ppl"] = float(np.exp(-ref_logp_next.mean()))
        out["delta_ppl"] = out["ppl"] - out["reference_ppl"]
    if kld is not None:
        out.update({"kld_mean": float(kld.mean()), "kld_p99": float(np.percentile(kld, 99)),
                    "kld_max": float(kld.max()), "top1_agreement": float(top1.mean())})
    return out
