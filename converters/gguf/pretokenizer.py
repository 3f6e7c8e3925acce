"""Name the llama.cpp BPE pre-tokenizer (``tokenizer.ggml.pre``) from what tokenizer.json declares.

llama.cpp's own converter hashes the token ids of a probe text and looks the hash up in a list of
published tokenizers, so it refuses every tokenizer it has not seen (custom-trained, most fine-tunes
that touched the vocabulary). But llama.cpp does not run the hash: for each ``tokenizer.ggml.pre``
name it runs a fixed list of split regexes (src/llama-vocab.cpp) plus a few flags. So the name is a
function of the pre-tokenizer the tokenizer.json *declares*: its Split regexes, ByteLevel's built-in
GPT-2 regex, Digits. We reduce the declaration to that list of regexes and look it up in a table
of llama.cpp's regex sets (keyed by the regex as tokenizer.json spells it, which llama-vocab.cpp
quotes next to its adapted copy). Among names sharing a regex set, the BPE model's ``ignore_merges``
and the tokenizer's ``clean_up_tokenization_spaces`` pick the one whose llama.cpp flags agree.

The probe-text hash is still computed, as a cross-check: when it names a known tokenizer of the
same regex family, that exact name wins (it carries that model's flags); when it names another
family, the declaration wins and the disagreement is reported in the conversion summary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError

# tokenizers' ByteLevel(use_regex=True) runs this regex (tokenizers/src/pre_tokenizers/byte_level.rs)
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_CASED = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+{c}|[^\r\n\p{L}\p{N}]?"
          r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*{c}|\p{N}{n}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O = _CASED.replace("{c}", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?").replace("{n}", "{1,3}")
TEKKEN = _CASED.replace("{c}", "").replace("{n}", "")
DIGIT = r"\p{N}"


@dataclass(frozen=True)
class Candidate:
    """A llama.cpp pre-tokenizer name and the flags llama-vocab.cpp sets for it."""

    name: str
    ignore_merges: bool = False
    clean_spaces: bool = True


# regex list (in application order) -> llama.cpp names running exactly that list (llama-vocab.cpp)
TABLE: dict[tuple[str, ...], tuple[Candidate, ...]] = {
    (GPT2,): (Candidate("gpt-2"),),
    (DIGIT, GPT2): (Candidate("smollm", clean_spaces=False), Candidate("starcoder")),
    (LLAMA3,): (Candidate("llama-bpe", ignore_merges=True), Candidate("dbrx")),
    (QWEN2,): (Candidate("qwen2", clean_spaces=False), Candidate("stablelm2")),
    (QWEN35,): (Candidate("qwen35", clean_spaces=False),),
    (GPT4O,): (Candidate("gpt-4o", clean_spaces=False),),
    (TEKKEN,): (Candidate("tekken", ignore_merges=True, clean_spaces=False),),
}

# A few probe-text hashes from llama.cpp's convert_hf_to_gguf.py (get_vocab_base_pre), for the cross-check.
KNOWN_HASHES: dict[str, str] = {
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}
# names llama-vocab.cpp treats as the same regex family as a table entry
_FAMILY_ALIASES = {"olmo": "gpt-2", "command-r": "smollm", "smaug-bpe": "dbrx", "falcon3": "llama-bpe",
                   "deepseek-r1-qwen": "qwen2"}

# llama.cpp's probe text (convert_hf_to_gguf.py, get_vocab_base_pre)
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


@dataclass(frozen=True)
class PreTokenizer:
    name: str
    declared: tuple[str, ...]
    hash_name: str | None  # what llama.cpp's hash table says, if it knows the tokenizer
    check: str  # "agrees" | "unknown hash" | "hash names <x>, declaration wins"


def _steps(pre: dict[str, Any] | None, where: str) -> list[str]:
    """The regexes a (possibly nested) pre_tokenizer runs, in order."""
    if pre is None:
        raise EdgekitError(f"{where} declares no pre_tokenizer, which llama.cpp's BPE cannot reproduce",
                           "convert a tokenizer with a pre_tokenizer (e.g. ByteLevel)")
    kind = pre.get("type")
    if kind == "Sequence":
        out: list[str] = []
        for p in pre.get("pretokenizers", []):
            out += _steps(p, where)
        return out
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise EdgekitError(f"{where} uses ByteLevel(add_prefix_space=true), which llama.cpp's BPE does not do",
                               "re-save the tokenizer with add_prefix_space=false")
        return [GPT2] if pre.get("use_regex", True) else []
    if kind == "Digits":
        return [DIGIT if pre.get("individual_digits") else r"\p{N}+"]
    if kind == "Split":
        pattern = pre.get("pattern", {})
        regex = pattern.get("Regex") if "Regex" in pattern else pattern.get("String")
        if pre.get("invert") or pre.get("behavior") not in ("Isolated", None) or regex is None:
            raise EdgekitError(f"{where} has a Split pre-tokenizer ({pre.get('behavior')}, invert="
                               f"{pre.get('invert')}) with no llama.cpp equivalent",
                               "convert with a tokenizer whose pre-tokenizer llama.cpp supports")
        return [regex]
    raise EdgekitError(f"{where} uses the {kind} pre-tokenizer, which has no llama.cpp BPE equivalent",
                       "use a byte-level BPE or SentencePiece tokenizer")


def probe_hash(tokenizer: Any) -> str:
    """llama.cpp's chkhsh: sha256 of str(token ids) of the probe text (special tokens added)."""
    return hashlib.sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()


def derive(tokenizer_json: dict[str, Any], *, clean_up_spaces: bool | None, chkhsh: str | None,
           where: str) -> PreTokenizer:
    """The llama.cpp pre-tokenizer for a byte-level BPE tokenizer.json, or EdgekitError if none fits."""
    declared = tuple(_steps(tokenizer_json.get("pre_tokenizer"), where))
    candidates = TABLE.get(declared)
    if not candidates:
        shown = " + ".join(r[:40] for r in declared) or "no split"
        raise EdgekitError(f"{where} declares a BPE pre-tokenizer ({shown}) with no llama.cpp equivalent",
                           "llama.cpp supports the GPT-2, Llama 3, Qwen2, GPT-4o, Tekken and StarCoder/SmolLM "
                           "pre-tokenizers; re-train or convert the tokenizer to one of them")
    ignore_merges = bool(tokenizer_json.get("model", {}).get("ignore_merges", False))

    def fits(c: Candidate) -> int:
        return (c.ignore_merges == ignore_merges) * 2 + (clean_up_spaces is None or c.clean_spaces == clean_up_spaces)

    best = max(candidates, key=fits)  # max keeps the first of equals: table order is llama.cpp's usual name
    if best.ignore_merges != ignore_merges:
        raise EdgekitError(f"{where}: llama.cpp has the {declared[0][:30]}... pre-tokenizer only with "
                           f"ignore_merges={best.ignore_merges}, the tokenizer has {ignore_merges}",
                           "set ignore_merges to match in tokenizer.json")
    hash_name = KNOWN_HASHES.get(chkhsh or "")
    family = {c.name for c in candidates}
    if hash_name is None:
        check = "unknown hash"
    elif _FAMILY_ALIASES.get(hash_name, hash_name) in family:
        best = Candidate(hash_name)
        check = "agrees"
    else:
        check = f"hash names {hash_name}, declaration wins"
    return PreTokenizer(best.name, declared, hash_name, check)
