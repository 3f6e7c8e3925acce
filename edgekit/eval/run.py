"""`edgekit eval` from start to end: tokens, windows, the artifact's scores, the cached reference, manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.eval import logits as L
from edgekit.eval import metrics, reference

DEFAULT_TEXT = Path(__file__).resolve().parent.parent / "data" / "tiny" / "persuasion.txt"


def vocab_size(path: Path) -> int | None:
    """The reference's vocabulary size without loading its weights."""
    if path.is_file() and path.suffix == ".gguf":
        import gguf

        r = gguf.GGUFReader(str(path))
        f = r.get_field("tokenizer.ggml.tokens")
        return len(f.data) if f is not None else None
    cfg = path / "config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        return data.get("vocab_size") or data.get("text_config", {}).get("vocab_size")
    return None


def run(artifact: str, reference_model: str | None = None, text_file: str | None = None, ctx: int = 512,
        chunks: int | None = None, threads: int | None = None, progress: bool = True,
        write_manifest: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    path = Path(artifact).expanduser()
    if not path.exists():
        raise EdgekitError(f"artifact {path} not found", "pass a .gguf file or an ONNX directory")
    if ctx < 16 or ctx % 2:
        raise EdgekitError(f"--ctx {ctx} is too small or odd", "use an even --ctx of at least 16 (default 512)")
    if chunks is not None and chunks < 1:
        raise EdgekitError(f"--chunks {chunks} must be at least 1", "pass a positive number of windows")
    tpath = Path(text_file).expanduser() if text_file else DEFAULT_TEXT
    if not tpath.is_file():
        raise EdgekitError(f"text file {tpath} not found", "pass an existing plain-text file to --text")
    text = tpath.read_text(encoding="utf-8", errors="replace")
    ref_path = Path(reference_model).expanduser() if reference_model else None
    if ref_path is not None and not ref_path.exists():
        raise EdgekitError(f"reference {ref_path} not found", "pass the Hugging Face directory the artifact came from")
    source = L.open_logits(path, ctx, threads)
    try:
        if ref_path is not None:
            rv, av = vocab_size(ref_path), source.vocab_size
            if rv is not None and av is not None and rv != av:
                raise EdgekitError(f"the reference's vocabulary ({rv} tokens) differs from the artifact's ({av})",
                                   "pass the model the artifact was made from as --reference")
        tokens = source.tokenize(text)
        bos = L.bos_of(source)
        wins = np.array(list(L.windows(tokens, ctx, chunks, bos)), dtype=np.int64)
        if len(wins) == 0:
            raise EdgekitError(f"{tpath.name} has {len(tokens)} tokens, fewer than one --ctx {ctx} window",
                               "pass a longer --text or a smaller --ctx")
        bar = _bar(len(wins) * (2 if ref_path else 1), progress)
        tick = bar.update if bar is not None else None
        ref = None
        if ref_path is not None:
            ref = reference.load_or_compute(ref_path, wins, ctx, lambda: L.open_logits(ref_path, ctx, threads), tick)
            if len(ref["lse"]) != len(wins) * (ctx // 2 - 1):
                raise RuntimeError("cached reference does not cover the windows")
        first, per = ctx // 2, ctx // 2 - 1
        nll, kld, top1 = [], [], []
        for i, w in enumerate(wins):
            scored = source.window([int(t) for t in w], first)[:ctx - 1 - first]
            logq = metrics.log_softmax(scored)
            targets = w[first + 1:ctx]
            nll.append(-logq[np.arange(len(targets)), targets])
            if ref is not None:
                rows = slice(i * per, (i + 1) * per)
                kld.append(metrics.kld(ref, rows, logq))
                top1.append(scored.argmax(axis=1) == ref["ids"][rows, 0])
            if tick is not None:
                tick(1)
        if bar is not None:
            bar.close()
    finally:
        source.close()
    result = metrics.summary(np.concatenate(nll), ref["logp_next"] if ref is not None else None,
                             np.concatenate(kld) if kld else None, np.concatenate(top1) if top1 else None)
    result.update({"artifact": str(path), "reference": str(ref_path) if ref_path else None, "text": tpath.name,
                   "ctx": ctx, "chunks": int(len(wins)), "seconds": round(time.perf_counter() - started, 3)})
    if write_manifest:
        from quant.pipeline import write_manifest as write

        kind = "gguf" if path.is_file() else "onnx"
        write(path, kind, {"eval": {k: v for k, v in result.items() if k not in ("artifact", "seconds")}})
    return result


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="window", desc="eval", leave=False, disable=None)
