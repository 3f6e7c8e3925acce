"""The runtime leaves the user's process alone: no environment variable is set by importing or loading
runtimes (the engines keep their own defaults, e.g. OpenMP's wait policy); threads default to the physical
cores the process may use, the device profile may choose fewer, ``--threads`` overrides both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes import devices

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys
before = dict(os.environ)
import runtimes
from runtimes.generate import generate
engines = [runtimes.load(a, context=64) for a in sys.argv[1:]]
outs = [generate(e, e.tokenize("It is a truth"), max_tokens=3).tokens for e in engines]
after = dict(os.environ)
print(json.dumps({"changed": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)),
                  "threads": [e.threads for e in engines], "outs": outs}))
"""


def test_import_and_load_leave_the_environment_unchanged(random_model, tmp_path):
    from converters.onnx import convert as to_onnx
    from edgekit.models import smollm2

    try:
        gguf = smollm2.gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    onnx = tmp_path / "onnx"
    to_onnx(str(random_model("llama")), str(onnx), progress=False)
    # a user's environment: none of the variables the test harness sets for itself (conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_", "GOMP_", "OPENBLAS_", "MKL_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(gguf), str(onnx)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["changed"] == []
    assert got["threads"] == [devices.physical_cores()] * 2
    assert all(len(t) >= 1 for t in got["outs"])


def fake_sysfs(root: Path, cores: dict[int, tuple[int, int]], freq: dict[int, int] | None = None) -> Path:
    """cpu -> (package, core) topology (and max frequency) laid out as Linux's /sys/devices/system/cpu."""
    for cpu, (package, core) in cores.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
        if freq:
            (root / f"cpu{cpu}" / "cpufreq").mkdir()
            (root / f"cpu{cpu}" / "cpufreq" / "cpuinfo_max_freq").write_text(f"{freq[cpu]}\n")
    return root


def test_physical_cores_counts_allowed_cores_not_hyperthreads(tmp_path):
    # 2 packages x 2 cores x 2 hyper-threads: cpu n and n + 4 are siblings
    sysfs = fake_sysfs(tmp_path, {cpu: (cpu % 4 // 2, cpu % 2) for cpu in range(8)})
    assert devices.physical_cores(list(range(8)), sysfs) == 4
    assert devices.physical_cores([0, 4], sysfs) == 1        # taskset to two siblings: one core
    assert devices.physical_cores([0, 1, 4, 5], sysfs) == 2
    assert devices.physical_cores([0, 2], sysfs) == 2         # same core id, different packages
    # no topology in sysfs: psutil's count, never more than the CPUs allowed
    assert 1 <= devices.physical_cores([0, 1], tmp_path / "missing") <= 2


def test_performance_cores_skip_the_little_cluster(tmp_path):
    # a phone: 4 little (1.8 GHz), 3 big (2.4 GHz), 1 prime (3.0 GHz), one thread per core
    freq = {**dict.fromkeys(range(4), 1_800_000), **dict.fromkeys(range(4, 7), 2_400_000), 7: 3_000_000}
    sysfs = fake_sysfs(tmp_path / "phone", {cpu: (0, cpu) for cpu in range(8)}, freq)
    assert devices.performance_cores(list(range(8)), sysfs) == 4
    assert devices.physical_cores(list(range(8)), sysfs) == 8
    same = fake_sysfs(tmp_path / "server", {cpu: (0, cpu) for cpu in range(4)}, dict.fromkeys(range(4), 3_000_000))
    assert devices.performance_cores(list(range(4)), same) == 4


def test_threads_default_to_the_profile_and_the_flag_overrides(random_model, tmp_path):
    from helpers import run_cli

    sel = devices.select("cpu", "gguf", devices.host_facts())
    assert sel.threads == devices.physical_cores() and sel.as_dict()["threads"] == sel.threads
    gguf = tmp_path / "m.gguf"
    proc = run_cli("convert", str(random_model("llama")), "-o", str(gguf), "--to", "gguf", "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr
    for args, want in (((), devices.physical_cores()), (("--threads", "1"), 1)):
        proc = run_cli("run", str(gguf), "-p", "hi", "-n", "2", "--json", *args)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["engine"]["threads"] == want
