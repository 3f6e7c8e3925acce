"""SIGTERM / SIGHUP mid-conversion clean up as Ctrl-C does; Core ML's temporaries and permissions."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _start(args: list[str], tmpdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc.poll() is not None:
            pytest.fail(f"conversion ended before the signal could be sent: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the conversion never reached the point to interrupt")


def _temporaries(dest: Path) -> list[Path]:
    return list(dest.parent.glob(f".{dest.name}.*"))


def _interrupt(proc: subprocess.Popen, sig: int) -> str:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line and "%|" not in line]
    assert lines[-1] == f"edgekit: error: stopped by {signal.Signals(sig).name}", err
    assert "Traceback" not in err
    return err


def test_sighup_mid_gguf_write_leaves_nothing(smollm2_dir, tmp_path):
    """SIGHUP here, SIGTERM in the ONNX and Core ML tests below: the same handler serves both."""
    sig = signal.SIGHUP
    dest, tmpdir = tmp_path / "out" / "s.gguf", tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _start(["convert", str(smollm2_dir), "--to", "gguf", "-o", str(dest), "--outtype", "f32"], tmpdir)

    def writing() -> bool:
        tmps = _temporaries(dest) if dest.parent.exists() else []
        return any(p.stat().st_size > 20_000_000 for p in tmps if p.exists())

    _wait_for(writing, proc)
    _interrupt(proc, sig)
    assert not dest.exists() and _temporaries(dest) == []
    assert list(tmpdir.iterdir()) == []


def test_sigterm_mid_onnx_export_leaves_nothing(smollm2_dir, tmp_path):
    dest, tmpdir = tmp_path / "o", tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _start(["convert", str(smollm2_dir), "--to", "onnx", "-o", str(dest)], tmpdir)

    def writing() -> bool:
        return any((p / "model.onnx.data").exists() and (p / "model.onnx.data").stat().st_size > 20_000_000
                   for p in _temporaries(dest) if p.is_dir())

    _wait_for(writing, proc)
    _interrupt(proc, signal.SIGTERM)
    assert not dest.exists() and _temporaries(dest) == []
    assert list(tmpdir.iterdir()) == []


def test_coreml_temporaries_go_with_the_artifact(random_model, tmp_path):
    """coremltools writes intermediate packages to the temporary directory: they live inside the
    artifact's temporary directory, so SIGTERM mid-conversion leaves nothing in $TMPDIR or beside -o.
    (A finished package's permissions are checked by test_convert_coreml's _check_package.)"""
    dest, tmpdir = tmp_path / "cm", tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _start(["convert", str(random_model("llama")), "--to", "coreml", "-o", str(dest)], tmpdir)

    def converting() -> bool:  # coremltools has written its intermediate files into the artifact's tmp
        return any((p / ".tmp").is_dir() and any((p / ".tmp").iterdir()) for p in _temporaries(dest) if p.is_dir())

    _wait_for(converting, proc)
    _interrupt(proc, signal.SIGTERM)
    assert not dest.exists() and _temporaries(dest) == [] and list(tmpdir.iterdir()) == []

