"""Continuous batching on llama.cpp: N sequences in one context, one ``llama_decode`` per step.

A loop thread owns the context (every call into it happens there). Each step it builds one ``llama_batch``
holding the next token of every decoding sequence and chunks of newly arrived prompts (each token tagged
with its sequence's ``seq_id``), runs ``llama_decode`` once and hands each sequence the logits of its last
token (``llama_get_logits_ith``). Requests join and leave between steps; nobody waits for a batch to drain.

A request without logits processors samples in the loop (:meth:`Sequence.run`): right after
``llama_decode`` the loop calls the request's own ``Sampler`` on its logits row read in place and feeds the token
at the next step, with no hand-off to the request thread between steps; the request thread only turns the
tokens it is sent into text (stream decoding, stop strings, streaming) while the next step runs. A request with
processors (JSON constraints, Python-heavy) runs the shared generation loop (runtimes/generate.py) in its own
thread against a :class:`Sequence`: an Engine whose ``prefill`` / ``decode`` submit tokens to the loop and wait
for the step. Either way the sampler, its seeded draws and the stop logic are the single client's, and every row
of a llama.cpp batch is computed independently of the others, so a request draws the same tokens alone or
among seven.

Slots keep their tokens after a request ends (prefix cache): a new request takes the free slot whose
cached tokens share the longest prefix with its prompt and only the rest is evaluated (the slot's tail is
dropped with ``llama_memory_seq_rm``). A cancelled request's cells are removed at the start of the next step.
The KV cache is not unified (``kv_unified=False``): each slot owns ``num_ctx`` cells, as llama-server's do.

Every llama.cpp computation of the server runs on the loop thread, other contexts' too (:meth:`Batcher.call`, e.g.
embeddings): llama.cpp's CPU backend runs on OpenMP, and libgomp keeps a thread pool per calling thread; once a
second thread has computed, the process holds more OpenMP threads than CPUs and libgomp's barriers stop spinning
and sleep on a futex after 100 spins, which slowed every later batch step by a third or more for good.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence as Seq
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from runtimes.engine import common_prefix
from runtimes.generate import Generation, TokenText
from runtimes.sampling import Sampler, SamplingParams

STRAGGLER_WAIT = 0.02  # seconds a step waits for sequences that just got logits to send their next token
BATCH_TOKENS = 512     # tokens per step (decode tokens first, then prompt chunks, first come first served)


class Cancelled(Exception):
    """The request's cancel event was set; its sequence left the batch."""


@dataclass
class Stats:
    requests: int = 0             # sequences started
    finished: int = 0
    cancelled: int = 0            # sequences removed because their client left
    cancel_lag_steps: int = 0     # most decode steps a cancelled sequence was still part of after its cancel
    prompt_tokens: int = 0
    prompt_evaluated: int = 0     # prompt tokens run through the model
    prompt_reused: int = 0        # prompt tokens taken from a slot's cache
    prefix_hits: int = 0          # requests that reused at least one cached token
    generated: int = 0            # tokens decoded after a prompt
    steps: int = 0                # llama_decode calls
    batch_tokens: int = 0         # tokens over all steps
    kv_cells: int = 0             # cells in use over all slots (llama_memory_seq_pos_max), after the last step
    active: int = 0
    waiting: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Slot:
    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.tokens: list[int] = []   # tokens whose K/V sit in this sequence's cells, in position order
        self.owner: Sequence | None = None
        self.last_used = 0.0


