"""A model created from a LoRA fine-tune (``FROM checkpoint`` + ``ADAPTER peft-dir``, no TEMPLATE) answers
through the official ollama client with the artifact's own chat template, exactly as transformers does
with the adapter merged."""

import pytest
import torch
from serve_support import cli, serving, write_modelfile

from helpers import random_lora

MESSAGES = [{"role": "user", "content": "Where does Anne Elliot live?"}]


@pytest.fixture(scope="module")
def tuned(tiny_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = tmp_path_factory.mktemp("lora")
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    merged = random_lora(base, work / "adapter", 0.05)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    # FROM the checkpoint, ADAPTER relative to the Modelfile, f32 so greedy output is comparable; no TEMPLATE
    write_modelfile(work / "Modelfile", f"FROM {tiny_dir}\nADAPTER ./adapter\nQUANTIZE f32\n"
                                        "PARAMETER temperature 0\nPARAMETER repeat_penalty 1.0\n")
    home = work / "home"
    proc = cli("create", "austen-tuned", "-f", str(work / "Modelfile"), "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    # the same LoRA as a GGUF adapter file, applied by llama.cpp at load on a GGUF base
    proc = cli("convert", str(tiny_dir), "--to", "gguf", "--adapter", str(work / "adapter"), "--adapter-only",
               "--outtype", "f32", "-o", str(work / "adapter.gguf"), home=home)
    assert proc.returncode == 0, proc.stderr
    return home, merged, tok, base_model_answer(tiny_dir, tok), work / "adapter.gguf"


def base_model_answer(tiny_dir, tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return _greedy(model, tok, 24)


def _greedy(model, tok, n):
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=n)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_lora_model_answers_with_its_own_template(tuned):
    import ollama

    home, merged, tok, base_answer, _ = tuned
    want = _greedy(merged, tok, 24)
    assert want != base_answer  # the adapter changes the answer, so matching it proves the merge
    with serving(home) as server:
        client = ollama.Client(host=server.url)
        r = client.chat(model="austen-tuned", messages=MESSAGES, options={"num_predict": 24})
        assert r.message.content == want
        show = client.show("austen-tuned")
        assert "TEMPLATE" not in show.modelfile  # nobody wrote one
        assert show.template.strip() == (tok.chat_template or "").strip()
        info = __import__("httpx").post(server.url + "/api/show", json={"model": "austen-tuned"}).json()
        assert info["edgekit"]["conversion"]["adapter"]
        assert info["edgekit"]["artifact_manifest"]["adapter"]  # the GGUF's edgekit.adapter key
        streamed = "".join(p.message.content for p in client.chat(model="austen-tuned", messages=MESSAGES,
                                                                     options={"num_predict": 24}, stream=True))
        assert streamed == want


def test_gguf_adapter_on_gguf_base(tuned, tmp_path_factory):
    """ADAPTER <adapter.gguf> on a GGUF FROM (Modelfile), and the same through /api/create with uploaded
    files and adapters: llama.cpp applies the LoRA at load; the answer is transformers' with it merged."""
    import ollama
    from serve_support import shared_artifacts

    home, merged, tok, _, adapter = tuned
    base = shared_artifacts(tmp_path_factory)["gguf"]
    work = adapter.parent
    write_modelfile(work / "Modelfile.gguf", f"FROM {base}\nADAPTER {adapter}\n")
    proc = cli("create", "austen-gguf-lora", "-f", str(work / "Modelfile.gguf"), home=home)
    assert proc.returncode == 0, proc.stderr
    want = _greedy(merged, tok, 24)
    with serving(home) as server:
        client = ollama.Client(host=server.url)
        greedy = {"num_predict": 24, "temperature": 0, "repeat_penalty": 1.0}
        r = client.chat(model="austen-gguf-lora", messages=MESSAGES, options=greedy)
        assert r.message.content == want
        files = {"model.gguf": client.create_blob(base)}
        client.create(model="uploaded-lora", files=files, adapters={"adapter.gguf": client.create_blob(adapter)})
        assert client.chat(model="uploaded-lora", messages=MESSAGES, options=greedy).message.content == want
    run = cli("run", "austen-gguf-lora", "--chat", "-p", MESSAGES[0]["content"], "-n", "24", "--json", home=home)
    assert run.returncode == 0, run.stderr
    assert __import__("json").loads(run.stdout)["text"] == want  # edgekit run NAME applies the adapter too
