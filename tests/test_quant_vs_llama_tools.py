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


def tool(name: str, *args: str) -> str:
    proc = subprocess.run([str(llama_tools.require(name)), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ggufs(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    llama_tools.require("llama-perplexity")
    d = tmp_path_factory.mktemp("lt")
    out = {"f32": d / "f32.gguf", "q4_0": d / "q4_0.gguf"}
    ok("convert", str(tiny_dir), "--to", "gguf", "--outtype", "f32", "-o", str(out["f32"]))
    ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "rtn", "--type", "q4_0", "-o", str(out["q4_0"]))
    return out


def test_eval_agrees_with_llama_perplexity(ggufs, tmp_path):
    log = tool("llama-perplexity", "-m", str(ggufs["q4_0"]), "-f", str(TEXT), "-c", CTX, "--chunks", CHUNKS, "-t", "2")
    theirs = float(re.search(r"Final estimate: PPL = ([\d.]+)", log).group(1))
    ours = ok("eval", str(ggufs["q4_0"]), "--ctx", CTX, "--chunks", CHUNKS)
    assert abs(ours["ppl"] / theirs - 1) < 0.005, (ours["ppl"], theirs)

    base = tmp_path / "base.kld"
    tool("llama-perplexity", "-m", str(ggufs["f32"]), "-f", str(TEXT), "-c", CTX, "--chunks", CHUNKS, "-t", "2",
         "--kl-divergence-base", str(base))
    log = tool("llama-perplexity", "-m", str(ggufs["q4_0"]), "-c", CTX, "--chunks", CHUNKS, "-t", "2",
               "--kl-divergence-base", str(base), "--kl-divergence")
    kld = float(re.search(r"Mean\s+KLD:\s+([\d.]+)", log).group(1))
    ours = ok("eval", str(ggufs["q4_0"]), "--reference", str(ggufs["f32"]), "--ctx", CTX, "--chunks", CHUNKS)
    assert abs(ours["kld_mean"] / kld - 1) < 0.05, (ours["kld_mean"], kld)


def test_imatrix_agrees_with_llama_imatrix(ggufs, tiny_dir, tmp_path):
    calib = ROOT / "quant" / "data" / "calibration.txt"
    theirs_file = tmp_path / "llama.imatrix.gguf"
    tool("llama-imatrix", "-m", str(ggufs["f32"]), "-f", str(calib), "-c", "256", "--chunks", CHUNKS, "-t", "2",
         "-o", str(theirs_file))
    ours_file = tmp_path / "edgekit.imatrix"
    ok("imatrix", str(tiny_dir), "--calib", str(calib), "--samples", CHUNKS, "--seqlen", "256", "-o", str(ours_file))
    theirs, ours = imatrix.read(theirs_file).means(), imatrix.read(ours_file).means()
    assert set(ours) == set(theirs) and len(ours) == 4 * 7
    for name in ours:
        a, b = ours[name].astype(np.float64), theirs[name].astype(np.float64)
        cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert cos >= 0.99, (name, cos)
