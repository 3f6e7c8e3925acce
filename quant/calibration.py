"""Calibration text and token samples for the importance matrix (and later GPTQ/AWQ).

The default text ships in the package (``quant/data/calibration.txt``, ~80 KB, public domain): passages of
prose and dialogue from five of Jane Austen's novels (never *Persuasion*, edgekit-tiny's held-out text),
interleaved with code (Python, C, JavaScript, SQL, shell, Rust, HTML, JSON) and short passages in twelve other
languages written for this project (``quant/data/calibration_extra.txt``). ``python -m quant.calibration``
rebuilds it from Debian's r-cran-janeaustenr. A user file is plain text, or JSONL with a ``text`` field.

Samples are cut as llama-imatrix cuts its chunks: the whole text tokenized once, non-overlapping windows of
``seqlen`` tokens, the first token of each replaced by BOS when the model has one; the first ``n`` windows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

DATA = Path(__file__).resolve().parent / "data"
DEFAULT = DATA / "calibration.txt"
DEFAULT_SAMPLES, DEFAULT_SEQLEN = 64, 512


def load_text(path: str | Path | None = None) -> tuple[str, str]:
    """(text, dataset name) of ``path``, or of the default calibration text when ``path`` is None."""
    if path is None:
        return DEFAULT.read_text(encoding="utf-8"), "edgekit-default-calibration"
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgekitError(f"calibration file {p} not found", "pass an existing text or JSONL file to --calib")
    raw = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix in (".jsonl", ".ndjson") or raw.lstrip().startswith("{"):
        texts = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise EdgekitError(f"calibration file {p} line {i} is not JSON",
                                   "use plain text, or JSONL with one {\"text\": ...} object per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise EdgekitError(f"calibration file {p} line {i} has no \"text\" string",
                                   "give every JSONL line a \"text\" field")
            texts.append(rec["text"])
        raw = "\n\n".join(texts)
    if not raw.strip():
        raise EdgekitError(f"calibration file {p} is empty", "pass a file with text in it (or omit --calib)")
    return raw, p.name


def samples(encode: Callable[[str], list[int]], text: str, n: int = DEFAULT_SAMPLES, seqlen: int = DEFAULT_SEQLEN,
            bos: int | None = None, source: str = "calibration text") -> np.ndarray:
    """Up to ``n`` windows [k, seqlen] of ``text``'s tokens (``encode`` without special tokens), each starting
    with ``bos`` when given; at least one window, or a clear error."""
    if n < 1 or seqlen < 2:
        raise EdgekitError(f"--samples {n} --seqlen {seqlen} is empty", "use --samples >= 1 and --seqlen >= 2")
    ids = list(encode(text))
    if bos is not None:
        ids = [bos, *ids]
    k = min(n, len(ids) // seqlen)
    if k == 0:
        raise EdgekitError(f"{source} has {len(ids)} tokens, fewer than one sample of --seqlen {seqlen}",
                           "give a longer calibration text, or a smaller --seqlen")
    out = np.asarray(ids[:k * seqlen], dtype=np.int64).reshape(k, seqlen)
    if bos is not None:
        out[:, 0] = bos
    return out


def build_default(austen_dir: Path | None = None, target_bytes: int = 72_000) -> str:
    """The default calibration text: Austen passages (five novels, two places each) interleaved with the
    sections of ``calibration_extra.txt``."""
    from edgekit.models import austen

    novels = austen.read_novels(austen_dir or austen.DEBIAN_DIR)
    novels.pop(austen.HELD_OUT)
    per = target_bytes // (2 * len(novels))
    passages = []
    for name in sorted(novels):
        paras = austen.paragraphs(novels[name])
        for where in (0.25, 0.6):
            i, chunk = int(len(paras) * where), []
            while sum(len(p) + 2 for p in chunk) < per and i < len(paras):
                chunk.append(paras[i])
                i += 1
            passages.append("\n\n".join(chunk))
    extra = (DATA / "calibration_extra.txt").read_text(encoding="utf-8")
    sections = ["## " + s.strip() for s in extra.split("## ") if s.strip()]
    out = []
    for i, passage in enumerate(passages):
        out.append(passage)
        out.extend(sections[i::len(passages)])
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    text = build_default(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    DEFAULT.write_text(text, encoding="utf-8")
    print(f"wrote {DEFAULT} ({len(text.encode())} bytes)")
