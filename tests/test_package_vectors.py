"""The shared vectors in mobile_demo/vectors/ (read by the Kotlin and Swift unit tests) against independent
references: transformers' tokenizer and chat template for every probe, `edgekit run` for the greedy
continuations, and the generator itself (the committed file is what the script writes today)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "mobile_demo" / "vectors"
FILES = sorted(VECTORS.glob("*.json"))


def _model_dir(name: str) -> Path:
    if name == "edgekit-tiny":
        return ROOT / "edgekit" / "data" / "tiny"
    assert name.startswith("smollm2"), f"no model known for vectors {name}.json"
    from edgekit.models import smollm2

    return smollm2.ensure()


def _cli(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_vectors_exist():
    assert "edgekit-tiny.json" in [f.name for f in FILES]


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_vectors_match_hf_tokenizer(path):
    from transformers import AutoTokenizer

    vectors = json.loads(path.read_text(encoding="utf-8"))
    model = _model_dir(path.stem)
    assert hashlib.sha256((model / "tokenizer.json").read_bytes()).hexdigest() == vectors["tokenizer_sha256"], \
        "the model's tokenizer changed: regenerate with python -m edgekit.package.vectors"
    hf = AutoTokenizer.from_pretrained(model)
    names = {e["name"] for e in vectors["encode"]}
    assert {"prose", "code", "chinese", "emoji", "whitespace", "special_tokens"} <= names
    for probe in vectors["encode"]:
        assert hf(probe["text"], add_special_tokens=False)["input_ids"] == probe["ids"], probe["name"]
        assert hf(probe["text"])["input_ids"] == probe["ids_with_special"], probe["name"]
    for probe in vectors["decode"]:
        assert hf.decode(probe["ids"], skip_special_tokens=True) == probe["text"], probe["name"]
    for chat in vectors["chat"]:
        prompt = hf.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=True)
        assert prompt == chat["prompt"]
        assert hf(prompt, add_special_tokens=False)["input_ids"] == chat["ids"]
    special = vectors["bundle"]["special_ids"]
    assert special["bos"] == hf.bos_token_id and hf.eos_token_id in special["eos"]


# the arguments each committed vectors file was generated with (same static export settings as its bundle)
GENERATED = {"edgekit-tiny": [], "smollm2-135m-instruct": ["--context", "512"]}


@pytest.mark.parametrize("name", [
    "edgekit-tiny",
    pytest.param("smollm2-135m-instruct", marks=pytest.mark.slow),
])
def test_vectors_are_current_and_greedy_equals_edgekit_run(tmp_path, name):
    """Regenerate from a fresh bundle (same settings as the committed one) and compare; the greedy runs equal
    `edgekit run` on the static ONNX export the bundle came from."""
    from edgekit.package.vectors import generate

    committed = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    static, bundle = tmp_path / "static", tmp_path / "bundle"
    _cli("convert", str(_model_dir(name)), "--to", "onnx", "--static", *GENERATED[name], "-o", str(static), "--json")
    _cli("package", str(static), "--platform", "android", "-o", str(bundle), "--json")
    fresh = generate(bundle)
    assert fresh == committed, "stale vectors: python -m edgekit.package.vectors BUNDLE -o mobile_demo/vectors"
    assert len(committed["greedy"]) >= 2
    for case in committed["greedy"]:
        args = ["run", str(static), "-p", case["prompt"], "-n", str(len(case["tokens"])), "--device", "cpu", "--json"]
        run = _cli(*args, "--chat") if case["chat"] else _cli(*args, "--raw")  # -p alone: the chat template
        assert run["tokens"] == case["tokens"] and run["text"] == case["text"]
