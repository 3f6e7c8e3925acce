"""What a checkpoint's tokenizer is: kind, vocabulary size, special tokens, chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit import jsonfile

# what an artifact directory carries of the checkpoint besides the weights: tokenizer, chat template, configs
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model",
         "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "config.json")


def read_json(path: Path) -> dict[str, Any]:
    """An optional JSON file of a checkpoint or artifact: {} when it is missing, an error when it is not a JSON
    object (:func:`edgekit.jsonfile.read_json`)."""
    return jsonfile.read_json(path, path.name, optional=True)


def copy_files(src: Path, dst: Path) -> list[str]:
    """Copy the :data:`FILES` ``src`` has into ``dst``; returns their names."""
    import shutil

    copied = [name for name in FILES if (src / name).exists()]
    for name in copied:
        shutil.copy2(src / name, dst / name)
    return copied


def chat_template(directory: Path) -> str | None:
    """The chat template string: ``chat_template.jinja`` (transformers 5) or tokenizer_config.json's."""
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config = read_json(directory / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def describe(directory: Path) -> dict[str, Any]:
    """{"kind": "BPE" | "SentencePiece" | "none", "byte_level": bool, "vocab_size": int | None,
    "files": [...], "chat_template": bool, "special_tokens": {...}} for a checkpoint directory."""
    tj = read_json(directory / "tokenizer.json")
    files = [f for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                         "special_tokens_map.json") if (directory / f).exists()]
    kind, byte_level, vocab = "none", False, None
    if tj:
        model = tj.get("model", {})
        mtype = model.get("type")
        vocab_map = model.get("vocab")
        vocab = len(vocab_map) if vocab_map is not None else None
        if vocab is not None:
            vocab = max(vocab, 1 + max((t.get("id", 0) for t in tj.get("added_tokens", [])), default=-1))
        byte_level = "ByteLevel" in json.dumps(tj.get("pre_tokenizer")) or "ByteLevel" in json.dumps(tj.get("decoder"))
        if mtype == "Unigram" or (mtype == "BPE" and not byte_level and model.get("byte_fallback")):
            kind = "SentencePiece"
        elif mtype == "BPE":
            kind = "BPE"
        elif mtype:
            kind = mtype
    elif (directory / "tokenizer.model").exists():
        kind = "SentencePiece"
    config = read_json(directory / "tokenizer_config.json")
    specials = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            specials[key] = value
    return {"kind": kind, "byte_level": byte_level, "vocab_size": vocab, "files": files,
            "chat_template": chat_template(directory) is not None, "special_tokens": specials}


def _token_ids(directory: Path) -> tuple[Any, set[str]]:
    """(text -> id lookup, texts of the special added tokens) from tokenizer.json, else tokenizer.model."""
    tj = directory / "tokenizer.json"
    if tj.exists():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(tj))
        except Exception:  # a broken tokenizer.json is reported by the converters; no stop tokens from it
            return (lambda text: None), set()
        specials = {t["content"] for t in read_json(tj).get("added_tokens", []) if t.get("special")}
        return tok.token_to_id, specials
    model = directory / "tokenizer.model"
    if model.exists():
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor(model_file=str(model))
        unk = sp.unk_id()
        specials = {sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i)}
        return (lambda text: (None if (i := sp.piece_to_id(text)) == unk and text != sp.id_to_piece(unk) else i)), \
            specials
    return (lambda text: None), set()


def template_end_token(template: str | None, specials: set[str]) -> str | None:
    """The special token the chat template writes right after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ``</s>`` ...): the one a chat model emits to end its turn."""
    if not template or not specials:
        return None
    from runtimes.chat import render

    marker = "\u2063edgekit-answer\u2063"
    try:
        text = render(template, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}],
                      add_generation_prompt=False, bos_token="", eos_token="")
    except Exception:  # a template that refuses this conversation says nothing about its end token
        return None
    at = text.find(marker)
    if at < 0:
        return None
    tail = text[at + len(marker):]
    hits = [(tail.find(s), s) for s in specials if s and tail.find(s) >= 0]
    return min(hits)[1] if hits else None


def stop_token_ids(directory: Path) -> list[int]:
    """The tokens that end generation, the same for every format: generation_config.json's eos_token_id
    (one id or a list; config.json's when there is no generation_config), the tokenizer's eos token, and
    the token the chat template ends an assistant turn with."""
    token_id, specials = _token_ids(directory)
    ids: set[int] = set()
    eos = read_json(directory / "generation_config.json").get("eos_token_id")
    if eos is None:
        eos = read_json(directory / "config.json").get("eos_token_id")
    for value in eos if isinstance(eos, list) else [eos]:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            ids.add(value)
    config = read_json(directory / "tokenizer_config.json")
    eos_text = config.get("eos_token")
    eos_text = eos_text.get("content") if isinstance(eos_text, dict) else eos_text
    end = template_end_token(chat_template(directory), specials | ({eos_text} if isinstance(eos_text, str) else set()))
    for text in (eos_text, end):
        if isinstance(text, str) and token_id(text) is not None:
            ids.add(int(token_id(text)))
    return sorted(ids)
