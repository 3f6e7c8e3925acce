"""Every input the CLI reads is validated: one `edgekit: error:` line and exit 2 (a JSON object on stdout
with --json), never a traceback, an `internal error` or an unusable artifact."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from helpers import assert_one_line_error, converted, run_cli


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    _copy(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _edit_header(src: Path, dst: Path, edit) -> Path:
    """Rewrite model.safetensors' JSON header through ``edit(header)``, keeping the data bytes."""
    _copy(src, dst)
    f = dst / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


class InProcess:
    """``edgekit ARGS`` through the CLI's entry point in this process (no interpreter start: these cases
    fail in milliseconds), with stdout/stderr captured at the file descriptors, child processes included."""

    def __init__(self, capfd):
        self.capfd = capfd

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        import signal

        from edgekit.cli import main

        saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        self.capfd.readouterr()
        try:
            with pytest.raises(SystemExit) as exit_:
                main(list(args))
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        out, err = self.capfd.readouterr()
        return subprocess.CompletedProcess(args, exit_.value.code, out, err)


@pytest.fixture
def ek(capfd):
    return InProcess(capfd)


@pytest.fixture(scope="module")
def base(random_model):
    return random_model("llama")


@pytest.mark.parametrize("changes, needles", [
    ({"num_hidden_layers": -1}, ("num_hidden_layers", "-1", "positive")),
    ({"hidden_size": 0}, ("hidden_size", "positive")),
    ({"vocab_size": 10**12}, ("vocab_size", "1000000000000")),
    ({"num_attention_heads": "four"}, ("num_attention_heads",)),
    ({"num_hidden_layers": 7}, ("num_hidden_layers is 7", "2 layers")),
    ({"vocab_size": 600}, ("vocab_size 600", "rows")),
    ({"num_key_value_heads": 3}, ("not a multiple",)),
    ({"rms_norm_eps": float("nan")}, ("rms_norm_eps", "finite")),
    ({"max_position_embeddings": True}, ("max_position_embeddings",)),
])
def test_bad_config_values(changes, needles, base, tmp_path, ek):
    bad = _edit_config(base, tmp_path / "bad", **changes)
    assert_one_line_error(ek("inspect", str(bad)), *needles)
    for fmt in ("gguf", "onnx", "coreml"):
        out = tmp_path / f"out-{fmt}"
        assert_one_line_error(ek("convert", str(bad), "--to", fmt, "-o", str(out)), *needles)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def _first(header):
    return next(k for k in header if k != "__metadata__")


def _overlap(header):
    """Point a tensor at the bytes of another of the same size."""
    a, b = sorted(n for n in header if n.endswith("layernorm.weight"))[:2]
    header[b]["data_offsets"] = header[a]["data_offsets"]


@pytest.mark.parametrize("edit, needles", [
    (lambda h: h[_first(h)].update(data_offsets="abc"), ("data_offsets", "'abc'")),
    (lambda h: h[_first(h)].update(data_offsets=[0]), ("data_offsets",)),
    (lambda h: h[_first(h)].update(dtype="F99"), ("dtype", "F99")),
    (lambda h: h[_first(h)].update(dtype="I64"), ("bytes but shape",)),
    (lambda h: h[_first(h)].update(shape=[-1, 4]), ("shape",)),
    (lambda h: h[_first(h)].update(shape="big"), ("shape",)),
    (lambda h: h[_first(h)].update(data_offsets=[10**12, 10**12 + h[_first(h)]["data_offsets"][1]
                                                 - h[_first(h)]["data_offsets"][0]]), ("truncated",)),
    (lambda h: _overlap(h), ("overlap",)),
    (lambda h: h.update(__metadata__=[1, 2]), ("__metadata__",)),
    (lambda h: h.update(extra=7), ("extra",)),
])
def test_bad_safetensors_headers(edit, needles, base, tmp_path, ek):
    bad = _edit_header(base, tmp_path / "bad", edit)
    assert_one_line_error(ek("inspect", str(bad)), *needles)
    out = tmp_path / "o.gguf"
    assert_one_line_error(ek("convert", str(bad), "--to", "gguf", "-o", str(out)), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "coreml"])
