"""The generation loop shared by every backend: prefill, sample, decode, stream text, stop.

Streaming detokenization uses the prefix/read offsets of Hugging Face text-generation-inference: the
text of a token is what decoding ``ids[prefix:]`` adds to decoding ``ids[prefix:read]``, so tokenizers
that change a token's text by context (SentencePiece's leading space) stream correctly, and nothing
is emitted while the decoded text ends in U+FFFD, i.e. while a multi-byte UTF-8 character is still
split across tokens. Stop strings are found in the decoded text; the tail that could be the start of a
stop string is held back until it is known not to be one, so the caller never sees part of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from runtimes.engine import Engine
from runtimes.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from runtimes.speculative import Drafter

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 4  # prompt tokens kept in the stream decoder so the first piece decodes in context


class StreamDecoder:
    """Turns a stream of token ids into text deltas without ever emitting half a character.

    Hand-written rather than ``tokenizers.decoders.DecodeStream``: that one needs a ``tokenizers.Tokenizer``,
    and the GGUF backend detokenizes through llama.cpp's own vocabulary, so one loop here serves every backend.
    """

    def __init__(self, detokenize: Callable[[Sequence[int]], str], context: Sequence[int] = ()) -> None:
        self.detokenize = detokenize
        self.ids = list(context[-CONTEXT_TOKENS:]) if CONTEXT_TOKENS else []
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token: int) -> str:
        """Add a token; returns the text it completes ('' while a character is incomplete)."""
        self.ids.append(int(token))
        before = self.detokenize(self.ids[self.prefix:self.read])
        after = self.detokenize(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still pending at the end (an incomplete character comes out as U+FFFD)."""
        before = self.detokenize(self.ids[self.prefix:self.read])
        after = self.detokenize(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


@dataclass
class Generation:
    text: str = ""
    tokens: list[int] = field(default_factory=list)   # generated ids (stop/eos token not included)
    prompt_tokens: int = 0         # tokens in the prompt
    prompt_evaluated: int = 0      # of those, run through the model (the rest came from the KV cache)
    eval_count: int = 0            # generated tokens
    prompt_seconds: float = 0.0
    eval_seconds: float = 0.0
    prompt_tps: float = 0.0        # evaluated prompt tokens per second
    eval_tps: float = 0.0          # generated tokens per second
    finish_reason: str = ""        # "stop" (eos or stop string) | "length" (max tokens) | "context" (window full)
    #                                | "cancelled" (the caller's cancel() said so)
    speculative: dict | None = None  # drafter, drafted / accepted tokens, acceptance rate, tokens per forward

    def as_dict(self) -> dict:
        return asdict(self)


class TokenText:
    """What the caller sees of a generation as its tokens arrive: text streamed to ``on_text`` with the tail that
    could start a stop string held back, the tokens kept in ``out``, and why it ended (``finish``). One place for
    generate() and the server's batch loop (runtimes/llamacpp_batch.py), so both stop, stream and end alike."""

    def __init__(self, detokenize: Callable[[Sequence[int]], str], prompt: Sequence[int], out: Generation, *,
                 stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None,
                 eos_ids: frozenset[int] = frozenset(), max_tokens: int, context_length: int) -> None:
        self.out, self.on_text, self.eos_ids = out, on_text, eos_ids
        self.stream = StreamDecoder(detokenize, prompt)
        self.stops = [s for s in stop if s]
        self.max_tokens, self.context_length = max_tokens, context_length
        self.n_history = len(prompt)
        self.text, self.emitted = "", 0
        self.finish, self.cut = "length", False

    def _emit(self, upto: int) -> None:
        if upto > self.emitted:
            if self.on_text is not None:
                self.on_text(self.text[self.emitted:upto])
            self.emitted = upto

    def take(self, token: int) -> bool:
        """Emit ``token``; True when generation ends with it."""
        if token in self.eos_ids:
            self.finish = "stop"
            return True
        self.out.tokens.append(token)
        self.n_history += 1
        self.text += self.stream.push(token)
        if self.stops:
            start = max(0, self.emitted - max(map(len, self.stops)))
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.finish, self.cut = "stop", True
                return True
            self._emit(len(self.text) - _held_back(self.text, self.stops))
        else:
            self._emit(len(self.text))
        if len(self.out.tokens) >= self.max_tokens:
            return True
        if self.n_history - 1 >= self.context_length:  # the token cannot be fed: the window is full
            self.finish = "context"
            return True
        return False

    def close(self) -> str:
        """Emit the held-back tail, now known not to start a stop string; the whole text."""
        if not self.cut:
            self.text += self.stream.flush()
        self._emit(len(self.text))
        return self.text

    def end(self, t0: float, t1: float) -> Generation:
        """:meth:`close`, then the generation's text, counts, finish reason and timings filled in: the prompt went
        in at ``t0`` and its logits were out at ``t1`` (perf_counter); decoding ends now."""
        text = self.close()
        t2 = time.perf_counter()
        out = self.out
        out.text, out.eval_count, out.finish_reason = text, len(out.tokens), self.finish
        out.prompt_seconds, out.eval_seconds = t1 - t0, t2 - t1
        out.prompt_tps = out.prompt_evaluated / out.prompt_seconds if out.prompt_seconds > 0 else 0.0
        out.eval_tps = out.eval_count / out.eval_seconds if out.eval_seconds > 0 else 0.0
        return out


def generate(engine: Engine, prompt: Sequence[int], params: SamplingParams | None = None, *, max_tokens: int = 256,
             stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None,
             draft: Drafter | None = None, processors: Sequence[Callable] = (),
             cancel: Callable[[], bool] | None = None) -> Generation:
    """Generate up to ``max_tokens`` after ``prompt`` (token ids), streaming text to ``on_text``; ``cancel()``
    is asked before every step and a true answer ends the generation (finish_reason "cancelled"), the text
    so far kept. ``processors`` are logits processors for the sampler (constrained decoding).

    With a ``draft`` (runtimes/speculative.py), each step feeds the sampled token together with the
    drafter's guesses in one forward (``engine.score``) and walks the returned rows: the token sampled from
    a row is emitted; while it equals the guess fed after that row the next row is valid too; at the first
    difference the rest of the guess is dropped from the KV cache and the sampled token is carried to the
    next step. Every emitted token is thus sampled from the target's logits after exactly the tokens emitted
    before it, with one draw each: the output is non-speculative decoding's.
    """
    params = params or SamplingParams()
    sampler = Sampler(params, processors)
    out = Generation(prompt_tokens=len(prompt))
    t0 = time.perf_counter()
    logits = engine.prefill(prompt)
    t1 = time.perf_counter()
    out.prompt_evaluated = engine.evaluated_last
    history = list(prompt)
    sink = TokenText(engine.detokenize, prompt, out, stop=stop, on_text=on_text, eos_ids=engine.eos_ids,
                     max_tokens=max_tokens, context_length=engine.context_length)
    drafted = accepted = forwards = 0

    def take(token: int) -> bool:
        """Emit ``token``; True when generation ends with it."""
        done = sink.take(token)
        if token not in engine.eos_ids:
            history.append(token)
        return done

    carry: int | None = None  # a token already sampled (at a rejected guess) and not yet emitted
    while len(out.tokens) < max_tokens:
        if cancel is not None and cancel():
            sink.finish = "cancelled"
            break
        token = sampler(logits, history) if carry is None else carry
        carry = None
        if take(token):
            break
        room = min(draft.tokens, max_tokens - len(out.tokens), engine.context_length - len(history)) if draft else 0
        guess = draft.propose(history, room)[:room] if room > 0 else []
        forwards += 1
        if not guess:
            logits = engine.decode(token)
            continue
        rows = engine.score([token, *guess])  # rows[i]: logits after guess[:i]
        drafted += len(guess)
        logits = rows[-1]
        for i, g in enumerate(guess):
            t = sampler(rows[i], history)
            if t != g:
                engine.truncate(engine.n_tokens - len(guess) + i)
                carry = t
                break
            accepted += 1
            if take(t):
                break
        if len(out.tokens) >= max_tokens or sink.finish != "length":
            break
    sink.end(t0, t1)
    if draft is not None:
        # tokens per target forward (prefill included; 1.0 without speculation): the speed-up over plain
        # decoding if verifying k tokens cost what one token's forward costs (the benchmark measures the real one)
        out.speculative = {"drafter": draft.name, "draft_tokens": draft.tokens, "drafted": drafted,
                           "accepted": accepted, "acceptance_rate": accepted / drafted if drafted else 0.0,
                           "forwards": forwards + 1, "tokens_per_forward": out.eval_count / (forwards + 1)}
    return out


@dataclass(frozen=True)
class GenerationParams:
    """Sampling plus the loop's limits in one object (for callers such as the demo)."""

    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)


def chat(engine: Engine, messages: list[dict], params: GenerationParams | None = None,
         on_text: Callable[[str], None] | None = None) -> Generation:
    """One answer to ``messages`` rendered with the model's chat template (KV cache reused as always)."""
    from runtimes.chat import prompt_tokens

    params = params or GenerationParams()
    return generate(engine, prompt_tokens(engine, messages), params.sampling, max_tokens=params.max_tokens,
                    stop=params.stop, on_text=on_text)
