"""Which models are loaded, for how long: load on first use, unload after keep_alive, evict the least
recently used beyond ``max_loaded``. All bookkeeping runs on the event loop thread; loading and
unloading run in worker threads so the server keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.serve.engine import Runner
from edgekit.serve.store import ModelDamaged, Store

FOREVER = None
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: Any, default: float | None) -> float | None:
    """Seconds to keep a model after a request: Go durations ("5m", "1h30m", "-1s"), plain numbers as
    seconds (Ollama's rule); negative means forever (None), 0 unloads at once."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise EdgekitError("keep_alive must be a duration such as 5m or a number of seconds", "fix keep_alive")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise EdgekitError(f"keep_alive {value[:40]!r} is not a duration",
                                   "use e.g. 5m, 30s, 1h, 0 or -1") from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise EdgekitError("keep_alive must be a duration such as 5m or a number of seconds", "fix keep_alive")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise EdgekitError("keep_alive must be finite", "use -1 to keep the model loaded")
    return None if seconds < 0 else seconds


@dataclass
class Loaded:
    name: str
    digest: str
    manifest: dict[str, Any]
    runner: Runner
    size: int
    context: int | None                  # num_ctx it was loaded with (None: the default)
    keep_alive: float | None
    expires_at: float | None = None      # time.time(); None while in use or kept forever
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0
    load_seconds: float = 0.0

    def expiry_iso(self) -> str:
        if self.expires_at is None:
            if self.keep_alive is None:
                return "9999-12-31T23:59:59Z"
            return _iso(time.time() + self.keep_alive)
        return _iso(self.expires_at)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


class Models:
    def __init__(self, store: Store, keep_alive: float | None = 300.0, max_loaded: int = 2,
                 parallel: int | None = None, max_queue: int | None = None) -> None:
        from edgekit.serve.engine import DEFAULT_MAX_QUEUE

        self.store = store
        self.parallel = parallel
        self.max_queue = DEFAULT_MAX_QUEUE if max_queue is None else max_queue
        self.default_keep_alive = keep_alive
        self.max_loaded = max(1, max_loaded)
        self.loaded: dict[str, Loaded] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        # generation, loading and embedding threads; roomy so requests queued on one model never starve another
        self.executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="edgekit-worker")
        self._reaper: asyncio.Task | None = None
        self.draining = False  # shutting down: requests still being set up end at once

    # -- resolving -------------------------------------------------------------------------------
    def manifest(self, name: str) -> dict[str, Any]:
        """The manifest of ``name`` with every blob present (ModelNotFound / ModelDamaged otherwise)."""
        manifest = self.store.read(name)
        missing = self.store.missing_blobs(manifest)
        if missing:
            raise ModelDamaged(f"model '{manifest['name']}' is damaged: blob {missing[0]} is missing from the store",
                               f"re-create it, or remove it with edgekit rm {manifest['name']}")
        return manifest

    async def acquire(self, name: str, context: int | None = None) -> Loaded:
        """The loaded model for ``name`` (loading it if needed); the caller must :meth:`release` it."""
        loop = asyncio.get_running_loop()
        try:
            manifest = self.manifest(name)
        except ModelDamaged:
            self._forget(name)
            raise
        key = manifest["name"]
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            current = self.loaded.get(key)
            if current is not None and (current.digest != manifest["digest"] or
                                        (context is not None and context != current.context)):
                # re-created, or asked for another context size: reload once nobody uses it
                while current.users > 0:
                    await asyncio.sleep(0.02)
                await self._unload(current)
                current = None
            if current is None:
                await self._make_room(loop)
                started = time.perf_counter()
                ctx = context or (manifest.get("config", {}).get("parameters") or {}).get("num_ctx")
                artifact = self.store.artifact(manifest)
                adapters = self.store.adapter_paths(manifest)
                runner = await loop.run_in_executor(
                    self.executor, lambda: Runner(artifact, ctx, adapters, self.parallel, self.max_queue))
                current = Loaded(key, manifest["digest"], manifest, runner, self.store.size(manifest), context,
                                 self.default_keep_alive, load_seconds=time.perf_counter() - started)
                self.loaded[key] = current
            current.users += 1
            current.expires_at = None
            current.last_used = time.monotonic()
            current.manifest = manifest
            return current

    def release(self, loaded: Loaded, keep_alive: float | None | str = "default") -> None:
        """Done with ``loaded``; it stays for ``keep_alive`` seconds after its last user (None: forever)."""
        if keep_alive != "default":
            loaded.keep_alive = keep_alive  # type: ignore[assignment]
        loaded.users = max(0, loaded.users - 1)
        loaded.last_used = time.monotonic()
        if loaded.users == 0:
            if loaded.keep_alive is None:
                loaded.expires_at = None
            else:
                loaded.expires_at = time.time() + loaded.keep_alive
                if loaded.keep_alive == 0:
                    asyncio.get_running_loop().create_task(self._unload_if_idle(loaded))

    async def unload(self, name: str) -> bool:
        loaded = self.loaded.get(name)
        if loaded is None:
            return False
        loaded.keep_alive = 0
        if loaded.users == 0:
            await self._unload(loaded)
        return True

    def _forget(self, name: str) -> None:
        with_name = self.loaded.get(name)
        if with_name is not None and with_name.users == 0:
            asyncio.get_running_loop().create_task(self._unload_if_idle(with_name))

    async def _unload_if_idle(self, loaded: Loaded) -> None:
        if loaded.users == 0 and self.loaded.get(loaded.name) is loaded:
            await self._unload(loaded)

    async def _unload(self, loaded: Loaded) -> None:
        if self.loaded.get(loaded.name) is loaded:
            del self.loaded[loaded.name]
        runner = loaded.runner
        await asyncio.get_running_loop().run_in_executor(self.executor, runner.close)

    async def _make_room(self, loop: asyncio.AbstractEventLoop) -> None:
        while len(self.loaded) >= self.max_loaded:
            idle = [x for x in self.loaded.values() if x.users == 0]
            if not idle:  # every loaded model is busy: wait for one to finish rather than exceed the limit
                await asyncio.sleep(0.05)
                continue
            await self._unload(min(idle, key=lambda x: x.last_used))

    # -- housekeeping ------------------------------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.time()
            for loaded in list(self.loaded.values()):
                if loaded.users == 0 and loaded.expires_at is not None and loaded.expires_at <= now:
                    await self._unload(loaded)

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for loaded in list(self.loaded.values()):
            await self._unload(loaded)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def drain(self) -> None:
        """Stop every running and queued generation at its next step (shutdown); thread-safe."""
        self.draining = True
        for loaded in list(self.loaded.values()):
            loaded.runner.drain()

    def ps(self) -> list[dict[str, Any]]:
        out = []
        for loaded in sorted(self.loaded.values(), key=lambda x: -x.last_used):
            out.append({"name": loaded.name, "model": loaded.name, "digest": loaded.digest.split(":")[-1],
                        "size": loaded.size, "size_vram": 0, "expires_at": loaded.expiry_iso(),
                        "context_length": loaded.runner.context_length, "users": loaded.users,
                        "format": loaded.manifest.get("format"), "serving": loaded.runner.stats()})
        return out
