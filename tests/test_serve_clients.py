"""The official ``ollama`` and ``openai`` Python clients, unmodified, against a live ``edgekit serve``
over edgekit-tiny as GGUF (f32) and ONNX (fp32); greedy answers are checked against transformers."""

import base64
import struct
import time

import httpx
import jsonschema
import numpy as np
import pytest
from serve_support import ndjson, serving, shared_artifacts, store_models

GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 24}
MESSAGES = [{"role": "user", "content": "Who is Mr. Darcy?"}]
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 16},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "married": {"type": "boolean"}},
          "required": ["name", "age", "married"], "additionalProperties": False}


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    return shared_artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def server(arts, tmp_path_factory):
    home = tmp_path_factory.mktemp("clients") / "home"
    store_models(home, arts)
    with serving(home) as srv:
        yield srv
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """Greedy continuation by transformers of the chat-templated MESSAGES (the independent reference)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()

    def run(messages, n=GREEDY["num_predict"]):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=n)
        new = out[0, ids["input_ids"].shape[1]:]
        return tok.decode(new, skip_special_tokens=True), ids["input_ids"].shape[1], len(new)

    run.tokenizer, run.model = tok, model
    return run


@pytest.fixture(scope="module")
def client(server):
    import ollama

    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def oai(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", ["tiny", "tiny-onnx"])
def test_ollama_chat_matches_transformers(client, reference, model):
    want, prompt_len, _ = reference(MESSAGES)
    r = client.chat(model=model, messages=MESSAGES, options=GREEDY)
    assert r.message.role == "assistant" and r.done
    assert r.message.content == want
    assert r.prompt_eval_count == prompt_len  # the artifact's own template renders as transformers does
    streamed = list(client.chat(model=model, messages=MESSAGES, options=GREEDY, stream=True))
    assert streamed[-1].done and streamed[-1].done_reason in ("stop", "length")
    assert not any(p.done for p in streamed[:-1])
    assert "".join(p.message.content for p in streamed) == want
    assert streamed[-1].eval_count == r.eval_count


@pytest.mark.parametrize("model", ["tiny", "tiny-onnx"])
def test_ollama_generate_streamed_and_not(client, reference, model):
    want, _, _ = reference([{"role": "user", "content": "Tell me about Bath."}])
    r = client.generate(model=model, prompt="Tell me about Bath.", options=GREEDY)
    assert r.response == want and r.done and r.eval_count >= 1
    parts = list(client.generate(model=model, prompt="Tell me about Bath.", options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == want and parts[-1].done
    # raw: no template, the prompt continues as plain text
    raw = client.generate(model=model, prompt="It is a truth universally", raw=True, options=GREEDY)
    ids = reference.tokenizer("It is a truth universally", return_tensors="pt")
    import torch

    with torch.no_grad():
        out = reference.model.generate(**ids, do_sample=False, max_new_tokens=GREEDY["num_predict"])
    assert raw.response == reference.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_ollama_models_routes(client, server, arts):
    names = {m.model for m in client.list().models}
    assert {"tiny:latest", "tiny-onnx:latest"} <= names
    listed = {m.model: m for m in client.list().models}
    assert listed["tiny:latest"].details.format == "gguf" and listed["tiny-onnx:latest"].details.format == "onnx"
    assert listed["tiny:latest"].size == arts["gguf"].stat().st_size
    show = client.show("tiny")
    template = (arts["onnx"] / "chat_template.jinja").read_text()
    assert show.template.strip() == template.strip()  # the GGUF's own template, no TEMPLATE written
    assert show.modelinfo["general.architecture"] == "llama" and show.modelinfo["llama.block_count"] == 4
    raw = httpx.post(server.url + "/api/show", json={"model": "tiny-onnx"}).json()
    assert raw["edgekit"]["artifact_manifest"]["format"] == "onnx"  # the artifact's edgekit.json
    assert raw["edgekit"]["artifact_manifest"]["quant"]["method"] == "none"
    assert "FROM " in raw["modelfile"]
    client.chat(model="tiny", messages=MESSAGES, options={"num_predict": 1})
    ps = {m.model: m for m in client.ps().models}
    assert "tiny:latest" in ps and ps["tiny:latest"].size > 0 and ps["tiny:latest"].expires_at is not None
    assert httpx.get(server.url + "/api/version").json()["version"]
    assert httpx.head(server.url + "/").status_code == 200


def test_ollama_create_copy_delete(client, server, arts):
    digest = client.create_blob(arts["gguf"])  # upload, then create from the uploaded file
    client.create(model="uploaded", files={"model.gguf": digest}, system="You are terse.",
                  parameters={"temperature": 0, "num_predict": 4})
    show = client.show("uploaded")
    assert "temperature" in show.parameters and "You are terse." in show.modelfile
    r = client.generate(model="uploaded", prompt="Hello")
    assert r.eval_count <= 4  # the model's PARAMETER num_predict applies
    client.create(model="derived:v1", from_="tiny", system="Be brief.")
    assert client.show("derived:v1").details.format == "gguf"
    client.copy("derived:v1", "derived:v2")
    names = {m.model for m in client.list().models}
    assert {"uploaded:latest", "derived:v1", "derived:v2"} <= names
    for name in ("uploaded", "derived:v1", "derived:v2"):
        client.delete(name)
    names = {m.model for m in client.list().models}
    assert not names & {"uploaded:latest", "derived:v1", "derived:v2"}
    assert client.chat(model="tiny", messages=MESSAGES, options={"num_predict": 2}).done  # shared blob kept


def test_ollama_embed_matches_transformers_mean_pooling(client, reference, server):
    import torch

    texts = ["Captain Wentworth wrote a letter.", "It rained in Bath."]
    got = np.array(client.embed(model="tiny", input=texts).embeddings)
    assert got.shape == (2, 256)
    for text, vec in zip(texts, got, strict=True):
        ids = reference.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = reference.model.model(**ids).last_hidden_state[0]
        want = hidden.mean(0).numpy()
        want /= np.linalg.norm(want)
        assert float(np.dot(vec, want)) > 0.999
    legacy = httpx.post(server.url + "/api/embeddings", json={"model": "tiny", "prompt": texts[0]}).json()
    assert np.allclose(legacy["embedding"], got[0], atol=1e-5)
    r = httpx.post(server.url + "/api/embed", json={"model": "tiny-onnx", "input": "x"})
    assert r.status_code == 400 and "embeddings" in r.json()["error"]


@pytest.mark.parametrize("model", ["tiny", "tiny-onnx"])
def test_format_schema_output_validates(client, oai, model):
    r = client.chat(model=model, messages=[{"role": "user", "content": "Describe Anne Elliot."}], format=SCHEMA,
                    options={"temperature": 0, "num_predict": 200})
    assert r.done_reason == "stop"
    jsonschema.validate(__import__("json").loads(r.message.content), SCHEMA)
    c = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Describe Mr. Elton."}],
                                    temperature=0.7, seed=3, max_tokens=200,
                                    response_format={"type": "json_schema",
                                                     "json_schema": {"name": "person", "schema": SCHEMA}})
    assert c.choices[0].finish_reason == "stop"
    jsonschema.validate(__import__("json").loads(c.choices[0].message.content), SCHEMA)


def test_format_json_is_json(client, oai):
    """Without a schema the output is a JSON object; a stream cut by num_predict is a valid JSON prefix."""
    import json

    r = client.generate(model="tiny", prompt="Anne as JSON", format="json", options={"temperature": 0,
                                                                                   "num_predict": 60})
    assert r.response.startswith("{")
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.response), dict)
    c = oai.chat.completions.create(model="tiny-onnx", messages=[{"role": "user", "content": "JSON please"}],
                                    max_tokens=60, temperature=0, response_format={"type": "json_object"})
    assert c.choices[0].message.content.startswith("{")


def test_openai_chat_stream_with_usage(oai, reference):
    want, prompt_len, n_new = reference(MESSAGES)
    full = oai.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=24)
    assert full.choices[0].message.content == want and full.object == "chat.completion"
    assert full.usage.prompt_tokens == prompt_len and full.usage.completion_tokens == n_new
    stream = oai.chat.completions.create(model="tiny-onnx", messages=MESSAGES, temperature=0, max_tokens=24,
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_new
    assert chunks[-1].usage.total_tokens == prompt_len + n_new
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length" if n_new == 24 else "stop"]


def test_openai_completions_models_embeddings(oai, client, reference):
    import torch

    prompt = "It is a truth universally"
    c = oai.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    ids = reference.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = reference.model.generate(**ids, do_sample=False, max_new_tokens=12)
    assert c.choices[0].text == reference.tokenizer.decode(out[0, ids["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)
    parts = list(oai.completions.create(model="tiny-onnx", prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == c.choices[0].text
    ids = {m.id for m in oai.models.list()}
    assert {"tiny:latest", "tiny-onnx:latest"} <= ids
    assert oai.models.retrieve("tiny").id == "tiny:latest"
    e = oai.embeddings.create(model="tiny", input=["It rained in Bath."])  # the client asks for base64
    ref = client.embed(model="tiny", input="It rained in Bath.").embeddings[0]
    assert np.allclose(e.data[0].embedding, ref, atol=1e-6)
    assert e.usage.prompt_tokens > 0
    raw = httpx.post(str(oai.base_url) + "embeddings", json={"model": "tiny", "input": "x",
                                                             "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{256}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert len(decoded) == 256


def test_ndjson_and_sse_on_the_wire(server):
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "Hi", "options": {"num_predict": 3}})
    assert r.headers["content-type"].startswith("application/x-ndjson")  # stream defaults to true
    lines = ndjson(r)
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "stream": True,
                                                              "max_tokens": 3})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.rstrip().endswith("data: [DONE]")


def test_options_reach_the_sampler(client, reference, server):
    """stop, seed, num_ctx and a Modelfile-free TEMPLATE, checked by their effect."""
    want, _, _ = reference(MESSAGES)
    cut = want.index(" ", 8)
    stop = want[cut:cut + 4]
    r = client.chat(model="tiny", messages=MESSAGES, options={**GREEDY, "stop": [stop]})
    assert r.message.content == want[:want.index(stop)] and r.done_reason == "stop"
    sampled = {"temperature": 1.0, "top_k": 50, "top_p": 0.95, "min_p": 0.02, "num_predict": 24,
               "presence_penalty": 0.5, "frequency_penalty": 0.5, "repeat_penalty": 1.2}
    a = client.chat(model="tiny", messages=MESSAGES, options={**sampled, "seed": 7}).message.content
    b = client.chat(model="tiny", messages=MESSAGES, options={**sampled, "seed": 7}).message.content
    c = [client.chat(model="tiny", messages=MESSAGES, options={**sampled, "seed": s}).message.content
         for s in (8, 9, 10)]
    assert a == b and any(x != a for x in c)  # the seed makes sampling reproducible, and it does sample
    client.chat(model="tiny", messages=MESSAGES, options={**GREEDY, "num_ctx": 256, "num_predict": 2})
    assert {m.model: m.context_length for m in client.ps().models}["tiny:latest"] == 256
    client.chat(model="tiny", messages=MESSAGES, options={**GREEDY, "num_ctx": 1024, "num_predict": 2})
    # TEMPLATE (Jinja, transformers' convention) replaces the artifact's own
    client.create(model="plain-template", from_="tiny",
                  template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    r = client.chat(model="plain-template", messages=MESSAGES, options=GREEDY)
    assert r.prompt_eval_count == len(reference.tokenizer(MESSAGES[0]["content"] + "\n",
                                                          add_special_tokens=False)["input_ids"])
    client.delete("plain-template")
    time.sleep(0.2)
    line = [x for x in server.log().splitlines() if "POST /api/chat model=plain-template:latest" in x][-1]
    assert "status=200" in line and f"tokens={r.prompt_eval_count}+{r.eval_count}" in line and line.endswith("s")