def test_malformed_tokenizer_refused_at_convert(fmt, base, tmp_path, ek):
    bad = _copy(base, tmp_path / "bad")
    (bad / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": [1, 2')
    out = tmp_path / "out"
    assert_one_line_error(ek("convert", str(bad), "--to", fmt, "-o", str(out)), "tokenizer.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_tokenizer_config_and_missing_tokenizer(base, tmp_path, ek):
    bad = _copy(base, tmp_path / "bad")
    (bad / "tokenizer_config.json").write_text("[not json")
    assert_one_line_error(ek("convert", str(bad), "--to", "onnx", "-o", str(tmp_path / "o")),
                          "tokenizer_config.json", "JSON object")
    none = _copy(base, tmp_path / "none")
    (none / "tokenizer.json").unlink()
    assert_one_line_error(ek("convert", str(none), "--to", "onnx", "-o", str(tmp_path / "o")), "no tokenizer")


@pytest.mark.parametrize("changes, needles", [
    ({"r": 0}, ("r is 0", "positive")),
    ({"r": 2.5}, ("r is 2.5",)),
    ({"lora_alpha": "big"}, ("lora_alpha", "'big'")),
    ({"lora_alpha": float("inf")}, ("lora_alpha", "finite")),
    ({"rank_pattern": {"q_proj": 0}}, ("rank_pattern",)),
])
def test_bad_adapter_config(changes, needles, base, tmp_path, ek):
    from test_checkpoint import _make_adapter

    adapter = tmp_path / "adapter"
    _make_adapter(base, adapter, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    assert_one_line_error(ek("inspect", str(base), "--adapter", str(adapter)), *needles)
    out = tmp_path / "o.gguf"
    assert_one_line_error(ek("convert", str(base), "--to", "gguf", "--adapter", str(adapter), "-o", str(out)),
                          *needles)
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, base):
    return converted(base, tmp_path_factory.mktemp("g") / "r.gguf", "--to", "gguf")


@pytest.mark.parametrize("args, needles", [
    (("--context", "0"), ("--context", "0", "x>=1")),
    (("--context", "-5"), ("--context",)),
    (("--threads", "0"), ("--threads",)),
    (("--temperature", "inf"), ("--temperature", "finite")),
    (("--temperature", "nan"), ("--temperature", "finite")),
    (("--temperature", "-1"), ("--temperature", "below")),
    (("--top-p", "nan"), ("--top-p", "finite")),
    (("--top-p", "0"), ("--top-p",)),
    (("--top-k", "-1"), ("--top-k",)),
    (("--repeat-penalty", "-inf"), ("--repeat-penalty", "finite")),
    (("-n", "0"), ("--max-tokens", "0")),
    (("--frobnicate",), ("no such option", "--frobnicate", "edgekit run --help")),
])
def test_bad_run_options(args, needles, tiny_gguf, ek):
    assert_one_line_error(ek("run", str(tiny_gguf), "-p", "hi", *args), *needles)


@pytest.mark.parametrize("args, needles", [
    (("--to", "onnx", "--static", "--context", "0"), ("--context", "x>=1")),
    (("--to", "coreml", "--context", "0"), ("--context",)),
    (("--to", "onnx", "--static", "--prefill-chunk", "0"), ("--prefill-chunk",)),
    ((), ("missing option '--to'", "edgekit convert --help")),
    (("--to", "tflite"), ("--to", "tflite")),
])
def test_bad_convert_options(args, needles, base, tmp_path, ek):
    out = tmp_path / "o"
    assert_one_line_error(ek("convert", str(base), "-o", str(out), *args), *needles)
    assert not out.exists()


def test_usage_errors_one_line():
    assert_one_line_error(run_cli("frobnicate"), "no such command", "edgekit --help")
    assert_one_line_error(run_cli("inspect"), "missing argument")


@pytest.mark.parametrize("args", [
    ("run", "nope.gguf", "-p", "x", "--json"),
    ("run", "nope.gguf", "-n", "0", "--json"),
    ("convert", "x", "--json"),
    ("inspect", "/does/not/exist", "--json"),
    ("verify", "/does/not/exist", "--json"),
])
def test_json_errors_are_objects_on_stdout(args):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc
    assert proc.stderr.strip() == "", proc.stderr
    err = json.loads(proc.stdout)
    assert set(err) >= {"error", "hint"} and err["error"] and "\n" not in err["error"]


def test_internal_error_saves_a_traceback(tmp_path, base):
    """A bug (here: an exception type edgekit does not expect, injected) is one line naming a saved
    traceback file; the file holds the traceback."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import edgekit.spec as s\n"
        "def _boom(config):\n"
        "    raise ZeroDivisionError('injected bug')\n"
        "s.from_config = _boom\n")
    home = tmp_path / "home"
    env = {"PYTHONPATH": str(hook) + os.pathsep + os.environ.get("PYTHONPATH", ""), "EDGEKIT_HOME": str(home)}
    proc = run_cli("inspect", str(base), env=env)
    assert proc.returncode == 1, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "internal error: ZeroDivisionError: injected bug" in lines[0]
    crash = sorted(home.glob("crash-*.txt"))
    assert len(crash) == 1 and str(crash[0]) in lines[0]
    text = crash[0].read_text()
    assert "Traceback" in text and "ZeroDivisionError: injected bug" in text
    as_json = run_cli("inspect", str(base), "--json", env=env)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["traceback"].startswith(str(home))


def test_disk_full_while_writing_a_gguf(base, tmp_path):
    """A real full file system (a 64 kB tmpfs): numpy's short write carries no errno, still one line."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        for outtype in ("f32",):
            out = mnt / "o.gguf"
            proc = run_cli("convert", str(base), "--to", "gguf", "--outtype", outtype, "-o", str(out))
            assert_one_line_error(proc, "disk full", str(out))
            assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "coreml"])
def test_tokenizer_larger_than_the_vocabulary(fmt, base, tiny_dir, tmp_path, ek):
    big = _copy(base, tmp_path / "big")
    shutil.copy(tiny_dir / "tokenizer.json", big / "tokenizer.json")  # ~4k tokens for a 512-row embedding
    out = tmp_path / "out"
    assert_one_line_error(ek("convert", str(big), "--to", fmt, "-o", str(out)), "beyond the model's vocab_size")
    assert not out.exists()
