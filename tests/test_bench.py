"""`edgekit bench`: llama-bench's rows for GGUF and ONNX on one token trace, every output format, the plot, a failed
artifact as a failed row, and bad input as one line before any work."""

import csv
import io
import json
import os

import pytest

from edgekit.bench.measure import trace
from helpers import assert_one_line_error, converted, run_cli

FAST = ("-p", "32", "-n", "8", "-r", "2", "-t", "1")


@pytest.fixture(scope="module")
def tiny_artifacts(tiny_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    return (converted(tiny_dir, base / "tiny-f16.gguf", "--to", "gguf", "--outtype", "f16"),
            converted(tiny_dir, base / "tiny-onnx", "--to", "onnx"))


def test_bench_gguf_and_onnx_json(tiny_artifacts, tmp_path):
    gguf, onnx_dir = tiny_artifacts
    plot = tmp_path / "bench.png"
    proc = run_cli("bench", str(gguf), str(onnx_dir), *FAST, "-d", "0,16", "--plot", str(plot), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    system = result["system"]
    assert system["physical_cores"] >= 1 and system["ram_bytes"] > 0 and system["bandwidth_bytes_per_s"] > 1e8
    assert system["versions"]["llama_cpp_python"] and "CPU" in (system["llama_cpp_build"] or "")
    rows = result["rows"]
    assert result["failed"] == 0
    assert [(r["format"], r["test"], r["depth"]) for r in rows] == [
        (fmt, test, depth) for fmt in ("gguf", "onnx") for depth in (0, 16) for test in ("pp32", "tg8")]
    for r in rows:
        assert len(r["samples_tps"]) == 2 and r["tps_mean"] > 0 and r["tps_sd"] >= 0
        assert r["tps_mean"] == pytest.approx(sum(r["samples_tps"]) / 2)
        assert r["context"] == 32 + 8 + 16 and r["threads"] == 1
        assert r["peak_rss_bytes"] > r["rss_start_bytes"] > 0 and r["load_seconds"] > 0
        assert r["size_bytes"] == (os.path.getsize(gguf) if r["format"] == "gguf"
                                   else sum(p.stat().st_size for p in onnx_dir.rglob("*") if p.is_file()))
        if r["test"] == "pp32":
            # time to first token: the prompt's forward, so at most the time pp's tokens/s implies (+ argmax)
            assert r["ttft_ms_mean"] >= 1000 * 32 / max(r["samples_tps"]) * 0.999
        else:
            assert 0 < r["roofline_share"] == pytest.approx(r["tps_mean"] * r["bytes_per_token"]
                                                            / system["bandwidth_bytes_per_s"])
    # every weight read once per token; edgekit-tiny ties its embedding to the output head, so that table counts too
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(gguf)).tensors}
    assert "output.weight" not in tensors and rows[1]["bytes_per_token"] == sum(tensors.values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_trace_for_every_format():
    # the trace depends on the vocabulary size and the seed only, so a model's GGUF and ONNX run the same tokens
    assert trace(50, 40, 0) == trace(50, 40, 0)
    assert trace(50, 40, 0) != trace(50, 40, 1)
    assert all(0 <= t < 50 for t in trace(50, 1000, 0))


def test_output_formats(tiny_artifacts):
    gguf, _ = tiny_artifacts
    md = run_cli("bench", str(gguf), *FAST)
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("CPU: ") and "| pp32 |" in md.stdout and "| tg8 |" in md.stdout
    assert "memory bandwidth" in md.stdout
    rows = list(csv.DictReader(io.StringIO(run_cli("bench", str(gguf), *FAST, "-o", "csv").stdout)))
    assert [r["test"] for r in rows] == ["pp32", "tg8"] and float(rows[1]["tps_mean"]) > 0
    lines = run_cli("bench", str(gguf), *FAST, "-o", "jsonl").stdout.splitlines()
    assert [json.loads(x)["test"] for x in lines] == ["pp32", "tg8"]


def test_failed_artifact_is_a_failed_row(tiny_artifacts, tmp_path):
    gguf, _ = tiny_artifacts
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(gguf.read_bytes()[: os.path.getsize(gguf) // 2])  # truncated: its tensors are not all there
    proc = run_cli("bench", str(broken), str(gguf), *FAST, "--json")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["failed"] == 1
    assert result["rows"][0]["artifact"] == str(broken) and result["rows"][0]["error"]
    assert [r["test"] for r in result["rows"][1:]] == ["pp32", "tg8"]
    md = run_cli("bench", str(broken), str(gguf), *FAST)
    assert md.returncode == 1 and "| failed |" in md.stdout and "| tg8 |" in md.stdout


@pytest.mark.parametrize("args, needles", [
    (("-r", "0"), ("-r 0",)),
    (("-p", "0", "-n", "0"), ("nothing to measure",)),
    (("-t", "0"), ("--threads",)),
    (("-t", "a,b"), ("comma-separated",)),
    (("-d", "-5"), ("--depth",)),
    (("--device", "toaster"), ("unknown device", "toaster")),
])
def test_bad_options_are_one_line(tiny_artifacts, args, needles):
    gguf, _ = tiny_artifacts
    assert_one_line_error(run_cli("bench", str(gguf), *args), *needles)


def test_missing_artifact_is_one_line(tmp_path):
    assert_one_line_error(run_cli("bench", str(tmp_path / "nope.gguf")), "nope.gguf", "neither")


def test_bench_a_store_model_by_name(tiny_artifacts, tmp_path):
    gguf, _ = tiny_artifacts
    env = {"EDGEKIT_HOME": str(tmp_path / "home")}
    (tmp_path / "Modelfile").write_text(f"FROM {gguf}\n")
    assert run_cli("create", "tiny-bench", "-f", str(tmp_path / "Modelfile"), env=env).returncode == 0
    proc = run_cli("bench", "tiny-bench", *FAST, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert [r["test"] for r in rows] == ["pp32", "tg8"] and rows[0]["artifact"] == "tiny-bench"
    assert rows[0]["size_bytes"] == os.path.getsize(gguf)
