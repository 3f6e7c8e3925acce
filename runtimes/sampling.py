"""Token sampling shared by every backend (numpy, on the last position's logits).

The chain and its order follow llama.cpp's default sampler, so a GGUF behaves the same through
edgekit as through llama.cpp: penalties -> top-k -> top-p -> min-p -> temperature -> draw.

* repetition penalty (CTRL paper, as llama.cpp and transformers apply it): over the last
  ``penalty_last_n`` tokens, a positive logit is divided by the penalty, a negative one multiplied;
* presence / frequency penalties (OpenAI): ``logit -= presence * [count > 0] + frequency * count``;
* top-k keeps the k largest logits; top-p keeps the smallest set of most likely tokens whose
  probability reaches p (the token that crosses p is kept); min-p keeps tokens whose probability is at
  least ``min_p`` times the most likely one's; top-p and min-p look at the untempered distribution;
* temperature 0 (the default) is greedy: argmax after the penalties.

The seed makes a run reproducible: the same seed, logits and history draw the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0                  # 0 = off
    top_p: float = 1.0              # 1 = off
    min_p: float = 0.0              # 0 = off
    repeat_penalty: float = 1.0     # 1 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64        # history window of the three penalties (llama.cpp's default)
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise EdgekitError(f"--{name.replace('_', '-')} {getattr(self, name)} is not a finite number",
                                   "pass a finite value")
        checks = [(self.temperature >= 0, "--temperature must be >= 0"), (self.top_k >= 0, "--top-k must be >= 0"),
                  (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
                  (0 <= self.min_p <= 1, "--min-p must be in [0, 1]"),
                  (self.repeat_penalty > 0, "--repeat-penalty must be > 0"),
                  (self.penalty_last_n >= 0, "penalty_last_n must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise EdgekitError(message, "pass a value in range")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def as_dict(self) -> dict:
        return asdict(self)


def _no_penalties(p: SamplingParams) -> bool:
    return (p.repeat_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0) \
        or p.penalty_last_n == 0


def apply_penalties(logits: np.ndarray, history: Sequence[int], p: SamplingParams) -> np.ndarray:
    """Logits after repetition / presence / frequency penalties over the last ``penalty_last_n`` tokens."""
    if _no_penalties(p) or not len(history):
        return logits
    window = np.asarray(history[-p.penalty_last_n:], dtype=np.int64)
    ids, counts = np.unique(window, return_counts=True)
    ids_ok = (ids >= 0) & (ids < logits.shape[0])
    ids, counts = ids[ids_ok], counts[ids_ok]
    out = logits.astype(np.float32, copy=True)
    sel = out[ids]
    if p.repeat_penalty != 1.0:
        sel = np.where(sel > 0, sel / p.repeat_penalty, sel * p.repeat_penalty)
    sel = sel - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
    out[ids] = sel
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def distribution(logits: np.ndarray, history: Sequence[int], p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """(candidate token ids, their probabilities) that a non-greedy draw samples from."""
    x = apply_penalties(np.asarray(logits, dtype=np.float32), history, p)
    n = x.shape[0]
    if 0 < p.top_k < n:
        ids = np.argpartition(-x, p.top_k - 1)[:p.top_k]
        ids = ids[np.argsort(-x[ids], kind="stable")]
    else:
        ids = np.argsort(-x, kind="stable")
    vals = x[ids]
    if p.top_p < 1.0:
        probs = _softmax(vals)
        keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)  # include the token that crosses p
        ids, vals = ids[:keep], vals[:keep]
    if p.min_p > 0.0:
        probs = _softmax(vals)
        keep = max(1, int((probs >= p.min_p * probs[0]).sum()))  # sorted descending: a prefix survives
        ids, vals = ids[:keep], vals[:keep]
    return ids, _softmax(vals / p.temperature)


def check_finite(logits: np.ndarray) -> None:
    """Refuse logits a healthy model never produces (NaN, +inf, or nothing above -inf): they mean damaged
    weights, and sampling them would print token 0 or garbage as if it were the answer."""
    # one reduction instead of three full-vocab passes (this runs every token): max is NaN when any entry is
    # NaN, +inf when any is +inf, -inf when all are -inf
    top = np.asarray(logits).max()
    if not -np.inf < top < np.inf:
        raise EdgekitError("the model produced non-finite logits (NaN or infinity); its weights are damaged",
                           "run edgekit verify on the artifact and re-create it with edgekit convert")


class Sampler:
    """Picks the next token; one instance per generation (it holds the seeded random generator).

    ``processors`` (e.g. runtimes.constrain.JsonConstraint) run first, each ``processor(logits, history)
    -> logits``; a token they set to -inf is never drawn."""

    def __init__(self, params: SamplingParams | None = None,
                 processors: Sequence[Callable[[np.ndarray, Sequence[int]], np.ndarray]] = ()) -> None:
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)
        self.processors = list(processors)
        # plain greedy: one pass over the vocabulary per token instead of two (this runs between two forwards)
        self._argmax_only = self.params.greedy and not self.processors and _no_penalties(self.params)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        if self._argmax_only:
            # argmax stops at the first NaN, else finds +inf, else a finite maximum unless all are -inf: the
            # value at the winner is non-finite exactly when check_finite would refuse the row
            token = int(logits.argmax())
            if not math.isfinite(logits[token]):
                check_finite(logits)
            return token
        check_finite(logits)
        for processor in self.processors:
            logits = processor(logits, history)
        if p.greedy:
            return int(np.argmax(apply_penalties(logits, history, p)))
        ids, probs = distribution(logits, history, p)
        return int(ids[self.rng.choice(len(ids), p=probs)])
