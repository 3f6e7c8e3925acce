"""Malformed and hostile requests get the right status and an ``{"error": ...}`` body, and the server
keeps serving: bad JSON, wrong types, a 100 MB body, names that would escape the store, a missing or
wrong API key, unknown routes, a model whose blob was deleted behind the server's back; then a bounded
schemathesis run over the server's own OpenAPI document (loopback only)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_support import ROOT, serving, shared_artifacts, store_models

ESCAPES = ["../evil", "../../etc/passwd", "/etc/passwd", "a/../../b", "..", "a\x00b", "x" * 300, "a/b/c", "a:b:c",
           ".hidden", "tiny:../x", "C:\\windows"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    arts = shared_artifacts(tmp_path_factory)
    base = tmp_path_factory.mktemp("hostile")
    home = base / "home"
    store_models(home, arts)
    # a model whose only unique blob is its generation_config.json: deleting that blob damages it alone
    victim = base / "victim-onnx"
    shutil.copytree(arts["onnx"], victim)
    gen = victim / "generation_config.json"
    gen.write_text(gen.read_text().rstrip() + "\n\n")
    from edgekit.serve import build
    from edgekit.serve.modelfile import parse
    from edgekit.serve.store import Store

    build.create(Store(home), "victim", parse(f"FROM {victim}\n"), progress=False)
    with serving(home) as server:
        yield server, home
    assert "Traceback" not in server.log(), server.log()


def alive(server) -> None:
    r = httpx.get(server.url + "/api/tags", timeout=30)
    assert r.status_code == 200 and "models" in r.json()


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert isinstance(body, dict) and "error" in body, r.text
    err = body["error"]
    return err["message"] if isinstance(err, dict) else err


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/show", "/api/create", "/v1/chat/completions",
                                  "/v1/embeddings"])
def test_bad_json(env, path):
    server, _ = env
    for body in (b"{not json", b"", b"[1, 2", b"\xff\xfe", b"null", b'"a string"'):
        r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (body, r.status_code, r.text)
        error_of(r)
    if path.startswith("/v1/"):
        assert isinstance(r.json()["error"], dict) and r.json()["error"]["message"]  # OpenAI's shape
    alive(server)


@pytest.mark.parametrize("body", [
    {"model": 5, "messages": []},
    {"model": "tiny", "messages": "hello"},
    {"model": "tiny", "messages": [{"role": "user", "content": 7}]},
    {"model": "tiny", "messages": [{"content": "no role"}]},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"temperature": "hot"}},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"temperature": -1}},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"top_p": 2}},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": 0}},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": 10 ** 9}},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"stop": [1, 2]}},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "keep_alive": "soon"},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "format": "yaml"},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "format": {"type": 12}},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "maybe"},
])
def test_wrong_types_and_values_are_400(env, body):
    server, _ = env
    r = httpx.post(server.url + "/api/chat", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert error_of(r)
    alive(server)


def test_wrong_types_openai_and_generate(env):
    server, _ = env
    cases = [("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}),
             ("/v1/chat/completions", {"model": "tiny", "messages": [], "max_tokens": 5}),
             ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                       "max_tokens": -5}),
             ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                       "response_format": {"type": "xml"}}),
             ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}),
             ("/api/generate", {"model": "tiny", "prompt": "x", "context": [10 ** 9]}),
             ("/api/generate", {"model": "tiny", "prompt": "x", "context": [-1]}),
             ("/api/embed", {"model": "tiny", "input": 5})]
    for path, body in cases:
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert r.status_code == 400, (path, body, r.text)
        error_of(r)
    alive(server)


def _send_declared(url: str, total: int) -> tuple[int, int]:
    """POST ``total`` declared bytes over a raw socket, 1 MB at a time, until the server answers or closes;
    returns (status, bytes sent). Bounded: never more than ``total`` bytes, 30 s."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {total}\r\n\r\n".encode())
    sent, chunk = 0, b" " * (1 << 20)
    sock.setblocking(False)
    response = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            response += sock.recv(65536)
            if b"\r\n\r\n" in response:
                break
        except BlockingIOError:
            pass
        except OSError:
            break
        if sent < total:
            try:
                sent += sock.send(chunk[:total - sent])
            except (BlockingIOError, InterruptedError):
                time.sleep(0.01)
            except OSError:  # the server closed after answering
                sock.setblocking(True)
                response += sock.recv(65536)
                break
        else:
            time.sleep(0.01)
    sock.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1") else 0
    return status, sent


def test_100mb_body_is_413(env):
    server, _ = env
    status, sent = _send_declared(server.url, 100 << 20)
    assert status == 413 and sent < 100 << 20  # refused on the header, before the body was read
    big = b" " * (1 << 20)

    def chunks():  # no Content-Length: chunked; refused once past the limit
        for _ in range(100):
            yield big

    try:
        r = httpx.post(server.url + "/api/chat", content=chunks(), headers={"content-type": "application/json"},
                       timeout=60)
        assert r.status_code == 413 and "body" in error_of(r)
    except httpx.TransportError:
        pass  # the server may close while the client still sends; it must still be serving:
    alive(server)


