"""The GGUF vocabulary: tokens, scores, types, merges, special ids, add_bos/add_eos, chat template.

Two tokenizer kinds, independent of the architecture:
- byte-level BPE (``tokenizer.ggml.model = gpt2``): vocabulary and merges from tokenizer.json,
  pre-tokenizer named from its declaration (:mod:`converters.gguf.pretokenizer`);
- SentencePiece (``llama``): pieces, scores and types from tokenizer.model through the
  sentencepiece library when present (as llama.cpp does), else from a tokenizer.json holding a
  SentencePiece-style BPE (byte fallback, ``▁`` for spaces) or Unigram.

Whether BOS/EOS are added, and which ids they are, is measured on the Hugging Face tokenizer itself
(encode with and without special tokens; :mod:`converters.gguf.hf_tokenizer`) rather than guessed
from config files, so llama.cpp adds exactly what transformers adds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from converters.gguf import hf_tokenizer, pretokenizer
from converters.gguf.hf_tokenizer import TokenizerFacts
from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json
from edgekit.tokenizer import chat_template

# token texts llama.cpp's converter treats as control tokens even when HF does not flag them special
_LOOKS_SPECIAL = re.compile(r"^(<\|.*\|>|<｜.*｜>|<unused.*>|<pad>|<mask>|\[@BOS@\])$")
_EOT_NAMES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
PREPEND_FIRST_KEY = "edgekit.tokenizer.prepend_first"  # read by runtimes.llamacpp


@dataclass
class Vocab:
    model: str  # "gpt2" | "llama"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    pre_check: str | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    prepend_first: bool = False  # see _sentencepiece: the runtime prefixes "▁" to a text starting with a word
    chat_template: str | None = None

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre or "default")
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.merges:
            w.add_token_merges(self.merges)
        for kind, tid in self.special_ids.items():
            getattr(w, f"add_{kind}_token_id")(tid)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.prepend_first:
            w.add_bool(PREPEND_FIRST_KEY, True)
        if self.chat_template:
            w.add_chat_template(self.chat_template)

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "pre": self.pre, "pre_check": self.pre_check, "size": len(self.tokens),
                "add_bos": self.add_bos, "add_eos": self.add_eos, "special_ids": self.special_ids}


def check_present(directory: Path) -> None:
    if not (directory / "tokenizer.json").exists() and not (directory / "tokenizer.model").exists():
        raise EdgekitError(f"{directory} has no tokenizer (tokenizer.json or tokenizer.model)",
                           "copy the tokenizer files from the model's source next to config.json")


def load(directory: Path, vocab_size: int,
         facts: TokenizerFacts | Callable[[], TokenizerFacts] | None = None) -> Vocab:
    """Read the checkpoint's tokenizer into a GGUF vocabulary padded to ``vocab_size`` entries.

    ``facts`` are the HF tokenizer's measured behaviour (:func:`hf_tokenizer.start` begun earlier), or a
    function waiting for them, called once the tokenizer files are parsed (so the parsing overlaps the
    measurement); measured now when not given.
    """
    check_present(directory)
    has_json, has_spm = (directory / "tokenizer.json").exists(), (directory / "tokenizer.model").exists()
    tj = read_json(directory / "tokenizer.json", "tokenizer", optional=True)
    model = tj.get("model", {}) if tj else {}
    byte_level = "ByteLevel" in json.dumps(tj.get("pre_tokenizer")) or "ByteLevel" in json.dumps(tj.get("decoder"))
    if has_json and model.get("type") == "BPE" and byte_level:
        hf = _facts(directory, facts)
        vocab = _bpe(directory, tj, hf, vocab_size)
    elif has_spm or model.get("type") in ("BPE", "Unigram"):
        pieces = _spm_model(directory / "tokenizer.model") if has_spm else _spm_json(tj)
        hf = _facts(directory, facts)
        vocab = _sentencepiece(pieces, hf, vocab_size)
    else:
        raise EdgekitError(f"the tokenizer in {directory} is a {model.get('type')} model, which GGUF does not hold",
                           "use a byte-level BPE or SentencePiece tokenizer")
    _specials(vocab, hf)
    vocab.chat_template = chat_template(directory)
    return vocab


def _facts(directory: Path, facts: TokenizerFacts | Callable[[], TokenizerFacts] | None) -> TokenizerFacts:
    if facts is None:
        return hf_tokenizer.start(directory).result()
    return facts if isinstance(facts, TokenizerFacts) else facts()


def _added(hf: TokenizerFacts) -> dict[int, hf_tokenizer.AddedToken]:
    return {tok.id: tok for tok in hf.added}


def _bpe(directory: Path, tj: dict[str, Any], hf: TokenizerFacts, vocab_size: int) -> Vocab:
    base = tj["model"].get("vocab", {})
    added = _added(hf)
    size = max(vocab_size, len(base), 1 + max(added, default=-1))
    tokens: list[str | None] = [None] * size
    types = [gguf.TokenType.UNUSED] * size
    for text, i in base.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, tok in added.items():
        text = tok.content
        if not tok.normalized:  # llama.cpp expects added tokens pre-normalized, as its converter does
            text = tok.roundtrip
        special = tok.special or bool(_LOOKS_SPECIAL.match(text))
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    cfg = read_json(directory / "tokenizer_config.json", "tokenizer config", optional=True)
    clean = cfg.get("clean_up_tokenization_spaces")
    pre = pretokenizer.derive(tj, clean_up_spaces=clean if isinstance(clean, bool) else None,
                              chkhsh=hf.chkhsh, where=f"{directory / 'tokenizer.json'}")
    merges = gguf.SpecialVocab(directory, load_merges=True, n_vocab=size).merges
    return Vocab("gpt2", tokens, [int(t) for t in types], merges=merges, pre=pre.name, pre_check=pre.check)


def _sentencepiece(pieces: tuple[list[str], list[float], list[int]], hf: TokenizerFacts, vocab_size: int) -> Vocab:
    """``pieces``: tokens, scores and types of the SentencePiece model (:func:`_spm_model` or :func:`_spm_json`)."""
    tokens, scores, types = pieces
    size = max(vocab_size, len(tokens), 1 + max(_added(hf), default=-1))
    while len(tokens) < size:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    for i, tok in _added(hf).items():  # added tokens override pieces, as llama.cpp's converter does
        if i < len(tokens) and tokens[i] == tok.content and types[i] != gguf.TokenType.NORMAL:
            continue
        tokens[i], scores[i] = tok.content, -1000.0
        types[i] = int(gguf.TokenType.CONTROL if tok.special else gguf.TokenType.USER_DEFINED)
    # measured, not configured: does the HF tokenizer put "▁" in front of the first word?
    add_space = bool(hf.first_piece) and hf.first_piece.startswith("\u2581")
    # llama.cpp's add_space_prefix puts "▁" at the start of the text AND after every special token (the
    # Llama 2 normalizer's Prepend). Metaspace with prepend_scheme=first (transformers 5's LlamaTokenizer)
    # prefixes only a text that starts the input: so no prefix in the file (a chat prompt starts with a
    # special token and then matches exactly), and edgekit's runtime adds the one leading "▁" itself
    # when the text starts with a word (:data:`PREPEND_FIRST_KEY`); llama.cpp alone misses only that one.
    check, first = None, "prepend_scheme=first" in hf.pre_tokenizer
    if add_space and first:
        add_space = False
        check = ("HF prepends '\u2581' only to a text that starts with a word (prepend_scheme=first): llama.cpp "
                 "alone omits it there, edgekit's runtime adds it")
    return Vocab("llama", tokens, types, scores=scores, pre="default", pre_check=check, add_space_prefix=add_space,
                 prepend_first=first and check is not None)


def _spm_model(path: Path) -> tuple[list[str], list[float], list[int]]:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise EdgekitError(f"{path} needs the sentencepiece package to read", "pip install sentencepiece") from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except Exception as exc:
        raise EdgekitError(f"cannot read {path}: {str(exc).splitlines()[0]}", "restore tokenizer.model") from None
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        t = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            t = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            t = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            t = gguf.TokenType.BYTE
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        types.append(int(t))
    return tokens, scores, types


def _spm_json(tj: dict[str, Any]) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece pieces from tokenizer.json alone (no tokenizer.model)."""
    model = tj["model"]
    unk = model.get("unk_token")
    if model["type"] == "Unigram":
        pieces = [(p, float(s)) for p, s in model["vocab"]]
    else:
        # llama.cpp's SPM tokenizer merges the highest-scoring pair first: score = -(rank of the merge
        # that makes the piece), the order HF's BPE applies merges in; unmerged pieces score 0.
        rank: dict[str, int] = {}
        for r, m in enumerate(model.get("merges", [])):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            rank.setdefault(a + b, r)
        ordered = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        pieces = [(p, -float(rank[p]) if p in rank else 0.0) for p, _ in ordered]
    tokens, scores, types = [], [], []
    for p, s in pieces:
        t = gguf.TokenType.NORMAL
        if p == unk:
            t = gguf.TokenType.UNKNOWN
        elif _BYTE.match(p):
            t = gguf.TokenType.BYTE
        tokens.append(p)
        scores.append(s)
        types.append(int(t))
    return tokens, scores, types


