"""Full-vocabulary logits of one window of tokens, per artifact kind, each window from an empty cache.

``window(tokens, start)`` returns the logits of positions ``start`` onwards (the scored half)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


class GGUFLogits:
    """llama.cpp through llama-cpp-python; as llama-perplexity, only the scored positions ask for logits, so the
    output head runs on half the window."""

    def __init__(self, path: Path, ctx: int, threads: int | None = None) -> None:
        import llama_cpp

        from runtimes.devices import physical_cores

        n = threads or physical_cores()
        try:
            self.llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=False,
                                       n_threads=n, n_threads_batch=n, verbose=False)
        except (ValueError, RuntimeError, OSError) as err:
            raise EdgekitError(f"cannot load {path} with llama.cpp", "pass a GGUF written by edgekit") from err
        self.vocab_size = self.llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        # as llama-perplexity: special tokens added as the vocabulary says (BOS), none parsed from the text
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def window(self, tokens: list[int], start: int = 0) -> np.ndarray:
        import llama_cpp

        llm = self.llm
        llm._ctx.kv_cache_clear()  # every window starts from an empty cache
        batch = llm._batch
        batch.set_batch(batch=tokens, n_past=0, logits_all=False)
        for i in range(len(tokens)):
            batch.batch.logits[i] = i >= start
        llm._ctx.decode(batch)
        n = len(tokens) - start
        out = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm._ctx.ctx), shape=(n * self.vocab_size,))
        return out.reshape(n, self.vocab_size).copy()

    def close(self) -> None:
        self.llm.close()


class ONNXLogits:
    """onnxruntime on an edgekit ONNX directory (dynamic graph): one session run per window, empty past."""

    def __init__(self, path: Path, ctx: int, threads: int | None = None) -> None:
        import runtimes

        self.engine: Any = runtimes.load(path, device="cpu", threads=threads)
        if getattr(self.engine, "static", False):
            raise EdgekitError(f"{path} is a static-shape ONNX export", "evaluate the dynamic export instead")
        self.vocab_size = self.engine.vocab_size if hasattr(self.engine, "vocab_size") else None

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenize(text, add_special=True)

    def window(self, tokens: list[int], start: int = 0) -> np.ndarray:
        e = self.engine
        e.reset()
        n = len(tokens)
        feeds = {"input_ids": np.array([tokens], e._index["input_ids"])}
        if "attention_mask" in e._index:
            feeds["attention_mask"] = np.ones((1, n), e._index["attention_mask"])
        if "position_ids" in e._index:
            feeds["position_ids"] = np.arange(n, dtype=e._index["position_ids"])[None]
        for i in range(e.layers):
            feeds[f"past_key_values.{i}.key"] = e._past[2 * i].numpy()
            feeds[f"past_key_values.{i}.value"] = e._past[2 * i + 1].numpy()
        logits = e._sess.run(["logits"], feeds)[0]
        return np.asarray(logits[0, start:], dtype=np.float32)

    def close(self) -> None:
        self.engine.close()


class HFLogits:
    """The Hugging Face model in float32 on the CPU."""

    def __init__(self, path: Path, ctx: int, threads: int | None = None) -> None:
        from quant.imatrix import load_hf

        self.model = load_hf(path)
        self.vocab_size = int(self.model.config.vocab_size)
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))

    def tokenize(self, text: str) -> list[int]:
        return self.tok(text).input_ids

    def window(self, tokens: list[int], start: int = 0) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.as_tensor([tokens]), use_cache=False, logits_to_keep=len(tokens) - start).logits[0]
        return out.float().numpy()

    def close(self) -> None:
        pass


def open_logits(path: Path, ctx: int, threads: int | None = None) -> Any:
    """The logits source for a .gguf file, an ONNX directory or a Hugging Face directory."""
    if path.is_file() and path.suffix == ".gguf":
        return GGUFLogits(path, ctx, threads)
    if path.is_dir() and any(path.glob("*.onnx")):
        return ONNXLogits(path, ctx, threads)
    if path.is_dir() and (path / "config.json").exists():
        return HFLogits(path, ctx, threads)
    if path.is_dir() and any(path.glob("*.mlpackage")) or path.suffix == ".mlpackage":
        import sys

        if sys.platform != "darwin":
            raise EdgekitError("Core ML artifacts evaluate on macOS only", "run edgekit eval on a Mac")
    raise EdgekitError(f"{path} is not a GGUF file, ONNX directory or Hugging Face directory",
                       "pass an artifact written by edgekit convert/quantize")


def bos_of(source: Any) -> int | None:
    """The BOS id the source's tokenizer puts first, or None when it adds none."""
    with_special = source.tokenize("a")
    return with_special[0] if len(with_special) > 1 else None


def windows(tokens: list[int], ctx: int, chunks: int | None, bos: int | None) -> Iterator[list[int]]:
    """Non-overlapping windows of ``ctx`` tokens, the first token of each set to ``bos`` (llama-perplexity)."""
    n = len(tokens) // ctx
    if chunks is not None:
        n = min(n, chunks)
    for i in range(n):
        w = list(tokens[i * ctx:(i + 1) * ctx])
        if bos is not None:
            w[0] = bos
        yield w
