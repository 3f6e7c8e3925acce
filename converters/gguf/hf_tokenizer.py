"""What the Hugging Face tokenizer does, measured by loading it with transformers.

GGUF needs facts only the HF tokenizer itself settles (transformers 5 rebuilds a tokenizer's pipeline
per class from tokenizer_config.json, so tokenizer.json alone is not the truth): the added tokens and
their flags, the BOS/EOS ids it adds, llama.cpp's probe hash, whether SentencePiece text gets a
leading "▁". Loading transformers pulls in torch: about 6 s and 300 MB, most of what converting a 1B
model costs otherwise. So unless transformers is already loaded, :func:`start` measures in a child
process with torch hidden from it (transformers then loads only its tokenizer half: about 2 s and
70 MB), running while the parent opens and plans the checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.child import Job, serve
from edgekit.errors import EdgekitError

PROBE = "Hello world"  # what BOS/EOS the tokenizer adds is read off its encoding of this text


@dataclass
class AddedToken:
    id: int
    content: str
    special: bool
    normalized: bool
    roundtrip: str  # decode(encode(content)) without special tokens: llama.cpp's text for unnormalized tokens


@dataclass
class TokenizerFacts:
    added: list[AddedToken]
    special_ids: dict[str, int | None]  # bos/eos/unk/pad as the tokenizer names them
    with_special: list[int]  # PROBE encoded with special tokens
    plain: list[int]  # PROBE encoded without
    chkhsh: str  # llama.cpp's pre-tokenizer hash of the probe text
    first_piece: str | None  # the first token of "a": starts with "▁" if a space prefix is added
    pre_tokenizer: str  # repr of the backend pre-tokenizer
    probe: dict[str, Any] = field(default_factory=dict)  # edgekit.tokenizer_check.reference: the fidelity probes


def measure(directory: Path) -> TokenizerFacts:
    """Load ``directory``'s tokenizer with transformers (no remote code) and measure it."""
    from transformers import AutoTokenizer

    from converters.gguf.pretokenizer import probe_hash
    from edgekit import tokenizer_check
    from edgekit.tokenizer import chat_template

    try:
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise EdgekitError(f"cannot load the tokenizer in {directory}: {str(exc).splitlines()[0][:200]}",
                           "restore tokenizer.json / tokenizer.model from the model's source") from None
    added = [AddedToken(int(i), tok.content, bool(tok.special), bool(tok.normalized),
                        hf.decode(hf.encode(tok.content, add_special_tokens=False)))
             for i, tok in sorted(hf.added_tokens_decoder.items())]
    specials = {}
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(hf, f"{kind}_token_id", None)
        specials[kind] = tid if isinstance(tid, int) else None
    first = hf.convert_ids_to_tokens(hf.encode("a", add_special_tokens=False))
    backend = getattr(hf, "_tokenizer", None)
    return TokenizerFacts(added, specials, list(hf.encode(PROBE, add_special_tokens=True)),
                          list(hf.encode(PROBE, add_special_tokens=False)), probe_hash(hf),
                          first[0] if first else None, str(backend.pre_tokenizer) if backend is not None else "",
                          tokenizer_check.reference(hf, chat_template(directory)))


def _measured(directory: str) -> dict[str, Any]:
    return asdict(measure(Path(directory)))


def _facts(data: dict[str, Any]) -> TokenizerFacts:
    return TokenizerFacts(**{**data, "added": [AddedToken(**a) for a in data["added"]]})


def start(directory: Path, child: bool | None = None) -> Job[TokenizerFacts]:
    """Begin measuring ``directory``'s tokenizer, in a child process unless transformers is loaded already
    (``child`` forces the choice; :class:`edgekit.child.Job`); ``.result()`` waits for the facts."""
    return Job(__name__, _measured, [str(directory)], f"measuring the tokenizer in {directory} failed",
               "check that transformers loads it: AutoTokenizer.from_pretrained(DIR)", decode=_facts, child=child)


def start_local(ref: str) -> Job[TokenizerFacts] | None:
    """:func:`start` for a local model directory holding tokenizer files; None for anything else
    (hub ids, missing paths), which the converter resolves and reports in its own order."""
    path = Path(ref).expanduser()
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        return None
    return start(path.resolve())


if __name__ == "__main__":
    serve(_measured, sys.argv[1:2])
