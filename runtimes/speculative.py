"""Drafters for speculative decoding: cheap guesses of the next tokens that the target model then verifies
in one forward (``Engine.score``), keeping the longest prefix it agrees with (runtimes/generate.py).

* :class:`PromptLookup`: no second model. The last n tokens (n = 3, 2, 1) are looked up in everything seen
  so far (prompt and output); what followed their latest earlier occurrence is the guess. Pays off where
  the output echoes the input: editing code or text, extraction, summaries quoting their source.
* :class:`DraftModel`: a smaller model with the same vocabulary, any backend, run greedily k tokens ahead;
  its own KV cache keeps the common prefix across rounds, so a rejection costs it only the rejected tail.

A drafter only ever proposes: what is emitted is sampled from the target's own logits, so the output is
the one non-speculative decoding gives (token for token when greedy; the same seeded draws otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgekit.errors import EdgekitError
from runtimes.engine import Engine, common_prefix


class Drafter(Protocol):
    name: str
    tokens: int                    # most tokens proposed per round

    def propose(self, history: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens that may follow ``history`` (may be empty: then the step is a plain decode)."""


class PromptLookup:
    """n-gram lookup in the context (as transformers' ``prompt_lookup_num_tokens`` and llama.cpp's
    lookup decoding do), written here because neither exposes it apart from its own generation loop.

    ``adaptive``: the guess length follows how the last guess fared (transformers' "heuristic" schedule for
    assistant tokens, with a sharper cut): +2 after a guess accepted whole, the accepted length + 1 after a
    rejection, between 1 and ``tokens``. A rejected guess costs its tokens' share of the verifying forward, so
    drafts stay short where the output leaves the input and grow where it copies it."""

    name = "lookup"

    def __init__(self, tokens: int = 10, max_ngram: int = 3, min_ngram: int = 1, adaptive: bool = False,
                 start: int = 4) -> None:
        self.tokens, self.max_ngram, self.min_ngram = tokens, max_ngram, min_ngram
        self.adaptive, self.length = adaptive, min(start, tokens)
        self._last: tuple[int, list[int]] | None = None  # (len(history) when proposed, the guess)

    def propose(self, history: Sequence[int], k: int) -> list[int]:
        if self.adaptive:
            if self._last is not None:  # the guess was fed after history[:at]; what was emitted since tells
                at, guess = self._last
                accepted = common_prefix(history[at:at + len(guess)], guess)
                self.length = min(self.tokens, self.length + 2) if accepted == len(guess) else max(1, accepted + 1)
            k = min(k, self.length)
        guess = self._lookup(history, k)
        self._last = (len(history), guess) if guess else None
        return guess

    def _lookup(self, history: Sequence[int], k: int) -> list[int]:
        seq = np.asarray(history, dtype=np.int64)
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            windows = sliding_window_view(seq[:-1], n)      # every earlier n-gram, not the last one itself
            hits = np.flatnonzero((windows == seq[-n:]).all(axis=1))
            for start in hits[::-1]:                         # the latest occurrence first
                follow = seq[start + n:start + n + k]
                if len(follow):
                    return follow.tolist()
        return []


class DraftModel:
    """Greedy guesses from a smaller engine sharing the target's vocabulary."""

    name = "draft"

    def __init__(self, engine: Engine, tokens: int = 5) -> None:
        self.engine, self.tokens = engine, tokens

    def propose(self, history: Sequence[int], k: int) -> list[int]:
        e = self.engine
        k = min(k, e.context_length - len(history))
        if k <= 0:  # the draft model's window is full: the target goes on alone
            return []
        logits = e.prefill(history)
        out: list[int] = []
        while True:
            token = int(np.argmax(logits))
            out.append(token)
            if len(out) >= k or token in e.eos_ids:
                return out
            logits = e.decode(token)


def check_compatible(target: Engine, draft: Engine) -> None:
    """A draft model must tokenize like the target: same vocabulary size and the same ids for a probe text."""
    probe = "Hello, world! 123 def f(x): return x * 2\n"
    if draft.vocab_size != target.vocab_size or draft.tokenize(probe, False) != target.tokenize(probe, False):
        raise EdgekitError(f"the draft model's vocabulary differs from the target's ({draft.vocab_size} vs "
                           f"{target.vocab_size} tokens, or other ids)",
                           "pass a draft model with the target's tokenizer (e.g. a smaller model of the same family)")


def drafter(target: Engine, *, draft: str | None = None, lookup: bool = False, tokens: int | None = None,
            device: str = "auto", threads: int | None = None) -> Drafter | None:
    """The drafter ``edgekit run`` asked for: ``--draft ARTIFACT`` (loaded on the same device), ``--lookup``,
    or None."""
    if draft and lookup:
        raise EdgekitError("--draft and --lookup are two kinds of speculative decoding", "pass only one of them")
    if tokens is not None and tokens < 1:
        raise EdgekitError(f"--draft-tokens {tokens} must be at least 1", "pass a positive number of tokens")
    if lookup:
        return PromptLookup(tokens or 16, adaptive=True)
    if draft:
        import runtimes

        small = runtimes.load(draft, device=device, threads=threads)
        check_compatible(target, small)
        return DraftModel(small, tokens or 5)
    if tokens is not None:
        raise EdgekitError("--draft-tokens needs --draft or --lookup", "add --lookup or --draft ARTIFACT")
    return None