def test_escaping_names_refused_everywhere(env):
    server, home = env
    outside = home.parent
    before = sorted(p.name for p in outside.iterdir())
    for name in ESCAPES:
        requests = [("POST", "/api/show", {"model": name}), ("DELETE", "/api/delete", {"model": name}),
                    ("POST", "/api/copy", {"source": "tiny", "destination": name}),
                    ("POST", "/api/copy", {"source": name, "destination": "ok-name"}),
                    ("POST", "/api/create", {"model": name, "from": "tiny", "stream": False}),
                    ("POST", "/api/create", {"model": "ok-name", "from": name, "stream": False}),
                    ("POST", "/api/chat", {"model": name, "messages": [{"role": "user", "content": "x"}]}),
                    ("POST", "/api/pull", {"model": name, "stream": False})]
        for method, path, body in requests:
            r = httpx.request(method, server.url + path, json=body, timeout=60)
            assert r.status_code in (400, 404), (name, path, r.status_code, r.text)
            error_of(r)
    for path in ("../../x", "/etc/passwd", "a\x00b"):
        r = httpx.post(server.url + "/api/create", json={"model": "files", "files": {path: "sha256:" + "0" * 64},
                                                         "stream": False})
        assert r.status_code == 400, r.text
    for digest in ("..%2F..%2Fetc%2Fpasswd", "sha256:../../x", "sha256-" + "0" * 63 + "G"):
        r = httpx.post(server.url + f"/api/blobs/{digest}", content=b"x")
        assert r.status_code in (400, 404), r.text
    assert sorted(p.name for p in outside.iterdir()) == before
    names = {m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]}
    assert "ok-name:latest" not in names and "files:latest" not in names
    alive(server)


def test_unknown_route_and_method(env):
    server, _ = env
    for method, path in (("GET", "/api/nothing"), ("POST", "/v1/nothing"), ("GET", "/api/chat"),
                         ("PUT", "/api/tags")):
        r = httpx.request(method, server.url + path)
        assert r.status_code in (404, 405) and error_of(r), (method, path, r.text)
    r = httpx.post(server.url + "/api/chat", json={"model": "no-such-model", "messages": [{"role": "user",
                                                                                             "content": "x"}]})
    assert r.status_code == 404 and "not found" in error_of(r)
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "no-such", "messages": [{"role": "user",
                                                                                                  "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["message"]
    alive(server)


def test_model_with_deleted_blob(env):
    server, home = env
    from edgekit.serve.store import Store

    store = Store(home)
    victim, other = store.read("victim"), store.read("tiny-onnx")
    unique = {x["digest"] for x in victim["layers"]} - {x["digest"] for x in other["layers"]}
    assert len(unique) == 1
    store.blob_path(unique.pop()).unlink()  # behind the server's back
    r = httpx.post(server.url + "/api/chat", json={"model": "victim", "messages": [{"role": "user", "content": "x"}],
                                                   "stream": False}, timeout=60)
    assert r.status_code == 404 and "missing" in error_of(r)
    r = httpx.post(server.url + "/api/chat", json={"model": "tiny-onnx", "stream": False, "options": {"num_predict": 2},
                                                   "messages": [{"role": "user", "content": "x"}]}, timeout=60)
    assert r.status_code == 200 and r.json()["done"]
    alive(server)


def test_api_key(tmp_path, tmp_path_factory):
    arts = shared_artifacts(tmp_path_factory)
    home = tmp_path / "home"
    store_models(home, arts)
    with serving(home, "--api-key", "s3cret") as server:
        assert httpx.head(server.url + "/").status_code == 200  # the liveness probe stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            for method, path in (("GET", "/api/tags"), ("POST", "/api/chat"), ("GET", "/v1/models"),
                                 ("GET", "/openapi.json"), ("GET", "/")):
                r = httpx.request(method, server.url + path, headers=headers)
                assert r.status_code == 401 and error_of(r), (headers, path)
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(server.url + "/api/tags", headers=good).status_code == 200
        import ollama
        import openai

        assert ollama.Client(host=server.url, headers=good).list().models
        assert openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret").models.list().data
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
        # no CORS headers unless --origins
        r = httpx.options(server.url + "/api/tags", headers={"Origin": "http://evil.example",
                                                             "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in r.headers
    with serving(home, "--origins", "http://app.example") as server:
        r = httpx.options(server.url + "/api/tags", headers={"Origin": "http://app.example",
                                                             "Access-Control-Request-Method": "GET"})
        assert r.headers.get("access-control-allow-origin") == "http://app.example"
        r = httpx.get(server.url + "/api/tags", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.slow
def test_schemathesis_fuzz(tmp_path, tmp_path_factory):
    """Schema-driven fuzzing of every route in /openapi.json: bounded to 8 examples per operation and 60 s,
    loopback only. No 5xx, every error has an "error" key, and the server still serves afterwards."""
    arts = shared_artifacts(tmp_path_factory)
    home = tmp_path / "home"
    store_models(home, arts)
    with serving(home) as server:
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "serve_fuzz_hooks",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}
        exe = Path(sys.executable).with_name("schemathesis")
        proc = subprocess.run([str(exe), "run", server.url + "/openapi.json", "--checks",
                               "not_a_server_error,error_has_error_key", "--max-examples", "8", "--max-time", "60",
                               "--workers", "1", "--request-timeout", "60", "--generation-database", "none",
                               "--seed", "1", "--no-color", "--phases", "examples,coverage,fuzzing"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert " passed" in proc.stdout and "failed" not in proc.stdout.split("SUMMARY")[-1]
        alive(server)
        import ollama

        assert ollama.Client(host=server.url).chat(model="tiny-onnx", messages=[{"role": "user", "content": "x"}],
                                                   options={"num_predict": 2}).done
        assert "Traceback" not in server.log(), server.log()[-3000:]
