"""Shared test vectors for the apps' tokenizer, chat format and decoding, generated from a bundle::

    python -m edgekit.package.vectors BUNDLE [BUNDLE ...] -o mobile_demo/vectors/

One JSON file per model: the bundle.json sections the apps read, text -> ids over a probe set (prose,
code, Chinese, emoji, whitespace runs, special tokens, ...), chat -> prompt string and ids, ids -> text,
and greedy continuations from the reference loop (Android bundle). The ids come from the bundle's own
tokenizer.json through the ``tokenizers`` library; the Python tests check them against transformers and
``edgekit run``, the Kotlin and Swift unit tests check the apps' code against them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

PROBES: list[tuple[str, str]] = [
    ("prose", "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
              "in want of a wife."),
    ("contractions", "I'm sure you'll say it's the best they've ever had; we'd agree, wouldn't we?"),
    ("digits", "In 1813, 3.14159 of 42,000 pounds = 12345678 pence."),
    ("code", "def add(a, b):\n    return a + b  # sum\n\nif __name__ == \"__main__\":\n\tprint(add(1, 2))\n"),
    ("chinese", "傲慢与偏见是简·奥斯汀的小说。"),
    ("emoji", "Tea? ☕️ Yes 👍🏽 — and cake 🍰🎉!"),
    ("accents", "Café déjà vu, naïve façade, Ångström, Zürich."),
    ("whitespace", "a  b   c    d\n\n\nend \t tab\r\nwindows   "),
    ("leading_space", "   leading and trailing   "),
    ("nbsp", "price:\u00a0100\u2009€ and\u3000ideographic"),
    ("special_tokens", "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"),
    ("special_inline", "before<|im_end|>after <|im_start|> spaced"),
    ("punctuation", "Well!!! ... (really?) [yes] {no} <maybe> @home #tag $5 %20 ^_^ ~~~"),
    ("mixed_scripts", "Привет мир! مرحبا שלום こんにちは 안녕하세요"),
    ("empty", ""),
]

CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there 👋"}],
    [{"role": "user", "content": "Who wrote Emma?"}, {"role": "assistant", "content": "Jane Austen."},
     {"role": "user", "content": "And when?\n  Answer briefly."}],
]

GREEDY_PROMPTS: list[tuple[str, bool]] = [("What is the capital of France?", True),
                                          ("It is a truth universally acknowledged", False)]


def generate(bundle_dir: Path, greedy_tokens: int = 32) -> dict[str, Any]:
    from edgekit.package import reference
    from edgekit.package.chatformat import apply

    bundle = reference.Bundle(bundle_dir)
    meta = bundle.meta
    tok = bundle.tokenizer
    tok_file = bundle_dir / meta["tokenizer"]["file"]
    vectors: dict[str, Any] = {
        "generated_by": "python -m edgekit.package.vectors",
        "model": meta["model"]["name"],
        "tokenizer_sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest(),
        "bundle": {k: meta[k] for k in ("tokenizer", "chat", "special_ids", "sampling", "context_length")},
        "encode": [], "chat": [], "decode": [], "greedy": [],
    }
    for name, text in PROBES:
        ids = tok.encode(text, add_special_tokens=False).ids
        vectors["encode"].append({"name": name, "text": text, "ids": ids, "ids_with_special": bundle.encode(text)})
        vectors["decode"].append({"name": name, "ids": ids, "text": bundle.decode(ids)})
    for messages in CHATS:
        prompt = bundle.render_chat(messages)
        if meta["chat"]["format"] is not None and apply(meta["chat"]["format"], messages) != prompt:
            raise SystemExit(f"the bundle's chat format does not render {messages!r} as its template does")
        vectors["chat"].append({"messages": messages, "add_generation_prompt": True, "prompt": prompt,
                                "ids": tok.encode(prompt, add_special_tokens=False).ids})
    if meta["runtime"]["engine"] == "onnxruntime":
        for prompt, chat in GREEDY_PROMPTS:
            result = reference.run(bundle_dir, prompt, chat, greedy_tokens)
            vectors["greedy"].append({"prompt": prompt, "chat": chat, "prompt_ids": result["prompt_ids"],
                                      "tokens": result["tokens"], "text": result["text"]})
    return vectors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the apps' shared test vectors from edgekit bundles.")
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory for NAME.json files")
    parser.add_argument("--name", action="append", help="file name (without .json) per bundle, in order")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for i, bundle in enumerate(args.bundles):
        vectors = generate(bundle)
        name = args.name[i] if args.name and i < len(args.name) else vectors["model"]
        path = args.output / f"{name}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(vectors, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path} ({len(vectors['encode'])} texts, {len(vectors['chat'])} chats, "
              f"{len(vectors['greedy'])} greedy runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