def _specials(vocab: Vocab, hf: TokenizerFacts) -> None:
    """bos/eos/unk/pad/eot ids and whether BOS/EOS are added, as the HF tokenizer actually behaves."""
    for kind, tid in hf.special_ids.items():
        if isinstance(tid, int) and 0 <= tid < len(vocab.tokens):
            vocab.special_ids[kind] = tid
    with_special, plain = hf.with_special, hf.plain
    n = len(plain)
    # find plain inside with_special: what comes before it was prepended, what follows was appended
    for start in range(len(with_special) - n + 1):
        if with_special[start:start + n] == plain:
            head, tail = with_special[:start], with_special[start + n:]
            break
    else:
        raise EdgekitError("the tokenizer's special-token template changes the text's own tokens",
                           "edgekit cannot express it in GGUF; use a tokenizer with a plain BOS/EOS template")
    if len(head) > 1 or len(tail) > 1:
        raise EdgekitError(f"the tokenizer adds {len(head)} leading and {len(tail)} trailing special tokens",
                           "GGUF holds at most one BOS and one EOS; simplify the post-processor")
    vocab.add_bos, vocab.add_eos = bool(head), bool(tail)
    if head:
        vocab.special_ids["bos"] = head[0]
    if tail:
        vocab.special_ids["eos"] = tail[0]
    text_to_id = {t: i for i, t in enumerate(vocab.tokens)}
    for name in _EOT_NAMES:
        tid = text_to_id.get(name)
        if tid is not None and vocab.types[tid] == gguf.TokenType.CONTROL:
            vocab.special_ids["eot"] = tid
            break
