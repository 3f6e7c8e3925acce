"""The Engine: one interface over every backend (llama.cpp, onnxruntime, Core ML).

The base class owns everything that is the same for all backends: the record of which tokens sit in
the KV cache, reuse of the longest common prefix between calls (so a chat turn does not re-run its
history), context checks and the evaluation counters. A backend implements only

* ``_forward(tokens)``: run ``tokens`` at positions ``n_tokens ..`` appending their K/V to the cache,
  return the last token's logits as a float32 vector;
* ``_truncate(n)``: forget cache entries at positions ``>= n``;
* optionally ``_forward_all(tokens)``: the same, returning every token's logits (speculative decoding
  verifies k drafted tokens in one forward); the default runs them one by one;
* ``tokenize`` / ``detokenize`` and the tokenizer facts (bos/eos, chat template).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Engine(ABC):
    """A loaded model with its KV cache. Subclasses set the attributes below in ``__init__``."""

    kind: str = ""                       # "gguf" | "onnx" | "coreml"
    context_length: int = 0              # tokens the KV cache holds
    vocab_size: int = 0
    bos_token: str | None = None         # token texts, for chat templates
    eos_token: str | None = None
    bos_id: int | None = None
    eos_ids: frozenset[int] = frozenset()  # any of these ends generation
    chat_template: str | None = None
    selection: Any = None                # runtimes.devices.Selection that chose backend and providers
    path: str = ""

    def __init__(self) -> None:
        self._cache: list[int] = []      # tokens whose K/V are in the cache, in position order
        self._last_logits: np.ndarray | None = None
        self.evaluated_total = 0         # tokens run through the model since load
        self.evaluated_last = 0          # tokens run by the last prefill/decode call
        self.reused_last = 0             # cached tokens the last prefill kept

    # -- backend hooks -------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, tokens: list[int]) -> np.ndarray:
        """Append ``tokens`` at positions ``n_tokens ..``; return the last one's logits (float32, vocab)."""

    def _forward_all(self, tokens: list[int]) -> np.ndarray:
        """Like ``_forward`` but returns every token's logits, shape (len(tokens), vocab)."""
        return np.stack([self._forward([t]) for t in tokens])

    @abstractmethod
    def _truncate(self, n: int) -> None:
        """Drop cache entries at positions >= n."""

    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``; special-token texts in it are parsed as special tokens. ``add_special``
        adds what the tokenizer adds on its own (e.g. BOS)."""

    @abstractmethod
    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` without special tokens; an incomplete UTF-8 sequence shows as U+FFFD."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free native resources (optional)."""

    def describe(self) -> dict[str, Any]:
        """What runs the model: backend, device profile, providers (for --json and doctor)."""
        info = {"kind": self.kind, "path": self.path, "context_length": self.context_length}
        if self.selection is not None:
            info.update(self.selection.as_dict())
        if getattr(self, "threads", None):  # what the engine runs with (--threads overrides the profile's)
            info["threads"] = self.threads
        return info

    # -- shared behaviour ----------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        """Number of tokens in the KV cache."""
        return len(self._cache)

    @property
    def tokens(self) -> list[int]:
        """The tokens in the KV cache (a copy)."""
        return list(self._cache)

    def _check_room(self, extra: int, total: int) -> None:
        if total > self.context_length:
            raise EdgekitError(f"{total} tokens do not fit the context of {self.context_length} tokens "
                               f"({extra} more requested)",
                               "shorten the prompt or history, or load with a larger context (--context)")

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Make the cache hold exactly ``tokens``, reusing the longest common prefix with what it holds;
        returns the logits after the last token."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise EdgekitError("empty prompt", "give at least one token of prompt")
        self._check_room(len(tokens), len(tokens))
        keep = common_prefix(self._cache, tokens)
        if keep == len(tokens) == len(self._cache) and self._last_logits is not None:
            self.evaluated_last, self.reused_last = 0, keep
            return self._last_logits
        if keep == len(tokens):  # the logits of the last token are gone: run it again
            keep -= 1
        if keep < len(self._cache):
            self.truncate(keep)
        return self._run(tokens[keep:], reused=keep)

    def decode(self, token: int) -> np.ndarray:
        """Append one token; returns the logits after it."""
        self._check_room(1, len(self._cache) + 1)
        return self._run([int(token)], reused=len(self._cache))

    def score(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` in one forward; returns the logits after each of them, shape (len, vocab).
        Speculative decoding verifies drafted tokens this way, then ``truncate``s the rejected ones."""
        tokens = [int(t) for t in tokens]
        self._check_room(len(tokens), len(self._cache) + len(tokens))
        return self._run(tokens, reused=len(self._cache), every=True)

    def _run(self, tokens: list[int], reused: int, every: bool = False) -> np.ndarray:
        try:
            logits = self._forward_all(tokens) if every else self._forward(tokens)
        except Exception:
            # the backend may have written part of the batch: its cache state is unknown past `reused`
            self.truncate(reused)
            raise
        self._cache.extend(tokens)
        self._last_logits = logits[-1] if every else logits
        self.evaluated_last, self.reused_last = len(tokens), reused
        self.evaluated_total += len(tokens)
        return logits

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` cached tokens, drop the rest."""
        n = max(0, min(int(n), len(self._cache)))
        self._truncate(n)
        del self._cache[n:]
        self._last_logits = None

    def reset(self) -> None:
        """Empty the KV cache."""
        self.truncate(0)
