"""GGUF through llama.cpp (llama-cpp-python's ``Llama`` for loading; decoding driven directly).

Only the pieces the Engine needs are used: the context's ``decode`` on a batch that asks for the last
token's logits only (so prefill does not compute or copy a vocab-sized row per prompt token), or for every
token's when speculative decoding verifies a draft (llama.cpp sizes its output buffer per batch),
``get_logits()`` read in place, and truncation the way ``Llama.eval`` does it
(``kv_cache_seq_rm`` from position n, then ``n_tokens = n``). ``Llama.n_tokens`` / ``input_ids`` are
kept in step so the ``Llama`` object stays coherent. Chat template, BOS and end-of-generation tokens
come from the GGUF's own metadata and vocabulary.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from runtimes.devices import Selection, physical_cores
from runtimes.engine import Engine

DEFAULT_CONTEXT = 4096  # KV slots when the caller does not ask: the model's window, capped (memory)
GGUF_MAGIC = b"GGUF"



_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def header_values(path: Path, suffixes: Sequence[str]) -> dict[str, object]:
    """Scalar GGUF metadata whose key ends with ``.{suffix}`` (e.g. ``block_count``), read straight from the
    header: llama.cpp only tells after a context exists, and gguf's GGUFReader parses the whole vocabulary."""
    import struct

    def read(fh, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = fh.read(size)
        if len(data) != size:
            raise EOFError
        return struct.unpack("<" + fmt, data)[0]

    def skip(fh, vtype: int) -> None:
        if vtype == 8:  # string
            fh.seek(read(fh, "Q"), 1)
        elif vtype == 9:  # array: element type, count, elements
            etype, count = read(fh, "I"), read(fh, "Q")
            if etype in _SCALAR:
                fh.seek(count * struct.calcsize("<" + _SCALAR[etype]), 1)
            else:
                for _ in range(count):
                    skip(fh, etype)
        else:
            fh.seek(struct.calcsize("<" + _SCALAR[vtype]), 1)

    wanted = {"." + s: s for s in suffixes}
    out: dict[str, object] = {}
    try:
        with path.open("rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                return out
            read(fh, "I")
            read(fh, "Q")
            for _ in range(read(fh, "Q")):
                key = fh.read(read(fh, "Q")).decode("utf-8", "replace")
                vtype = read(fh, "I")
                hit = next((name for end, name in wanted.items() if key.endswith(end) and key.count(".") ==
                            end.count(".")), None)
                if hit is not None and vtype in _SCALAR:
                    out[hit] = read(fh, _SCALAR[vtype])
                    if len(out) == len(wanted):
                        break
                else:
                    skip(fh, vtype)
    except (EOFError, KeyError, OSError, struct.error, MemoryError):
        return out
    return out


def trained_context(path: Path) -> int | None:
    """``{arch}.context_length`` from the GGUF header."""
    value = header_values(path, ("context_length",)).get("context_length")
    return int(value) if value is not None else None


def _diagnose(path: Path) -> str:
    """Why llama.cpp refused ``path``, in one clause (it only says 'failed to load')."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        return f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})"
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as err:  # the reader fails on a header cut short, or when mapping tensor data that is absent
        import traceback

        frames = {f.name for f in traceback.extract_tb(err.__traceback__)}
        if "_build_tensors" in frames:
            return f"truncated: its tensor data runs past the end of the file ({size} bytes)"
        return f"corrupt GGUF header ({type(err).__name__}: {str(err).splitlines()[0][:100]})"
    if end > size:
        return f"truncated: tensor data needs {end} bytes but the file has {size}"
    return "llama.cpp could not load it (unsupported architecture or tensor type?)"


PREPEND_FIRST_KEY = "edgekit.tokenizer.prepend_first"  # written by converters.gguf.tokenizer
STOP_IDS_KEY = "edgekit.stop_token_ids"  # written by converters.gguf.base (edgekit.tokenizer.stop_token_ids)


def tokenize(llm: object, text: str, add_special: bool, prepend_first: bool = False) -> list[int]:
    """llama.cpp's tokens for ``text`` (special-token texts parsed as such; BOS added with ``add_special``
    when the vocabulary says so). ``prepend_first``: the one leading "▁" a ``prepend_scheme=first``
    SentencePiece tokenizer puts before a text that starts with a word, which GGUF has no key for."""
    import llama_cpp

    data = text.encode("utf-8")
    if prepend_first and text and not text.startswith((" ", "\u2581")):
        head = llm.tokenize(data, add_bos=False, special=True)
        added = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        if head and not llama_cpp.llama_vocab_get_attr(llm._model.vocab, head[0]) & added:
            data = b" " + data
    return llm.tokenize(data, add_bos=add_special, special=True)


def _metadata_ids(value: str | None) -> frozenset[int] | None:
    """The token ids of a JSON list in a metadata string ("[2, 7]"), None when absent or unreadable."""
    import json

    try:
        ids = json.loads(value) if value else None
        return frozenset(int(x) for x in ids) if isinstance(ids, list) and ids else None
    except (ValueError, TypeError):
        return None


class LlamaCppEngine(Engine):
    kind = "gguf"

    def __init__(self, path: Path, selection: Selection, threads: int | None = None,
                 context: int | None = None, lora: Path | None = None) -> None:
        super().__init__()
        try:
            import llama_cpp
        except ImportError:
            raise EdgekitError("llama-cpp-python is not installed", "pip install 'edgekit[llamacpp]'") from None
        self._lib = llama_cpp
        self.path, self.selection = str(path), selection
        with path.open("rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise EdgekitError(f"{path}: {_diagnose(path)}", "pass a .gguf file written by edgekit convert")
        n_threads = threads or physical_cores()
        train_ctx = trained_context(path)
        if context is not None and train_ctx and context > train_ctx:
            raise EdgekitError(f"--context {context} exceeds the model's {train_ctx} positions",
                               f"pass --context {train_ctx} or less")
        n_ctx = context or min(train_ctx or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        try:
            self.llm = llama_cpp.Llama(
                str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                n_gpu_layers=selection.gpu_layers, logits_all=False, verbose=False,
                lora_path=str(lora) if lora is not None else None)
        except (ValueError, RuntimeError, OSError) as err:
            if lora is not None and "LoRA" in str(err):
                raise EdgekitError(f"llama.cpp cannot apply the LoRA adapter {lora} to {path}",
                                   "convert the adapter against this base: edgekit convert BASE --adapter DIR "
                                   "--adapter-only --to gguf") from None
            raise EdgekitError(f"cannot load {path}: {_diagnose(path)}",
                               "re-create the file with edgekit convert --to gguf") from err
        self._engine_default_attention()
        self.threads = n_threads
        train_ctx = self.llm._model.n_ctx_train()
        # llama.cpp rounds n_ctx up (to 256): the window asked for (or the model's, if smaller) is enforced
        self.context_length = min(n_ctx, self.llm.n_ctx(), train_ctx or n_ctx)
        self.vocab_size = self.llm.n_vocab()
        self._n_batch = self.llm.n_batch
        model = self.llm._model
        meta = self.llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template")
        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        self.bos_id = bos if bos >= 0 else None
        self.bos_token = model.token_get_text(bos) if bos >= 0 else None
        self.eos_token = model.token_get_text(eos) if eos >= 0 else None
        vocab = model.vocab
        # the stop set edgekit recorded at convert time (the same in every format); llama.cpp's own
        # end-of-generation set for GGUFs from elsewhere
        self.eos_ids = _metadata_ids(meta.get(STOP_IDS_KEY)) or frozenset(
            t for t in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t))
        self._prepend_first = meta.get(PREPEND_FIRST_KEY) == "true"
        self._vocab = vocab
        self._pieces: dict[int, bytes] = {}
        self._last_row: tuple[int, np.ndarray] | None = None  # (address, numpy view) of llama.cpp's last logits row
        self._one_token_batch()

    def _one_token_batch(self) -> None:
        """What a decode step needs, looked up once: the batch's token / position / output slots (one sequence, id 0,
        as ``set_batch`` writes it) and ``llama_get_logits`` returning a plain address. Between two forwards of a
        ~10 ms decode step llama-cpp-python's ``set_batch`` loop and a pointer cast cost ~1% (measured)."""
        batch = self.llm._batch.batch
        batch.seq_id[0][0], batch.n_seq_id[0] = 0, 1
        self._slots = (batch, batch.token, batch.pos, batch.logits)
        # a handle of our own on the same library: llama-cpp-python's binding keeps its float-pointer restype
        get_logits = ctypes.CDLL(self._lib.llama_cpp._lib._name).llama_get_logits
        get_logits.argtypes, get_logits.restype = [ctypes.c_void_p], ctypes.c_void_p
        self._logits_address = get_logits

    def _engine_default_attention(self) -> None:
        """llama.cpp's own default is flash attention "auto" (on where the backend supports it, as llama-cli and
        llama-bench run); llama-cpp-python's ``Llama`` can only say on or off and says off. The context is made
        again with llama.cpp's default before anything ran in it."""
        lib, llm = self._lib, self.llm
        auto = getattr(lib, "LLAMA_FLASH_ATTN_TYPE_AUTO", None)
        if auto is None or llm.context_params.flash_attn_type == auto:
            return
        from llama_cpp._internals import LlamaContext

        llm.context_params.flash_attn_type = auto
        old = llm._ctx
        llm._ctx = LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
        old.close()
        if llm._lora_adapter is not None:  # a LoRA is set on the context, so the new one needs it again
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if lib.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
                raise EdgekitError(f"llama.cpp cannot apply the LoRA adapter {llm.lora_path}",
                                   "convert the adapter against this base: edgekit convert BASE --adapter DIR "
                                   "--adapter-only --to gguf")

    # -- tokenizer --------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return tokenize(self.llm, text, add_special, self._prepend_first)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            # a buffer per miss, not one per engine: the server's request threads detokenize through one engine,
            # and a shared buffer let one thread cache another's piece for good (a wrong word in every later answer)
            buf = ctypes.create_string_buffer(256)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:  # longer than the buffer: llama.cpp returns minus the size it needs
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece(int(t)) for t in tokens).decode("utf-8", errors="replace")

    # -- model ------------------------------------------------------------------------------------
    def _forward(self, tokens: list[int]) -> np.ndarray:
        return self._decode(tokens, every=False)

    def _forward_all(self, tokens: list[int]) -> np.ndarray:
        return self._decode(tokens, every=True)

    def _decode(self, tokens: list[int], every: bool) -> np.ndarray:
        """Run ``tokens`` in n_batch chunks; logits rows of every token (``every``, shape (len, vocab)) or the last
        one's only, shape (vocab,) (so a prefill does not compute or copy a vocab-sized row per prompt token)."""
        llm = self.llm
        if len(tokens) == 1 and not every:
            return self._step(tokens[0])
        rows = []
        for i in range(0, len(tokens), self._n_batch):
            chunk = tokens[i:i + self._n_batch]
            n_past = llm.n_tokens
            llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=every)
            llm._ctx.decode(llm._batch)
            if len(chunk) == 1:  # a decode step: an item store, not a slice from a list
                llm.input_ids[n_past] = chunk[0]
            else:
                llm.input_ids[n_past:n_past + len(chunk)] = chunk
            llm.n_tokens = n_past + len(chunk)
            if every:  # copied: the next decode reuses llama.cpp's logits buffer
                rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), self.vocab_size)).copy())
        if every:
            return np.concatenate(rows) if len(rows) > 1 else rows[0]
        return self._last_logits_row().copy()

    def _step(self, token: int) -> np.ndarray:
        """One decode step: ``token`` at the next position, its logits row (a copy)."""
        llm = self.llm
        batch, tok, pos, out = self._slots
        n_past = llm.n_tokens
        batch.n_tokens, tok[0], pos[0], out[0] = 1, token, n_past, 1
        code = self._lib.llama_decode(llm._ctx.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        llm.input_ids[n_past] = token
        llm.n_tokens = n_past + 1
        return self._last_logits_row().copy()

    def _last_logits_row(self) -> np.ndarray:
        """llama.cpp's logits row of the last batch's only output, as a numpy view. The view is made again only when
        llama.cpp moved its output buffer: ``np.ctypeslib.as_array`` builds a new ctypes array type per call (~50 us,
        i.e. 0.5% of a SmolLM2 decode step, paid between two forwards)."""
        address = self._logits_address(self.llm._ctx.ctx)
        if self._last_row is None or self._last_row[0] != address:
            ptr = ctypes.cast(address, ctypes.POINTER(ctypes.c_float))
            self._last_row = (address, np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)))
        return self._last_row[1]

    def _truncate(self, n: int) -> None:
        self.llm._ctx.kv_cache_seq_rm(-1, n, -1)
        self.llm.n_tokens = n

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None and hasattr(llm, "close"):
            llm.close()
