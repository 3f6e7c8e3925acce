"""Constrained decoding: JSON and JSON Schema enforced on the token vocabulary, as a logits processor in
the shared sampler (runtimes.sampling), so every backend gets it.

llguidance (Microsoft's grammar engine, the one llama.cpp and vLLM use) compiles the schema into a
matcher over the engine's own vocabulary: the llama.cpp vocabulary of a GGUF (llguidance.llamacpp), or
the ``tokenizers`` JSON of an ONNX / Core ML directory. Before each draw the matcher's bitmask sets every
token that cannot continue valid output to -inf; once the value is complete only end-of-generation tokens
remain, so the sampler ends the answer there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

# compact output: a small model given free whitespace can spend its whole budget on newlines
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def _tokenizer(engine: Any) -> Any:
    """llguidance's tokenizer for ``engine`` (cached on it: building one walks the vocabulary, ~1 s)."""
    cached = getattr(engine, "_llg_tokenizer", None)
    if cached is not None:
        return cached
    try:
        import llguidance
    except ImportError:
        raise EdgekitError("constrained decoding needs llguidance", "pip install llguidance") from None
    eos = sorted(engine.eos_ids) or None
    if engine.kind == "gguf":
        from llguidance.llamacpp import lltokenizer_from_vocab

        tok = lltokenizer_from_vocab(engine._vocab, n_vocab=engine.vocab_size, eos_token=eos)
    elif hasattr(engine, "_tok"):
        tok = llguidance.LLTokenizer(engine._tok.to_str(), n_vocab=engine.vocab_size, eos_token=eos)
    else:
        raise EdgekitError(f"constrained decoding is not available for {engine.kind} models",
                           "use a GGUF or ONNX model for format / response_format")
    engine._llg_tokenizer = tok
    return tok


class JsonConstraint:
    """A logits processor that only lets ``schema``-valid JSON through (``None``: any JSON object).

    Called as ``processor(logits, history)`` by the Sampler; the first call sees the prompt as the
    history, later calls the prompt plus what was sampled, which the matcher consumes before masking."""

    def __init__(self, engine: Any, schema: dict[str, Any] | None = None) -> None:
        import llguidance

        self.schema = schema if schema is not None else ANY_JSON_OBJECT
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(self.schema), overrides=JSON_OPTIONS)
        except (ValueError, TypeError) as err:
            raise EdgekitError(f"invalid JSON schema: {err}", "pass a JSON Schema object") from None
        tok = _tokenizer(engine)
        self.matcher = llguidance.LLMatcher(tok, grammar, log_level=0)
        if self.matcher.is_error():
            raise EdgekitError(f"unsupported JSON schema: {self.matcher.get_error()[:200]}",
                               "simplify the schema (JSON Schema draft 2020-12 subset)")
        self.vocab = tok.vocab_size
        self._mask = np.full(((self.vocab + 31) // 32,), -1, dtype=np.int32)
        self._start: int | None = None
        self._consumed = 0

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        if self._start is None:
            self._start = len(history)
        new = list(history[self._start + self._consumed:])
        if new:
            self.matcher.consume_tokens([int(t) for t in new])
            self._consumed += len(new)
        if self.matcher.is_error():
            raise EdgekitError(f"constrained decoding failed: {self.matcher.get_error()[:200]}",
                               "report this with the schema")
        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[:logits.shape[0]].astype(bool)
        if allowed.shape[0] < logits.shape[0]:
            allowed = np.concatenate([allowed, np.zeros(logits.shape[0] - allowed.shape[0], bool)])
        return np.where(allowed, logits, -np.inf).astype(np.float32, copy=False)
