"""Shared by tests/test_serve_*.py: edgekit-tiny artifacts converted once per session, a store filled
with them, and a live ``edgekit serve`` subprocess on a free 127.0.0.1 port with a temporary
EDGEKIT_HOME, stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, home: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python -m edgekit.cli ARGS`` with this checkout's code and EDGEKIT_HOME=home."""
    env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout, **kwargs)


def artifacts(base: Path) -> dict[str, Path]:
    """edgekit-tiny as GGUF f32 and ONNX fp32 (fp32 both: greedy output is compared with transformers),
    converted once per session into ``base`` (reused when another test module asks again)."""
    from edgekit.models import tiny_path

    out = {"gguf": base / "tiny-f32.gguf", "onnx": base / "tiny-onnx"}
    if not out["gguf"].exists():
        proc = cli("convert", str(tiny_path()), "--to", "gguf", "--outtype", "f32", "-o", str(out["gguf"]),
                   home=base / "unused-home")
        assert proc.returncode == 0, proc.stderr
    if not out["onnx"].exists():
        proc = cli("convert", str(tiny_path()), "--to", "onnx", "-o", str(out["onnx"]), home=base / "unused-home")
        assert proc.returncode == 0, proc.stderr
    return out


def shared_artifacts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.getbasetemp() / "serve-artifacts"
    base.mkdir(exist_ok=True)
    return artifacts(base)


def write_modelfile(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``edgekit serve``; ``url``, ``pid``, ``log()`` (its stderr so far), ``stop()``."""

    def __init__(self, home: Path, *args: str, env: dict | None = None) -> None:
        self.home = home
        self.log_path = home.parent / f"serve-{time.monotonic_ns()}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(ROOT), **(env or {})}
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", "--port", str(self.port), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgekit serve exited: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.head(self.url + "/", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"edgekit serve did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()


@contextlib.contextmanager
def serving(home: Path, *args: str, env: dict | None = None) -> Iterator[Server]:
    server = Server(home, *args, env=env)
    try:
        yield server
    finally:
        server.stop()


def store_models(home: Path, arts: dict[str, Path]) -> None:
    """``tiny`` (GGUF) and ``tiny-onnx`` (ONNX) in the store at ``home``, created in-process."""
    from edgekit.serve import build
    from edgekit.serve.modelfile import parse
    from edgekit.serve.store import Store

    store = Store(home)
    build.create(store, "tiny", parse(f"FROM {arts['gguf']}\n"), progress=False)
    build.create(store, "tiny-onnx", parse(f"FROM {arts['onnx']}\n"), progress=False)


def ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def replay(engine, prompt: list[int], params, served: list[int] | str, max_tokens: int, tol: float = 1e-3) -> int:
    """Check that ``served`` (the generated ids, or their text) is what ``params`` sample after ``prompt`` on the
    single-sequence ``engine``, up to float noise; returns the number of steps where it took another token than
    that engine does, each one a near-tie. Fails at the first step no near-tie explains.

    A batch of several sequences is summed in another order than one sequence alone (edgekit-tiny f32: logits
    differ by ~3e-5); where two tokens' logits (greedy), or the seeded draw and a boundary of the cumulative
    probabilities (sampled), are closer than ``tol``, either token is right, and which one a CPU's kernels give
    is not ours to pin (the smallest top-2 gap in the batching test's greedy runs is 1.3e-4).
    The draw is replayed as ``Sampler`` makes it: ``Generator.choice`` takes one ``random()`` per step and
    searches the normalised cumulative probabilities with it.
    """
    import numpy as np

    from runtimes.generate import REPLACEMENT, StreamDecoder
    from runtimes.sampling import apply_penalties, distribution

    def text_of(ids: list[int]) -> str:
        stream = StreamDecoder(engine.detokenize, prompt)
        return "".join(stream.push(t) for t in ids) + stream.flush()

    rng = np.random.default_rng(params.seed)
    engine.reset()
    logits = engine.prefill(prompt)
    history, gen, deviations = list(prompt), [], 0
    for step in range(max_tokens):
        if params.greedy:
            x = apply_penalties(np.asarray(logits, dtype=np.float32), history, params)
            own = int(np.argmax(x))
            near = np.flatnonzero(x >= x[own] - tol)
            near = near[np.argsort(-x[near], kind="stable")]
        else:
            ids, probs = distribution(logits, history, params)
            cdf = np.cumsum(probs)
            cdf /= cdf[-1]
            u = rng.random()
            own = int(ids[np.searchsorted(cdf, u, side="right")])
            lo = np.concatenate([[0.0], cdf[:-1]])
            near = ids[(lo - tol <= u) & (u <= cdf + tol)]
        allowed = [own, *(int(t) for t in near if t != own)]
        if isinstance(served, str):
            so_far = text_of(gen)
            pick = next((t for t in allowed if (t in engine.eos_ids and so_far == served) or
                         (t not in engine.eos_ids and served.startswith(text_of([*gen, t]).rstrip(REPLACEMENT)))),
                        None)
        else:
            want = served[step] if step < len(served) else None
            pick = next((t for t in allowed if t == want or (want is None and t in engine.eos_ids)), None)
        assert pick is not None, (f"step {step}: served {served!r} took a token no near-tie explains "
                                  f"(engine: {own}, within {tol}: {allowed})")
        if pick in engine.eos_ids:
            break
        deviations += pick != own
        gen.append(pick)
        history.append(pick)
        if len(gen) < max_tokens:
            logits = engine.decode(pick)
    assert (text_of(gen) if isinstance(served, str) else gen) == served
    return deviations
