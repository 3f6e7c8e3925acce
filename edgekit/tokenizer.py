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
