"""`edgekit report` on edgekit-tiny: every format built, evaluated and benched into report.md / report.json / plots,
the memory plan against measured peak RSS, the device table, a failed target as a failed row, the Ray executor
giving the same report from a two-node local cluster, and bad input as one line before any work."""

import json
import os
import sys
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli

TARGETS = "gguf:q8_0,gguf:q4_0-imatrix,onnx:int4,coreml:int4"
FAST = ("--ctx", "64", "--chunks", "2", "-p", "32", "-n", "8", "-r", "1", "--threads", "1", "--samples", "4",
        "--seqlen", "64", "--context", "512")


def _report(tiny_dir, out, *extra, targets=TARGETS):
    return run_cli("report", str(tiny_dir), "--targets", targets, "-o", str(out), *FAST, *extra, "--json")


@pytest.fixture(scope="module")
def local_report(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "tiny"
    proc = _report(tiny_dir, out, "--devices", "pixel-8,iphone-15,jetson-orin-nano,m2-8gb")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_report_files_and_rows(local_report):
    out, result = local_report
    assert result["failed"] == 0 and result["executor"] == "local"
    for name in ("report.md", "report.json", "kld_vs_size.png", "decode_vs_size.png"):
        assert (out / name).exists(), name
    assert (out / "kld_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text())["rows"] == result["rows"]
    rows = {r["target"]: r for r in result["rows"]}
    assert list(rows) == TARGETS.split(",")
    for target in ("gguf:q8_0", "gguf:q4_0-imatrix", "onnx:int4"):
        r = rows[target]
        assert r["quality"]["kld_mean"] > 0 and r["bench"]["tg_tps"] > 0 and r["bench"]["pp_tps"] > 0
        assert r["size_bytes"] > 0 and r["plan"]["total"] > r["plan"]["weights"] > 0
        check = r["plan_check"]
        assert check["measured_bytes"] == r["bench"]["peak_rss_bytes"] and check["context"] == 32 + 8
    # quantization costs quality in the expected order: the 8-bit grid loses less than either 4-bit one
    assert rows["gguf:q8_0"]["quality"]["kld_mean"] < rows["gguf:q4_0-imatrix"]["quality"]["kld_mean"]
    assert rows["gguf:q8_0"]["quality"]["kld_mean"] < rows["onnx:int4"]["quality"]["kld_mean"]
    assert "Core ML" in rows["coreml:int4"]["quality"]["skipped"] or sys.platform == "darwin"
    assert rows["coreml:int4"]["plan"]["weights"] > 0
    md = (out / "report.md").read_text()
    assert "| gguf:q8_0 |" in md and "![KLD vs size](kld_vs_size.png)" in md and "## Devices (predictions)" in md


def test_report_quality_is_edgekit_eval(local_report, tiny_dir):
    # the report's figures are edgekit eval's on the same artifact, window for window
    _, result = local_report
    row = next(r for r in result["rows"] if r["target"] == "onnx:int4")
    proc = run_cli("eval", row["artifact"], "--reference", str(tiny_dir), "--ctx", "64", "--chunks", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kld_mean"] == pytest.approx(row["quality"]["kld_mean"], rel=1e-9)


def test_report_devices(local_report):
    _, result = local_report
    devices = {d["device"]: d for d in result["devices"]}
    assert set(devices) == {"pixel-8", "iphone-15", "jetson-orin-nano", "m2-8gb"}
    # iPhones run GGUF and Core ML, not ONNX; Android runs GGUF and ONNX, not Core ML
    assert {t["target"] for t in devices["iphone-15"]["targets"]} == {"gguf:q8_0", "gguf:q4_0-imatrix",
                                                                      "coreml:int4"}
    assert {t["target"] for t in devices["pixel-8"]["targets"]} == {"gguf:q8_0", "gguf:q4_0-imatrix", "onnx:int4"}
    rows = {r["target"]: r for r in result["rows"]}
    for t in devices["pixel-8"]["targets"]:
        assert t["fits"]  # a few MB of model fits every phone
        r = rows[t["target"]]
        expected = devices["pixel-8"]["bandwidth_gbs"] * 1e9 * r["bench"]["roofline_share"] / r["bytes_per_token"]
        assert t["predicted_decode_tps"] == pytest.approx(expected)


def test_failed_target_is_a_failed_row(tiny_dir, tmp_path):
    # blocks of 96 do not divide edgekit-tiny's 256-wide rows: that target fails, the other still runs
    proc = _report(tiny_dir, tmp_path / "r", targets="onnx:int4-b96,gguf:q8_0")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["failed"] == 1
    bad, good = result["rows"]
    assert "96" in bad["error"] and good["bench"]["tg_tps"] > 0
    assert "failed" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("args, needles", [
    (("--targets", "gguf:q4_k_m,tflite:int4"), ("tflite:int4",)),
    (("--targets", "onnx:q4_k_m"), ("onnx:q4_k_m", "gguf type")),
    (("--targets", "gguf:q8_0,gguf:q8_0"), ("given twice",)),
    (("--targets", "gguf:q8_0", "--devices", "pixel-8,nokia-3310"), ("unknown device", "nokia-3310")),
    (("--targets", "gguf:q8_0", "--address", "127.0.0.1:9"), ("--address",)),
    (("--targets", "gguf:q8_0", "--executor", "ray", "--address", "127.0.0.1:9"), ("does not answer",)),
])
def test_bad_input_is_one_line_before_any_work(tiny_dir, tmp_path, args, needles):
    out = tmp_path / "never"
    assert_one_line_error(run_cli("report", str(tiny_dir), *args, "-o", str(out)), *needles)
    assert not out.exists()


def test_ray_not_installed_is_one_line(tiny_dir, tmp_path):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")]))}
    proc = run_cli("report", str(tiny_dir), "--targets", "gguf:q8_0", "--executor", "ray", "-o", str(tmp_path / "r"),
                   env=env)
    assert_one_line_error(proc, "ray", "not installed")


def test_ray_executor_gives_the_same_report(tiny_dir, local_report, tmp_path):
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "ray"
        proc = _report(tiny_dir, out, "--devices", "pixel-8,iphone-15,jetson-orin-nano,m2-8gb", "--executor", "ray",
                       "--address", cluster.address)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, proc.stderr
    ray_result = json.loads(proc.stdout)
    _, local = local_report
    assert ray_result["executor"] == "ray"
    assert len({r["node"] for r in ray_result["rows"]}) == 2  # the targets were spread over both workers
    assert [r["target"] for r in ray_result["rows"]] == [r["target"] for r in local["rows"]]
    for a, b in zip(ray_result["rows"], local["rows"], strict=True):
        assert a["size_bytes"] == b["size_bytes"] and a["plan"] == b["plan"]
        assert a["quality"] == b["quality"]
        assert ("tg_tps" in a.get("bench", {})) == ("tg_tps" in b.get("bench", {}))
    assert [Path(f).name for f in ray_result["files"].values()] == [Path(f).name for f in local["files"].values()]
