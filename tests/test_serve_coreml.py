"""A Core ML artifact in the store and behind ``edgekit serve``. Everywhere: stored as one blob per file
(the .mlpackage's nested files included) and rebuilt byte for byte. On Linux a chat is one clear 400
naming macOS; on macOS (the ``macos`` workflow) the official ollama client's greedy answer equals
transformers'."""

import hashlib

import pytest
from serve_support import cli, serving, write_modelfile

MESSAGES = [{"role": "user", "content": "Who is Mr. Darcy?"}]


@pytest.fixture(scope="module")
def stored(tiny_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("coreml")
    home = work / "home"
    proc = cli("convert", str(tiny_dir), "--to", "coreml", "--context", "256", "-o", str(work / "tiny-coreml"),
               home=home)
    assert proc.returncode == 0, proc.stderr
    write_modelfile(work / "Modelfile", "FROM ./tiny-coreml\n")
    proc = cli("create", "tiny-coreml", "-f", str(work / "Modelfile"), home=home)
    assert proc.returncode == 0, proc.stderr
    return home, work / "tiny-coreml"


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_coreml_artifact_round_trips_through_the_store(stored):
    import json

    from edgekit.serve.store import Store

    home, source = stored
    show = json.loads(cli("show", "tiny-coreml", "--json", home=home).stdout)
    assert show["details"]["format"] == "coreml"
    assert any(x["path"].startswith("model.mlpackage/Data/") for x in show["edgekit"]["layers"])
    store = Store(home)
    rebuilt = store.artifact(store.read("tiny-coreml"))
    assert _tree(rebuilt) == _tree(source)


@pytest.mark.slow
def test_coreml_chat_off_macos_is_one_clear_error(stored):
    import sys

    import httpx

    if sys.platform == "darwin":
        pytest.skip("macOS runs the model: see test_coreml_chat_matches_transformers")
    home, _ = stored
    with serving(home) as server:
        r = httpx.post(server.url + "/api/chat", json={"model": "tiny-coreml", "stream": False,
                                                       "messages": MESSAGES}, timeout=60)
        assert r.status_code == 400 and "macOS" in r.json()["error"]
        assert httpx.get(server.url + "/api/tags").status_code == 200


@pytest.mark.macos
def test_coreml_chat_matches_transformers(stored, tiny_dir):
    import ollama
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home, _ = stored
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=16)
    want = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    with serving(home) as server:
        r = ollama.Client(host=server.url).chat(model="tiny-coreml", messages=MESSAGES,
                                                options={"temperature": 0, "repeat_penalty": 1.0, "num_predict": 16})
        # fp16 Core ML vs fp32 transformers: the first tokens agree (a later near-tie may flip)
        assert r.message.content[:24] == want[:24]
