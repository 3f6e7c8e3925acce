"""edgekit's evaluator and importance matrix against llama.cpp's own tools (built by `make llama-tools`):
on the same GGUF, text and context, `edgekit eval`'s perplexity is within 0.5% of llama-perplexity's and its
KLD against an F32 GGUF base within 5% of `llama-perplexity --kl-divergence`'s; `edgekit imatrix` agrees with
llama-imatrix on the same text (per-tensor cosine similarity >= 0.99)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_quantize import ROOT, ok

from edgekit.testing import llama_tools
from quant import imatrix

TEXT = ROOT / "edgekit" / "data" / "tiny" / "persuasion.txt"
CTX, CHUNKS = "128", "6"


def tool(name: str, *args: str, log: Path) -> str:
    # llama.cpp logs from a worker thread: through a pipe its last lines can be lost at exit, so its output goes
    # to files (and its own log file), read once it has exited
    out = log.with_suffix(".out")
    with out.open("w") as fh:
        rc = subprocess.run([str(llama_tools.require(name)), *args, "--log-file", str(log)], stdout=fh,
                            stderr=subprocess.STDOUT, timeout=600).returncode
    text = (log.read_text() if log.exists() else "") + out.read_text()
    assert rc == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def ggufs(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    llama_tools.require("llama-perplexity")
    d = tmp_path_factory.mktemp("lt")
    out = {"f32": d / "f32.gguf", "q4_0": d / "q4_0.gguf"}
    ok("convert", str(tiny_dir), "--to", "gguf", "--outtype", "f32", "-o", str(out["f32"]))
    ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "rtn", "--type", "q4_0", "-o", str(out["q4_0"]))
    return out


def test_eval_agrees_with_llama_perplexity(ggufs, tmp_path):
    # llama.cpp's last log lines can be lost at exit even in its log file, so it scores twice the windows and its
    # running figures after window 6 (= the figures of a 6-window run) are read
    more = str(2 * int(CHUNKS))
    log = tool("llama-perplexity", "-m", str(ggufs["q4_0"]), "-f", str(TEXT), "-c", CTX, "--chunks", more, "-t", "2",
               log=tmp_path / "ppl.log")
    theirs = float(re.search(rf"\[{CHUNKS}\]([\d.]+),", log).group(1))
    ours = ok("eval", str(ggufs["q4_0"]), "--ctx", CTX, "--chunks", CHUNKS)
    assert abs(ours["ppl"] / theirs - 1) < 0.005, (ours["ppl"], theirs)  # measured: 0.03%

    base = tmp_path / "base.kld"
    tool("llama-perplexity", "-m", str(ggufs["f32"]), "-f", str(TEXT), "-c", CTX, "--chunks", more, "-t", "2",
         "--kl-divergence-base", str(base), log=tmp_path / "base.log")
    log = tool("llama-perplexity", "-m", str(ggufs["q4_0"]), "-c", CTX, "--chunks", more, "-t", "2",
               "--kl-divergence-base", str(base), "--kl-divergence", log=tmp_path / "kld.log")
    row = re.search(rf"^\s*{CHUNKS}\s+([\d.]+) ±\s+[\d.]+\s+(-?[\d.]+) ±\s+[\d.]+\s+([\d.]+) ±", log, re.M)
    ppl_q, ln_ratio, kld = float(row.group(1)), float(row.group(2)), float(row.group(3))
    ours = ok("eval", str(ggufs["q4_0"]), "--reference", str(ggufs["f32"]), "--ctx", CTX, "--chunks", CHUNKS)
    # the same base (the F32 GGUF), text, windows and scored halves: within 5% (measured over 12 x 128: ours 0.0015135,
    # the full-vocabulary KLD 0.0015135, llama.cpp 0.0015149, which carries its uint16 log-probs)
    assert 0.95 < ours["kld_mean"] / kld < 1.05, (ours["kld_mean"], kld)
    # llama.cpp's ln(PPL(Q)/PPL(base)) clips base log-probs below -16 nats (uint16 range), so ppl(Q) is compared
    assert abs(ours["ppl"] / ppl_q - 1) < 0.005, (ours["ppl"], ppl_q)
    assert ln_ratio > 0


def test_imatrix_agrees_with_llama_imatrix(ggufs, tiny_dir, tmp_path):
    calib = ROOT / "quant" / "data" / "calibration.txt"
    theirs_file = tmp_path / "llama.imatrix.gguf"
    tool("llama-imatrix", "-m", str(ggufs["f32"]), "-f", str(calib), "-c", "256", "--chunks", CHUNKS, "-t", "2",
         "-o", str(theirs_file), log=tmp_path / "imatrix.log")
    ours_file = tmp_path / "edgekit.imatrix"
    ok("imatrix", str(tiny_dir), "--calib", str(calib), "--samples", CHUNKS, "--seqlen", "256", "-o", str(ours_file))
    theirs, ours = imatrix.read(theirs_file).means(), imatrix.read(ours_file).means()
    assert set(ours) == set(theirs) and len(ours) == 4 * 7
    for name in ours:
        a, b = ours[name].astype(np.float64), theirs[name].astype(np.float64)
        cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert cos >= 0.99, (name, cos)


def test_kquant_bytes_equal_llama_quantize(tiny_dir, tmp_path):
    """q4_k_m through edgekit (llama_model_quantize in slabs of rows, not llama.cpp's whole-tensor buffers) writes
    the very tensors llama-quantize writes from the same F16 GGUF, with the default buffer and with slabs of a few
    rows (smaller than every tiny tensor)."""
    import gguf

    from quant import kquant

    f16, ours, small, theirs = (tmp_path / f"{n}.gguf" for n in ("f16", "ours", "small", "theirs"))
    ok("convert", str(tiny_dir), "--to", "gguf", "--outtype", "f16", "-o", str(f16))
    ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "q4_k_m", "--no-imatrix", "-o", str(ours))
    kquant.quantize(f16, small, "q4_k_m", progress=False, max_buffer=16 << 10)
    r = subprocess.run([str(llama_tools.require("llama-quantize")), str(f16), str(theirs), "Q4_K_M"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    def tensors(path: Path) -> dict[str, tuple[int, bytes]]:
        return {t.name: (int(t.tensor_type), bytes(t.data.tobytes())) for t in gguf.GGUFReader(str(path)).tensors}

    want = tensors(theirs)
    assert len({t for t, _ in want.values()}) > 2  # a mix: q4_K, q6_K and f32 norms at least
    assert tensors(ours) == want
    assert tensors(small) == want
