"""The server's one view of a runtime Engine: load, render a chat, generate with cancellation, embed.

Everything ``serve`` does with a model goes through :class:`Runner`. A GGUF model runs ``parallel``
sequences at once in one llama.cpp context (runtimes/llamacpp_batch.py: continuous batching, a prefix
cache per slot); ONNX and Core ML run one generation at a time (``lock``). Either way a request waits for
a slot in FIFO order, a waiting request whose client left gives up its place, and beyond ``max_queue``
waiting requests :meth:`Runner.admit` refuses with :class:`Busy` (503 + Retry-After).
"""

from __future__ import annotations

import gc
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


class Unsupported(EdgekitError):
    """The model cannot do what was asked (e.g. embeddings from an ONNX decoder)."""


class Busy(EdgekitError):
    """Every slot is taken and the queue is full: 503 with Retry-After."""

    def __init__(self, what: str, fix: str, retry_after: int) -> None:
        super().__init__(what, fix)
        self.retry_after = retry_after


DEFAULT_PARALLEL = 4     # GGUF sequences decoded together when --parallel is not given
DEFAULT_MAX_QUEUE = 64   # requests waiting for a slot before 503


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    sampling: Any                       # runtimes.sampling.SamplingParams
    stop: tuple[str, ...] = ()
    processors: list[Any] = field(default_factory=list)  # from Runner.constraint (JSON / JSON schema)
    cancelled: threading.Event = field(default_factory=threading.Event)


