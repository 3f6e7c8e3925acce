"""`--force` replaces only what edgekit wrote: through the CLI, with everything else byte-for-byte intact."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (and ``root`` itself) with its bytes (None for directories)."""
    out: dict[str, bytes | None] = {".": None}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = None if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture
def tiny_copy(tiny_dir, tmp_path):
    return Path(shutil.copytree(tiny_dir, tmp_path / "tiny"))


def _user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "sub" / "data.bin").write_bytes(os.urandom(256))
    return d


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_force_refuses_directory_with_unrelated_files(fmt, tiny_copy, tmp_path):
    mine = _user_dir(tmp_path)
    before = snapshot(mine)
    proc = cli("convert", str(tiny_copy), "--to", fmt, "-o", str(mine), "--force")
    assert_one_line_error(proc, "did not write", "notes.txt", "choose a new path")
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "tiny"]  # no temporary left behind


@pytest.mark.parametrize("fmt", ["onnx", "coreml"])
def test_existing_directory_with_foreign_files_is_refused(fmt, random_model, tmp_path):
    """Without --force too: one line naming a file edgekit did not write, which stays as it was."""
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli("convert", str(random_model("llama")), "--to", fmt, "-o", str(out))
    assert_one_line_error(proc, "did not write", "keep.txt")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "coreml"])
def test_force_refuses_current_directory(fmt, tiny_copy, tmp_path):
    work = _user_dir(tmp_path)
    before = snapshot(work)
    proc = cli("convert", str(tiny_copy), "--to", fmt, "-o", ".", "--force", cwd=work)
    assert_one_line_error(proc, "current directory", "choose a new path")
    assert snapshot(work) == before
    up = cli("convert", str(tiny_copy), "--to", fmt, "-o", "..", "--force", cwd=work / "sub")
    assert_one_line_error(up, "above the current", "choose a new path")
    assert snapshot(work) == before and (tmp_path / "tiny").is_dir()


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "coreml"])
def test_force_refuses_the_source_checkpoint(fmt, tiny_copy, tmp_path):
    before = snapshot(tiny_copy)
    proc = cli("convert", str(tiny_copy), "--to", fmt, "-o", str(tiny_copy), "--force")
    assert_one_line_error(proc, "is the source", "outside the checkpoint")
    inside = cli("convert", str(tiny_copy), "--to", fmt, "-o", str(tiny_copy / "model.safetensors"), "--force")
    assert_one_line_error(inside, "inside the source")
    containing = cli("convert", str(tiny_copy), "--to", fmt, "-o", str(tmp_path), "--force")
    assert_one_line_error(containing, "contains the source")
    assert snapshot(tiny_copy) == before


def test_exists_message_recommends_force_only_where_it_works(tiny_copy, tmp_path):
    foreign = tmp_path / "x.gguf"
    foreign.write_bytes(b"not a gguf at all")
    proc = cli("convert", str(tiny_copy), "--to", "gguf", "-o", str(foreign))
    assert_one_line_error(proc, "did not write")
    assert "--force" not in proc.stderr and foreign.read_bytes() == b"not a gguf at all"
    link = tmp_path / "link.gguf"
    link.symlink_to(foreign)
    assert_one_line_error(cli("convert", str(tiny_copy), "--to", "gguf", "-o", str(link), "--force"),
                          "symbolic link")
    assert foreign.read_bytes() == b"not a gguf at all"


def test_force_replaces_an_edgekit_gguf(tiny_copy, tmp_path):
    out = tmp_path / "t.gguf"
    assert cli("convert", str(tiny_copy), "--to", "gguf", "-o", str(out), "--outtype", "q8_0").returncode == 0
    q8 = out.read_bytes()
    assert_one_line_error(cli("convert", str(tiny_copy), "--to", "gguf", "-o", str(out)), "already exists",
                          "--force")
    proc = cli("convert", str(tiny_copy), "--to", "gguf", "-o", str(out), "--force", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outtype"] == "f16"
    assert out.read_bytes()[:4] == b"GGUF" and out.stat().st_size > len(q8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gguf", "tiny"]


def test_force_replaces_an_edgekit_directory_but_not_an_added_file(random_model, tmp_path):
    src = random_model("llama")
    out = tmp_path / "o"
    assert cli("convert", str(src), "--to", "onnx", "-o", str(out)).returncode == 0
    first = json.loads((out / "edgekit.json").read_text())
    proc = cli("convert", str(src), "--to", "onnx", "-o", str(out), "--force", "--dtype", "fp16")
    assert proc.returncode == 0, proc.stderr
    second = json.loads((out / "edgekit.json").read_text())
    assert first["quant"]["dtype"] == "fp32" and second["quant"]["dtype"] == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    (out / "my-results.csv").write_text("a,b\n")  # the user keeps something in the artifact: now it is theirs
    before = snapshot(out)
    assert_one_line_error(cli("convert", str(src), "--to", "onnx", "-o", str(out), "--force"),
                          "did not write", "my-results.csv")
    assert snapshot(out) == before


def test_swap_in_restores_the_old_artifact_when_the_rename_fails(tmp_path, monkeypatch):
    from edgekit import atomic

    dest, new = tmp_path / "a.gguf", tmp_path / ".a.gguf.tmp-1"
    dest.write_bytes(b"GGUF old")
    new.write_bytes(b"GGUF new")
    real = os.rename

    def failing(a, b):
        if Path(a) == new:
            raise OSError(5, "injected")
        return real(a, b)

    monkeypatch.setattr(atomic.os, "rename", failing)
    with pytest.raises(OSError):
        atomic.swap_in(new, dest)
    assert dest.read_bytes() == b"GGUF old"
    monkeypatch.setattr(atomic.os, "rename", real)
    atomic.swap_in(new, dest)
    assert dest.read_bytes() == b"GGUF new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"]
