"""One generation request from the routes' side: acquire the model, build the prompt, run the Runner in a
worker thread, hand text to the event loop as it comes, and let go of the model when the worker is done.

A client that disconnects mid-stream closes the response's async generator; its ``finally`` sets the
request's cancel event, which the generation loop checks before every token, and the model is released
(for the next queued request, or for keep_alive) from the worker's completion callback: no await is
needed in a cancelled scope, so nothing can block the release.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.serve.engine import Request, Runner
from edgekit.serve.models import Loaded, Models
from edgekit.serve.options import Resolved


@dataclass
class Outcome:
    generation: Any                 # runtimes.generate.Generation (None if cancelled while queued)
    prompt: list[int]
    load_seconds: float
    total_seconds: float
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done_reason(self) -> str:
        g = self.generation
        if g is None or g.finish_reason == "cancelled":
            return "cancelled"
        return "stop" if g.finish_reason == "stop" else "length"


class Job:
    def __init__(self, models: Models, loaded: Loaded, request: Request, keep_alive: Any, state: dict) -> None:
        self.models, self.loaded, self.request, self.keep_alive, self.state = models, loaded, request, keep_alive, state
        self.started = time.perf_counter()
        self.load_seconds = 0.0

    @classmethod
    async def start(cls, models: Models, name: str, build_prompt: Callable[[Runner, dict], list[int]],
                    opts: Resolved, schema: dict | None, json_mode: bool, keep_alive: Any, state: dict) -> Job:
        t0 = time.perf_counter()
        loaded = await models.acquire(name, opts.num_ctx)
        state["model"] = loaded.name
        try:
            loaded.runner.admit()
        except BaseException:
            models.release(loaded, keep_alive)
            raise
        try:
            prompt = build_prompt(loaded.runner, loaded.manifest.get("config", {}))
            if not prompt:
                from edgekit.errors import EdgekitError

                raise EdgekitError("the prompt is empty", "send some text")
            processors = await asyncio.get_running_loop().run_in_executor(
                models.executor, loaded.runner.constraint, schema, json_mode)
            request = Request(prompt, opts.max_tokens, opts.sampling, opts.stop, processors)
            if models.draining:
                request.cancelled.set()
        except BaseException:
            loaded.runner.leave()
            models.release(loaded, keep_alive)
            raise
        job = cls(models, loaded, request, keep_alive, state)
        job.load_seconds = time.perf_counter() - t0
        return job

    def _launch(self, on_text: Callable[[str], None] | None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.models.executor, lambda: self.loaded.runner.generate(self.request, on_text))

        def done(fut: asyncio.Future) -> None:
            self.loaded.runner.leave(time.perf_counter() - self.started)
            self.models.release(self.loaded, self.keep_alive)
            if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                g = fut.result()
                self.state["tokens"] = (g.prompt_tokens, g.eval_count)

        future.add_done_callback(done)
        self.state["pending"] = future
        return future

    def _outcome(self, generation: Any) -> Outcome:
        return Outcome(generation, self.request.prompt, self.load_seconds, time.perf_counter() - self.started,
                       generation.text if generation is not None else "")

    async def result(self) -> Outcome:
        """The whole answer (non-streamed requests)."""
        future = self._launch(None)
        try:
            return self._outcome(await asyncio.shield(future))
        except asyncio.CancelledError:
            self.request.cancelled.set()
            self.state["cancelled"] = True
            raise

    async def stream(self) -> AsyncIterator[str | Outcome]:
        """Text pieces as they come, then the Outcome; raises what the worker raised."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_text(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        future = self._launch(on_text)
        future.add_done_callback(lambda _: queue.put_nowait(None))
        finished = False
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield item
            finished = True
            while not queue.empty():  # text queued after the end marker cannot happen, but keep order if it did
                item = queue.get_nowait()
                if item is not None:
                    yield item
            yield self._outcome(future.result())
        finally:
            if not finished:
                self.request.cancelled.set()  # the client left: stop generating before the next token
                self.state["cancelled"] = True