class Sequence:
    """One request's view of the batch: the subset of the Engine interface that the generation loop uses."""

    kind = "gguf"

    def __init__(self, batcher: Batcher, slot: _Slot, cancelled: threading.Event) -> None:
        self._b, self.slot, self.cancelled = batcher, slot, cancelled
        engine = batcher.engine
        self.context_length = batcher.num_ctx
        self.vocab_size, self.eos_ids = engine.vocab_size, engine.eos_ids
        self.detokenize = engine.detokenize
        self.evaluated_last = self.reused_last = 0
        self.pending: list[int] = []      # tokens the loop still has to feed
        self.trim: int | None = None      # drop the slot's cells from this position before feeding
        self.logits: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lag = 0                      # steps this sequence ran after its cancel was set
        self.submitted = 0.0
        # sampling in the loop (run()): the loop samples and feeds; tokens reach the request thread by ``out``
        self.sampler: Sampler | None = None
        self.history: list[int] = []      # prompt + sampled tokens (the sampler's penalty window)
        self.room = 0                     # tokens the loop may still sample (eos not counted)
        self.stopped = False              # the loop feeds no more tokens (eos, max_tokens, full, or the text said so)
        self.out: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
        self.closing = False              # close() came while a token of ours was in the running step

    @property
    def n_tokens(self) -> int:
        return len(self.slot.tokens) + len(self.pending)

    def prefill(self, tokens: Seq[int]) -> np.ndarray:
        tail, keep = self._prompt(tokens)
        return self._submit(tail, trim=keep)

    def _prompt(self, tokens: Seq[int]) -> tuple[list[int], int]:
        """The tokens to evaluate after the slot's cached prefix, and the prefix length kept (counted)."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise EdgekitError("empty prompt", "give at least one token of prompt")
        if len(tokens) > self.context_length:
            raise EdgekitError(f"the prompt has {len(tokens)} tokens, a slot holds {self.context_length}",
                               "shorten the prompt, or raise num_ctx")
        keep = common_prefix(self.slot.tokens, tokens)
        if keep == len(tokens):  # the last token's logits are gone: run it again
            keep -= 1
        b = self._b
        with b.cond:
            b.stats.prompt_tokens += len(tokens)
            b.stats.prompt_reused += keep
            b.stats.prompt_evaluated += len(tokens) - keep
            b.stats.prefix_hits += keep > 0
        self.evaluated_last, self.reused_last = len(tokens) - keep, keep
        return tokens[keep:], keep

    def decode(self, token: int) -> np.ndarray:
        if self.n_tokens + 1 > self.context_length:
            raise EdgekitError(f"the slot's {self.context_length} tokens are full", "raise num_ctx")
        self.evaluated_last, self.reused_last = 1, self.n_tokens
        with self._b.cond:
            self._b.stats.generated += 1
        return self._submit([int(token)])

    def truncate(self, n: int) -> None:  # speculative decoding only; serve does not draft
        raise NotImplementedError("a batched sequence does not truncate")

    def _submit(self, tokens: list[int], trim: int | None = None) -> np.ndarray:
        b = self._b
        with b.cond:
            if self.error is not None:
                raise self.error
            self.done.clear()
            self.trim, self.pending, self.logits = trim, tokens, None
            self.submitted = time.perf_counter()
            b.stragglers.discard(self)
            b.cond.notify_all()
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.logits is not None
        return self.logits

    def run(self, prompt: Seq[int], params: SamplingParams, *, max_tokens: int, stop: Seq[str] = (),
            on_text: Any = None, cancel: Any = None) -> Generation:
        """runtimes.generate.generate without processors or drafts, with the sampling done by the loop: same
        tokens, and (through the same TokenText) the same text, stops and finish reasons. Its own loop because
        generate() samples in the caller's thread, and handing every sequence's logits to its thread each step is
        what made 8 clients slow."""
        b = self._b
        out = Generation(prompt_tokens=len(prompt))
        t0 = time.perf_counter()
        tail, keep = self._prompt(prompt)
        with b.cond:
            if self.error is not None:  # reaped (cancelled) between open() and now
                raise self.error
            self.sampler, self.history, self.room = Sampler(params), [int(t) for t in prompt], max_tokens
            self.stopped = max_tokens <= 0
            self.trim, self.pending = keep, tail
            self.submitted = time.perf_counter()
            b.cond.notify_all()
        out.prompt_evaluated = self.evaluated_last
        sink = TokenText(self.detokenize, prompt, out, stop=stop, on_text=on_text, eos_ids=self.eos_ids,
                         max_tokens=max_tokens, context_length=self.context_length)
        t1 = None

        try:
            while len(out.tokens) < max_tokens:
                if cancel is not None and cancel():
                    sink.finish = "cancelled"
                    break
                item = self.out.get()
                if t1 is None:
                    t1 = time.perf_counter()
                if isinstance(item, Cancelled):
                    sink.finish = "cancelled"
                    break
                if isinstance(item, BaseException):
                    raise item
                if sink.take(item):
                    break
        finally:
            with b.cond:
                self.stopped = True
        return sink.end(t0, t1 or time.perf_counter())

    def _sample(self, logits: np.ndarray, stats: Stats) -> None:
        """Loop side of run(): draw from this step's row (read in place, before the next decode overwrites it),
        send the token, and queue it for the next step unless the generation ends with it."""
        try:
            token = self.sampler(logits, self.history)
        except BaseException as e:  # non-finite logits: the request fails as generate() would
            self._fail(e)
            return
        self._b.outbox.append((self, token))
        if self.stopped or token in self.eos_ids:
            self.stopped = True
            return
        self.history.append(token)
        self.room -= 1
        if self.room <= 0 or len(self.history) - 1 >= self.context_length:
            self.stopped = True
            return
        self.pending = [token]
        self.submitted = time.perf_counter()
        stats.generated += 1

    def _fail(self, error: BaseException) -> None:
        self._b._send()  # tokens sampled before the failure go first
        self.error = error
        self.pending = []
        if self.sampler is not None:
            self.out.put(error)
        self.done.set()

    def close(self) -> None:
        """The request is over: the slot is free again, its tokens kept as a prefix cache (cancelled: freed)."""
        self._b._release(self)


class Batcher:
    """The loop thread, the context and the slots. ``open()`` gives a request a Sequence (FIFO for slots)."""

    def __init__(self, engine: Any, parallel: int, num_ctx: int, batch_tokens: int = BATCH_TOKENS) -> None:
        import llama_cpp as lib

        self.lib, self.engine = lib, engine
        self.parallel, self.num_ctx = int(parallel), int(num_ctx)
        self.batch_tokens = max(batch_tokens, self.parallel)
        llm = engine.llm
        params = lib.llama_context_default_params()
        params.n_ctx = self.parallel * self.num_ctx
        params.n_batch = params.n_ubatch = self.batch_tokens
        params.n_seq_max = self.parallel
        params.n_threads = params.n_threads_batch = engine.threads
        params.flash_attn_type = llm.context_params.flash_attn_type  # the single-sequence engine's choice
        params.type_k, params.type_v = llm.context_params.type_k, llm.context_params.type_v
        params.kv_unified = False
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise EdgekitError(f"llama.cpp cannot make a context of {self.parallel} x {self.num_ctx} tokens",
                               "lower --parallel or num_ctx")
        if llm._lora_adapter is not None:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if lib.llama_set_adapters_lora(self.ctx, adapters, 1, scales):
                lib.llama_free(self.ctx)
                raise EdgekitError("llama.cpp cannot apply the LoRA adapter to the batched context",
                                   "convert the adapter against this base")
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.batch_tokens, 0, 1)
        self.slots = [_Slot(i) for i in range(self.parallel)]
        self.stats = Stats()
        self.cond = threading.Condition()
        self.queue: deque[object] = deque()     # tickets of requests waiting for a slot, FIFO
        self.stragglers: set[Sequence] = set()  # got logits last step, next token not yet submitted
        self._inflight: set[Sequence] = set()   # sequences with tokens in the running step
        # tokens sampled this step, sent once the next batch is built: a woken request thread would take the GIL
        # from the loop while it samples the others; sent just before llama_decode, their text work runs beside it
        self.outbox: list[tuple[Sequence, int]] = []
        self.calls: deque[tuple[Any, Future[Any]]] = deque()  # work for the loop thread between two steps (call())
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="edgekit-batcher", daemon=True)
        self._thread.start()

    # -- requests' side ------------------------------------------------------------------------
    def call(self, fn: Any) -> Any:
        """``fn()`` run on the loop thread between two steps (anything that makes llama.cpp compute: one OpenMP
        master thread only, see the module's docstring); its result, or what it raised."""
        if threading.current_thread() is self._thread:
            return fn()
        done: Future[Any] = Future()
        with self.cond:
            if self._stop:
                raise EdgekitError("the server is shutting down", "retry against a running server")
            self.calls.append((fn, done))
            self.cond.notify_all()
        return done.result()

    def open(self, prompt: Seq[int], cancelled: threading.Event) -> Sequence | None:
        """A free slot for ``prompt`` (the one with the longest cached common prefix, then the least recently
        used), waiting in FIFO order; None if ``cancelled`` is set while waiting."""
        ticket = object()
        with self.cond:
            self.queue.append(ticket)
            self.stats.waiting = len(self.queue)
            try:
                while True:
                    if self._stop:
                        raise EdgekitError("the server is shutting down", "retry against a running server")
                    if cancelled.is_set():
                        return None
                    free = [s for s in self.slots if s.owner is None]
                    if free and self.queue[0] is ticket:
                        slot = max(free, key=lambda s: (common_prefix(s.tokens, prompt), -s.last_used))
                        seq = Sequence(self, slot, cancelled)
                        slot.owner = seq
                        self.stats.requests += 1
                        self.stats.active += 1
                        return seq
                    self.cond.wait(0.05)
            finally:
                self.queue.remove(ticket)
                self.stats.waiting = len(self.queue)
                self.cond.notify_all()

    def _release(self, seq: Sequence) -> None:
        with self.cond:
            self._close(seq)

    def _close(self, seq: Sequence) -> None:
        seq.closing = True
        if seq in self._inflight or (seq.cancelled.is_set() and seq.error is None):
            # a token of its is in the running step, or its cells are to be freed: the loop frees the slot then
            self.cond.notify_all()
            return
        self._free(seq)

    def _free(self, seq: Sequence) -> None:
        slot = seq.slot
        if slot.owner is seq:
            if seq.pending or seq.error is not None:
                # never fed, or fed in part: what sits in the cells is no longer known to be a usable prefix
                slot.tokens = slot.tokens if seq.error is None else []
                seq.pending = []
            slot.owner = None
            slot.last_used = time.monotonic()
            self.stats.active -= 1
            if isinstance(seq.error, Cancelled):
                self.stats.cancelled += 1
            else:
                self.stats.finished += 1
        self.stragglers.discard(seq)
        self.cond.notify_all()

    # -- the loop ------------------------------------------------------------------------------
    def _owned(self) -> list[Sequence]:
        return [s.owner for s in self.slots if s.owner is not None]

    def _loop(self) -> None:
        lib = self.lib
        while True:
            with self.cond:
                while not self._stop and not self.calls and not any(
                        (s.pending and not s.stopped) or (s.cancelled.is_set() and s.error is None)
                        for s in self._owned()):
                    self._send()  # nothing to decode: the last tokens go now
                    self.cond.wait()
                if self._stop:
                    break
                calls = list(self.calls)
                self.calls.clear()
                if calls:
                    self._send()
            if calls:  # between two steps, outside the lock: requests keep submitting meanwhile
                for fn, done in calls:
                    try:
                        done.set_result(fn())
                    except BaseException as err:  # raised again in the caller's thread
                        done.set_exception(err)
                continue
            with self.cond:
                if self._stop:
                    break
                deadline = time.monotonic() + STRAGGLER_WAIT
                if self.stragglers:
                    self._send()
                while self.stragglers and not self._stop:
                    left = deadline - time.monotonic()
                    if left <= 0 or any(s.cancelled.is_set() for s in self.stragglers):
                        break
                    self.cond.wait(left)
                self.stragglers.clear()
                self._reap()
                plan = self._plan()
                self._inflight = {seq for seq, _, _ in plan}
                self._send()
            if not plan:
                continue
            rc = lib.llama_decode(self.ctx, self.batch)
            with self.cond:
                self.stats.steps += 1
                self.stats.batch_tokens += self.batch.n_tokens
                self._deliver(plan, rc)
                self._inflight = set()
                for seq, _, _ in plan:
                    if seq.closing:
                        self._close(seq)
                self.stats.kv_cells = self._kv_cells()
                self.cond.notify_all()
        with self.cond:
            self._send()
            for seq in self._owned():
                seq._fail(EdgekitError("the server is shutting down", "retry against a running server"))
            for _, done in self.calls:
                done.set_exception(EdgekitError("the server is shutting down", "retry against a running server"))
            self.calls.clear()

    def _send(self) -> None:
        for seq, token in self.outbox:
            seq.out.put(token)
        self.outbox.clear()

    def _reap(self) -> None:
        """Cancelled sequences leave the batch now: their cells are freed and their threads woken."""
        for slot in self.slots:
            seq = slot.owner
            if seq is not None and seq.cancelled.is_set() and seq.error is None:
                self.lib.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
                slot.tokens = []
                self.stats.cancel_lag_steps = max(self.stats.cancel_lag_steps, seq.lag)
                seq._fail(Cancelled())
                if seq.closing:
                    self._free(seq)

    def _plan(self) -> list[tuple[Sequence, list[int], int]]:
        """Fill the batch: every decoding sequence's token, then prompt chunks oldest first. Returns
        (sequence, tokens taken, batch index of its logits row or -1)."""
        lib, batch = self.lib, self.batch
        for s in self._owned():
            if s.stopped:
                s.pending = []
        seqs = [s for s in self._owned() if s.pending]
        seqs.sort(key=lambda s: (len(s.pending) > 1 or s.trim is not None, s.submitted))
        chosen, n = [], 0
        for seq in seqs:
            room = self.batch_tokens - n
            if room <= 0:
                break
            slot = seq.slot
            if seq.trim is not None:
                if seq.trim < len(slot.tokens):
                    lib.llama_memory_seq_rm(self.mem, slot.seq_id, seq.trim, -1)
                    del slot.tokens[seq.trim:]
                seq.trim = None
            take = seq.pending[:room]
            chosen.append((seq, take, len(take) == len(seq.pending)))
            n += len(take)
            del seq.pending[:len(take)]
        # written in seq_id order: with a KV stream per sequence llama.cpp cuts a batch into one micro-batch (one
        # pass over the weights) per run of consecutive ascending seq_ids in batch order (split_equal); in
        # arrival order a step of 8 decode tokens took up to 8 passes
        chosen.sort(key=lambda c: c[0].slot.seq_id)
        plan, n = [], 0
        for seq, take, last in chosen:
            seq_id, pos = seq.slot.seq_id, len(seq.slot.tokens)
            for i, tok in enumerate(take):
                batch.token[n + i] = tok
                batch.pos[n + i] = pos + i
                batch.n_seq_id[n + i] = 1
                batch.seq_id[n + i][0] = seq_id
                batch.logits[n + i] = last and i == len(take) - 1
            n += len(take)
            plan.append((seq, take, n - 1 if last else -1))
        batch.n_tokens = n
        return plan

    def _deliver(self, plan: list[tuple[Sequence, list[int], int]], rc: int) -> None:
        vocab = self.engine.vocab_size
        for seq, taken, row in plan:
            slot = seq.slot
            if rc != 0:
                # a failed decode leaves the sequence's cells unknown: drop them all and fail the request
                self.lib.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
                slot.tokens = []
                seq._fail(EdgekitError(f"llama_decode failed ({rc}) on a batch of {self.batch.n_tokens} tokens",
                                       "lower --parallel or num_ctx"))
                continue
            slot.tokens.extend(taken)
            if row < 0 or seq.error is not None:
                continue
            logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, row), shape=(vocab,))
            if seq.cancelled.is_set():  # cancelled while this step ran: it goes at the next one
                seq.lag = 1
            if seq.sampler is not None:
                if not seq.stopped:
                    seq._sample(logits, self.stats)
                    if seq.error is not None:  # the cells hold tokens its slot will no longer list
                        self.lib.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
                        slot.tokens = []
                continue
            seq.logits = logits.copy()  # the request thread reads it after the next decode has overwritten the row
            self.stragglers.add(seq)
            seq.done.set()

    def _kv_cells(self) -> int:
        total = 0
        for slot in self.slots:
            hi = self.lib.llama_memory_seq_pos_max(self.mem, slot.seq_id)
            if hi >= 0:
                total += hi - self.lib.llama_memory_seq_pos_min(self.mem, slot.seq_id) + 1
        return total

    # -- lifetime ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.cond:
            out = self.stats.as_dict()
            out.update(parallel=self.parallel, num_ctx=self.num_ctx,
                       kv_cells_total=self.parallel * self.num_ctx, cached_tokens=[len(s.tokens) for s in self.slots])
            return out

    def close(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        self._thread.join()
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None


def kv_bytes_per_token(path: Path) -> int | None:
    """Bytes of K and V (f16) one token takes over all layers, from the GGUF header; None if unknown."""
    from runtimes.llamacpp import header_values

    v = header_values(Path(path), ("block_count", "embedding_length", "attention.head_count",
                                   "attention.head_count_kv", "attention.key_length", "attention.value_length"))
    try:
        layers, embd, heads = int(v["block_count"]), int(v["embedding_length"]), int(v["attention.head_count"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(v.get("attention.head_count_kv") or heads)
    k_len = int(v.get("attention.key_length") or embd // heads)
    v_len = int(v.get("attention.value_length") or embd // heads)
    return layers * kv_heads * (k_len + v_len) * 2


def check_memory(path: Path, parallel: int, num_ctx: int, available: int | None = None) -> dict[str, int]:
    """Refuse, in one line, a --parallel x num_ctx whose weights + KV cache exceed the free memory."""
    import psutil

    weights = Path(path).stat().st_size
    per_token = kv_bytes_per_token(path) or 0
    kv = per_token * parallel * num_ctx
    free = psutil.virtual_memory().available if available is None else available
    need = weights + kv
    if need > free:
        gb = 1 << 30
        raise EdgekitError(f"--parallel {parallel} x num_ctx {num_ctx} needs {need / gb:.2f} GiB (weights "
                           f"{weights / gb:.2f} GiB + KV cache {kv / gb:.2f} GiB, {per_token} bytes a token) but "
                           f"{free / gb:.2f} GiB is free",
                           "lower --parallel or num_ctx, or free memory")
    return {"weights": weights, "kv": kv, "free": free}