class _FairLock:
    """A FIFO lock whose waiters can give up (their client disconnected)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[object] = []
        self._owner: object | None = None

    def acquire(self, cancelled: threading.Event) -> bool:
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                while self._owner is not None or self._queue[0] is not me:
                    if cancelled.is_set():
                        return False
                    self._cond.wait(0.05)
                self._owner = me
                return True
            finally:
                self._queue.remove(me)
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._owner = None
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._queue)


class Runner:
    def __init__(self, artifact: Path, context: int | None = None, adapters: list[Path] = (),
                 parallel: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        import runtimes

        self.artifact = Path(artifact)
        self.adapters = list(adapters)
        if len(self.adapters) > 1:
            raise Unsupported("more than one LoRA adapter on a model", "merge them into one adapter")
        self.lora = self.adapters[0] if self.adapters else None
        self.batcher: Any = None
        self.max_queue = max(0, int(max_queue))
        if runtimes.artifact_kind(self.artifact) == "gguf":
            self._load_batched(context, parallel or DEFAULT_PARALLEL)
        else:
            self.engine = runtimes.load(self.artifact, context=context, lora=self.lora)
            self.context_length = self.engine.context_length
        self.kind = self.engine.kind
        self.slots = self.batcher.parallel if self.batcher is not None else 1
        self.lock = _FairLock()
        self._embedder: Any = None
        self._count = threading.Lock()
        self.admitted = 0          # requests between admit() and leave(): running or waiting for a slot
        self.rejected = 0          # 503s
        self.requests = 0
        self._seconds = 1.0        # moving average of a request's duration, for Retry-After
        self._running: set[threading.Event] = set()  # cancel events of the requests in generate()
        self._draining = False

    def _load_batched(self, context: int | None, parallel: int) -> None:
        """The GGUF engine (tokenizer, vocabulary, a small context of its own) plus the batched context of
        ``parallel`` x ``num_ctx`` cells, checked against the free memory first."""
        import runtimes
        from runtimes.llamacpp import DEFAULT_CONTEXT, trained_context
        from runtimes.llamacpp_batch import Batcher, check_memory

        train = trained_context(self.artifact)
        if context is not None and train and context > train:
            raise EdgekitError(f"num_ctx {context} exceeds the model's {train} positions",
                               f"pass num_ctx {train} or less")
        num_ctx = context or min(train or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        self.memory = check_memory(self.artifact, parallel, num_ctx)
        self.engine = runtimes.load(self.artifact, context=min(256, num_ctx), lora=self.lora)
        self.batcher = Batcher(self.engine, parallel, num_ctx)
        self.context_length = num_ctx

    # -- prompts ---------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, Any]], template: str | None = None) -> list[int]:
        """Token ids of ``messages`` rendered with ``template`` (Modelfile TEMPLATE) or the artifact's own."""
        from runtimes.chat import render

        template = template or self.engine.chat_template
        if not template:
            raise Unsupported("the model has no chat template", "add TEMPLATE to its Modelfile, or use /api/generate "
                                                                 "with raw: true")
        text = render(template, messages, bos_token=self.engine.bos_token, eos_token=self.engine.eos_token,
                      add_generation_prompt=True)
        return self.engine.tokenize(text, add_special=False)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.engine.tokenize(text, add_special=add_special)

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    @property
    def has_template(self) -> bool:
        return bool(self.engine.chat_template)

    def constraint(self, schema: dict[str, Any] | None, json_mode: bool) -> list[Any]:
        """Logits processors enforcing ``schema`` (or any JSON object with ``json_mode``); built before a
        request is queued so a bad schema is a 400, not an error in the middle of a stream."""
        if schema is None and not json_mode:
            return []
        from runtimes.constrain import JsonConstraint

        return [JsonConstraint(self.engine, schema)]

    # -- admission -------------------------------------------------------------------------------
    def admit(self) -> None:
        """Count a request in, or refuse it (Busy) when every slot is taken and ``max_queue`` already wait."""
        with self._count:
            waiting = self.admitted - self.slots
            if waiting >= self.max_queue:
                self.rejected += 1
                retry = max(1, math.ceil(self._seconds * (waiting + 1) / self.slots))
                raise Busy(f"the model is busy: {self.slots} running and {waiting} waiting (--max-queue "
                           f"{self.max_queue})", f"retry after {retry} s", retry)
            self.admitted += 1
            self.requests += 1

    def drain(self) -> None:
        """End every request in generate() at its next step, and any that arrives later at once."""
        with self._count:
            self._draining = True
            for event in self._running:
                event.set()

    def leave(self, seconds: float | None = None) -> None:
        with self._count:
            self.admitted = max(0, self.admitted - 1)
            if seconds is not None:
                self._seconds = 0.8 * self._seconds + 0.2 * seconds

    def stats(self) -> dict[str, Any]:
        """Requests, queue depth and (GGUF) the batcher's counters: tokens, prefix hits, KV cells."""
        with self._count:
            out = {"requests": self.requests, "admitted": self.admitted, "rejected": self.rejected,
                   "slots": self.slots, "max_queue": self.max_queue}
        if self.batcher is not None:
            out.update(self.batcher.snapshot())
            out["queue_depth"] = out["waiting"]
        else:
            out["queue_depth"] = self.lock.waiting
            out["active"] = int(self.lock._owner is not None)
        return out

    # -- generation ------------------------------------------------------------------------------
    def generate(self, req: Request, on_text: Callable[[str], None] | None = None) -> Any:
        """Run ``req`` to the end (or until ``req.cancelled``); returns runtimes.generate.Generation,
        or None when the request was cancelled while waiting for the model."""
        with self._count:
            self._running.add(req.cancelled)
            if self._draining:
                req.cancelled.set()
        try:
            return self._generate(req, on_text)
        finally:
            with self._count:
                self._running.discard(req.cancelled)

    def _generate(self, req: Request, on_text: Callable[[str], None] | None) -> Any:
        from runtimes.generate import generate

        if self.batcher is not None:
            return self._generate_batched(req, on_text)
        if not self.lock.acquire(req.cancelled):
            return None
        try:
            room = self.context_length - len(req.prompt)
            if room <= 0:
                raise EdgekitError(f"the prompt has {len(req.prompt)} tokens, the context holds {self.context_length}",
                                   "shorten the prompt, or raise num_ctx")
            return generate(self.engine, req.prompt, req.sampling, max_tokens=min(req.max_tokens, room),
                            stop=req.stop, on_text=on_text, processors=req.processors, cancel=req.cancelled.is_set)
        finally:
            self.lock.release()

    def _generate_batched(self, req: Request, on_text: Callable[[str], None] | None) -> Any:
        from runtimes.generate import Generation, generate
        from runtimes.llamacpp_batch import Cancelled

        room = self.context_length - len(req.prompt)
        if room <= 0:
            raise EdgekitError(f"the prompt has {len(req.prompt)} tokens, the context holds {self.context_length}",
                               "shorten the prompt, or raise num_ctx")
        seq = self.batcher.open(req.prompt, req.cancelled)
        if seq is None:
            return None
        try:
            if not req.processors:  # the batch loop samples: no hand-off to this thread between steps
                return seq.run(req.prompt, req.sampling, max_tokens=min(req.max_tokens, room), stop=req.stop,
                               on_text=on_text, cancel=req.cancelled.is_set)
            return generate(seq, req.prompt, req.sampling, max_tokens=min(req.max_tokens, room), stop=req.stop,
                            on_text=on_text, processors=req.processors, cancel=req.cancelled.is_set)
        except Cancelled:  # left the batch at a step boundary; the text so far was streamed already
            return Generation(prompt_tokens=len(req.prompt), finish_reason="cancelled")
        finally:
            seq.close()

    # -- embeddings ------------------------------------------------------------------------------
    def embed(self, texts: list[str], truncate: bool = True, cancelled: threading.Event | None = None
              ) -> tuple[list[list[float]], int]:
        """L2-normalised embeddings of ``texts`` and the number of prompt tokens. GGUF only: llama.cpp's
        embeddings with the model's own pooling (mean where the GGUF declares none)."""
        if self.kind != "gguf":
            raise Unsupported(f"{self.kind} models do not give embeddings here",
                              "use a GGUF model for /api/embed and /v1/embeddings")
        cancelled = cancelled or threading.Event()
        if not self.lock.acquire(cancelled):
            return [], 0
        try:
            # on the batch loop's thread, between two steps: llama.cpp computes in one thread only (one OpenMP
            # pool; runtimes/llamacpp_batch.py says why)
            llm = self.batcher.call(self._embedding_model)
            out, count = [], 0
            for text in texts:
                n = len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
                if n > llm.n_ctx() and not truncate:
                    raise EdgekitError(f"the input has {n} tokens, the context holds {llm.n_ctx()}",
                                       "shorten it, or pass truncate: true")
                if cancelled.is_set():
                    break
                vectors, used = self.batcher.call(
                    lambda text=text: llm.embed(text, normalize=False, truncate=True, return_count=True))
                vector = np.asarray(vectors, dtype=np.float64)
                if vector.ndim == 2:  # a model without pooling gives one vector per token
                    vector = vector.mean(axis=0)
                norm = float(np.linalg.norm(vector))
                out.append((vector / norm if norm > 0 else vector).tolist())
                count += used
            return out, count
        finally:
            self.lock.release()

    def _embedding_model(self) -> Any:
        if self._embedder is None:
            import llama_cpp

            kwargs = {}
            pooling = self._gguf_pooling()
            if pooling is None:
                kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            # pooling needs a whole input in one micro-batch; 2048 tokens bounds the compute buffer
            n = min(self.context_length, 2048)
            self._embedder = llama_cpp.Llama(str(self.engine.path), embedding=True, n_ctx=n, n_batch=n, n_ubatch=n,
                                             n_threads=getattr(self.engine, "threads", None), verbose=False,
                                             lora_path=str(self.lora) if self.lora else None, **kwargs)
        return self._embedder

    def _gguf_pooling(self) -> int | None:
        meta = self.engine.llm.metadata
        value = next((v for k, v in meta.items() if k.endswith(".pooling_type")), None)
        return int(value) if value not in (None, "0") else None

    # -- lifetime --------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.admitted > 0 or self.lock._owner is not None or self.lock.waiting > 0

    def close(self) -> None:
        for obj in (self.batcher, self._embedder, self.engine):
            if obj is not None and hasattr(obj, "close"):
                try:
                    obj.close()
                except Exception:  # closing must not fail an unload
                    pass
        self._embedder = None
        self.engine = self.batcher = None
        gc.collect()
        _trim_heap()


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise, and RSS would not drop)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass
