"""`edgekit package` and `edgekit package verify`, through the CLI.

The independent references: `edgekit run --json` (greedy tokens on the static ONNX export the bundle is made
from), the reference loop (edgekit/package/reference.py, which imports nothing of edgekit and is run in a
child interpreter), transformers' tokenizer and chat template for the bundle's tokenizer facts, and
onnxruntime / coremltools reading the bundle's graphs.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "edgekit" / "package" / "reference.py"
PROMPT = "It is a truth universally acknowledged"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1800)


def inproc(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (no interpreter start-up): for the many error cases."""
    import contextlib
    import io

    from edgekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def reference(bundle: Path, prompt: str, chat: bool, n: int = 32) -> dict:
    args = [sys.executable, "-I", str(REFERENCE), str(bundle), "-p", prompt, "-n", str(n), "--json"]
    proc = subprocess.run([*args, "--chat"] if chat else args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def tiny_static(tmp_path_factory, tiny_dir) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "tiny-static"
    ok(cli("convert", str(tiny_dir), "--to", "onnx", "--static", "--context", "256", "--prefill-chunk", "16",
           "-o", str(out), "--json"))
    return out


@pytest.fixture(scope="module")
def tiny_android(tiny_static) -> Path:
    out = tiny_static.parent / "tiny-android"
    result = ok(cli("package", str(tiny_static), "--platform", "android", "-o", str(out), "--json"))
    assert result["output"] == str(out)
    return out


def test_android_bundle_contents(tiny_android, tiny_dir):
    from transformers import AutoTokenizer

    meta = json.loads((tiny_android / "bundle.json").read_text())
    assert sorted(p.name for p in tiny_android.iterdir()) == ["bundle.json", "decode.ort", "model.ort",
                                                               "required_operators.config", "tokenizer.json"]
    rt = meta["runtime"]
    assert rt["graphs"] == {"prefill": {"file": "model.ort", "tokens": 16},
                            "decode": {"file": "decode.ort", "tokens": 1}}
    assert meta["context_length"] == rt["kv"]["slots"] == 256
    assert [rt["kv"][k] for k in ("layers", "kv_heads", "head_dim", "dtype")] == [4, 2, 32, "float32"]
    assert rt["inputs"]["input_ids"]["dtype"] == "int32"  # NNAPI has no int64
    # the checker's verdict recorded per graph, and the provider chosen from it
    assert {g: u["NNAPI"]["verdict"] for g, u in rt["mobile_usability"].items()} == {"model.ort": "YES",
                                                                                      "decode.ort": "YES"}
    assert rt["providers"]["preferred"] == "NNAPI" and rt["providers"]["fallback"] == "CPU"
    config = (tiny_android / "required_operators.config").read_text()
    assert "ai.onnx;" in config and "MatMul" in config and "/tmp" not in config
    # tokenizer facts against transformers' own tokenizer
    hf = AutoTokenizer.from_pretrained(tiny_dir)
    assert meta["special_ids"]["bos"] == hf.bos_token_id
    assert hf.eos_token_id in meta["special_ids"]["eos"]
    text = "Mr. Darcy's 12 letters"
    prefix, suffix = meta["tokenizer"]["add_special"]["prefix"], meta["tokenizer"]["add_special"]["suffix"]
    assert prefix + hf(text, add_special_tokens=False)["input_ids"] + suffix == hf(text)["input_ids"]
    assert meta["tokenizer"]["kind"] == "byte_level_bpe"
    # the reduced chat format renders what transformers' apply_chat_template renders
    from edgekit.package.chatformat import apply

    messages = [{"role": "system", "content": "Be civil."}, {"role": "user", "content": "Who is Emma?"},
                {"role": "assistant", "content": "A lady."}, {"role": "user", "content": "And Harriet?"}]
    assert apply(meta["chat"]["format"], messages) == hf.apply_chat_template(messages, tokenize=False,
                                                                              add_generation_prompt=True)


def test_android_verify_passes_and_reference_equals_edgekit_run(tiny_android, tiny_static):
    report = ok(cli("package", "verify", str(tiny_android), "--json"))
    assert report["hashes"] == "ok" and report["numeric"]["match"] is True
    assert report["numeric"]["greedy_tokens"] == 32
    for chat in (False, True):
        args = ["run", str(tiny_static), "-p", PROMPT, "-n", "32", "--device", "cpu", "--json"]
        run = ok(cli(*args, "--chat") if chat else cli(*args, "--raw"))  # -p alone would use the chat template
        ref = reference(tiny_android, PROMPT, chat)
        assert len(run["tokens"]) == 32
        assert ref["tokens"] == run["tokens"], (chat, ref["text"], run["text"])
        assert ref["text"] == run["text"]


def test_reference_loop_imports_nothing_of_edgekit(tiny_android):
    """The reference loop reads only the bundle: -X importtime lists every module the child imported."""
    proc = subprocess.run([sys.executable, "-I", "-X", "importtime", str(REFERENCE), str(tiny_android), "-p", PROMPT,
                           "-n", "4", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert {"onnxruntime", "tokenizers", "numpy"} <= modules
    assert not modules & {"edgekit", "runtimes", "converters", "quant", "transformers", "torch"}, modules


def test_android_from_checkpoint_single_graph_zip(tiny_dir, tmp_path):
    out = tmp_path / "b"
    result = ok(cli("package", str(tiny_dir), "--platform", "android", "-o", str(out), "--prefill-chunk", "1",
                    "--context", "128", "--zip", "--json"))
    assert result["zip"] == str(out) + ".zip" and Path(result["zip"]).is_file()
    meta = json.loads((out / "bundle.json").read_text())
    assert list(meta["runtime"]["graphs"]) == ["prefill"] and not (out / "decode.ort").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # nothing left of the temporary directory
    report = ok(cli("package", "verify", result["zip"], "--json"))
    assert report["numeric"]["match"] is True


def test_ios_bundle_structure(tiny_dir, tmp_path):
    out = tmp_path / "ios"
    result = ok(cli("package", str(tiny_dir), "--platform", "ios", "-o", str(out), "--context", "128", "--json"))
    assert result["dtype"] == "fp16" and result["context_length"] == 128
    meta = json.loads((out / "bundle.json").read_text())
    assert (out / "model.mlpackage" / "Manifest.json").is_file()
    assert meta["runtime"]["states"]["key_cache"]["shape"] == [4, 2, 128, 32]
    assert meta["runtime"]["inputs"]["input_ids"]["shape"] == [1, "1..128"]
    report = ok(cli("package", "verify", str(out), "--json"))
    assert report["structure"]["states"] == ["key_cache", "value_cache"]
    if sys.platform != "darwin":
        assert "only on macOS" in report["numeric"]


# -- a bundle that is not what bundle.json says fails in one line --------------------------------------------

def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_file_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    data = bytearray((b / "tokenizer.json").read_bytes())
    data[100] ^= 1
    (b / "tokenizer.json").write_bytes(bytes(data))
    assert_one_line_error(inproc("package", "verify", str(b)), "tokenizer.json", "sha256")


def test_resized_file_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    with (b / "decode.ort").open("ab") as fh:
        fh.write(b"\0")
    assert_one_line_error(inproc("package", "verify", str(b)), "decode.ort", "bytes")


def test_missing_file_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    (b / "required_operators.config").unlink()
    assert_one_line_error(inproc("package", "verify", str(b)), "required_operators.config", "missing")


def test_extra_file_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    (b / "evil.ort").write_bytes(b"x")
    assert_one_line_error(inproc("package", "verify", str(b)), "evil.ort", "not in bundle.json")


def test_newer_schema_version_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    meta = json.loads((b / "bundle.json").read_text())
    meta["schema_version"] = 2
    meta["something_new"] = {"x": 1}
    (b / "bundle.json").write_text(json.dumps(meta))
    assert_one_line_error(inproc("package", "verify", str(b)), "schema version 2", "upgrade edgekit")


def test_schema_violation_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    meta = json.loads((b / "bundle.json").read_text())
    meta["special_ids"]["eos"] = []
    (b / "bundle.json").write_text(json.dumps(meta))
    assert_one_line_error(inproc("package", "verify", str(b)), "schema", "special_ids/eos")


def test_chat_format_disagreeing_with_template_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    meta = json.loads((b / "bundle.json").read_text())
    meta["chat"]["format"]["roles"]["user"]["after"] = "<|im_end|>"  # the template writes a newline after it
    (b / "bundle.json").write_text(json.dumps(meta))
    assert_one_line_error(inproc("package", "verify", str(b)), "chat format", "template")


def test_wrong_io_name_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    meta = json.loads((b / "bundle.json").read_text())
    meta["runtime"]["inputs"]["position_ids"]["name"] = "positions"
    (b / "bundle.json").write_text(json.dumps(meta))
    assert_one_line_error(inproc("package", "verify", str(b)), "model.ort", "positions")


def test_selftest_mismatch_fails(tiny_android, tmp_path):
    b = _copy(tiny_android, tmp_path)
    meta = json.loads((b / "bundle.json").read_text())
    meta["selftest"]["greedy_ids"][5] = (meta["selftest"]["greedy_ids"][5] + 1) % 4096
    (b / "bundle.json").write_text(json.dumps(meta))
    assert_one_line_error(inproc("package", "verify", str(b)), "reference loop", "position 5")


def test_package_input_errors(tiny_static, tiny_dir, tmp_path):
    assert_one_line_error(inproc("package", str(tiny_static), "--platform", "ios", "-o", str(tmp_path / "x")),
                          "onnx artifact", "coreml")
    assert_one_line_error(inproc("package", str(tiny_static), "--platform", "android", "--dtype", "fp16",
                              "-o", str(tmp_path / "x")), "--dtype", "already converted")
    assert_one_line_error(inproc("package", str(tmp_path / "nope"), "--platform", "android", "-o", str(tmp_path / "y")),
                          "does not exist")
    (tmp_path / "taken").mkdir()
    assert_one_line_error(inproc("package", str(tiny_static), "--platform", "android", "-o", str(tmp_path / "taken")),
                          "already exists", "--force")
    assert_one_line_error(inproc("package", "verify", str(tmp_path / "taken")), "no bundle.json")
    # a failure after the temporary directory exists (the converter refuses the context) leaves nothing behind
    assert_one_line_error(inproc("package", str(tiny_dir), "--platform", "android", "--context", "5000",
                                 "-o", str(tmp_path / "z")), "--context")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_dynamic_onnx_refused(tiny_dir, tmp_path):
    dyn = tmp_path / "dyn"
    ok(inproc("convert", str(tiny_dir), "--to", "onnx", "-o", str(dyn), "--json"))
    assert_one_line_error(inproc("package", str(dyn), "--platform", "android", "-o", str(tmp_path / "b")),
                          "dynamic-shape", "--static")


# -- SmolLM2: the real tokenizer and chat template (slow: its conversions take minutes here) -----------------

@pytest.mark.slow
@pytest.mark.parametrize("platform", ["android", "ios"])
def test_smollm2_bundle_verifies(smollm2_dir, tmp_path, platform):
    out = tmp_path / platform
    ok(cli("package", str(smollm2_dir), "--platform", platform, "-o", str(out), "--context", "512", "--json"))
    report = ok(cli("package", "verify", str(out), "--json"))
    assert report["hashes"] == "ok"
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["chat"]["format"]["default_system"].startswith("You are a helpful AI assistant named SmolLM")
    if platform == "android":
        assert report["numeric"]["match"] is True
        assert "Paris" in report["numeric"]["text"]


# -- macOS: the reference loop on Core ML against edgekit run on the same package ----------------------------

@pytest.mark.macos
def test_ios_reference_equals_edgekit_run_on_macos(tiny_dir, tmp_path):
    coreml = tmp_path / "coreml"
    ok(cli("convert", str(tiny_dir), "--to", "coreml", "--context", "256", "-o", str(coreml), "--json"))
    out = tmp_path / "ios"
    ok(cli("package", str(coreml), "--platform", "ios", "-o", str(out), "--json"))
    for chat in (False, True):
        args = ["run", str(coreml), "-p", PROMPT, "-n", "32", "--json"]
        run = ok(cli(*args, "--chat") if chat else cli(*args, "--raw"))  # -p alone would use the chat template
        ref = reference(out, PROMPT, chat)
        assert ref["tokens"] == run["tokens"], (chat, ref["text"], run["text"])


def test_package_force_replaces_its_own_bundle_only(tiny_android, tiny_static, tmp_path):
    """A bundle edgekit wrote (every file listed in bundle.json) is replaced by --force, as `make demo` run twice
    does; one holding a file bundle.json does not list is refused and left as it was."""
    b = _copy(tiny_android, tmp_path)
    ok(cli("package", str(tiny_static), "--platform", "android", "-o", str(b), "--force", "--json"))
    assert inproc("package", "verify", str(b)).returncode == 0
    (b / "notes.txt").write_text("mine")
    assert_one_line_error(inproc("package", str(tiny_static), "--platform", "android", "-o", str(b), "--force"),
                          "did not write", "notes.txt")
    assert (b / "notes.txt").read_text() == "mine"
