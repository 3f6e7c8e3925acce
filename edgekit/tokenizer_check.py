"""Tokenization fidelity, checked at convert time: a probe conversation rendered and tokenized by
transformers (the reference) against the artifact's own tokenizer, the one its runtime uses (llama.cpp's
vocabulary for GGUF, the shipped tokenizer.json through ``tokenizers`` for ONNX and Core ML).

The result is stored in the artifact (``tokenizer_check`` in edgekit.json, ``edgekit.tokenizer_check``
in GGUF metadata) and shown by ``edgekit inspect``; a mismatch is one warning line at convert time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from edgekit.child import Job

PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris. It's on the Seine, 1,000 years old & more."},
    {"role": "user", "content": "And   of Italy?\nAnswer in one word: caf\u00e9 \U0001f680"},
]
PROBE_TEXT = "Hello world, it's a test.\n  Two spaces, caf\u00e9 and 1234."  # plain completion (no template)


def reference(hf: Any, template: str | None) -> dict[str, Any]:
    """What transformers makes of the probes: ``hf`` is a loaded transformers tokenizer."""
    out: dict[str, Any] = {"text": PROBE_TEXT, "text_ids": list(hf.encode(PROBE_TEXT, add_special_tokens=True))}
    if template:
        try:
            from runtimes.chat import render

            # transformers renders without limits: a hostile template would hang the conversion here, so
            # edgekit's limited renderer goes first (its EdgekitError lands in chat_error below)
            render(template, PROBE_CONVERSATION, bos_token=hf.bos_token, eos_token=hf.eos_token)
            rendered = hf.apply_chat_template(PROBE_CONVERSATION, chat_template=template, tokenize=False,
                                              add_generation_prompt=True)
            ids = hf.apply_chat_template(PROBE_CONVERSATION, chat_template=template, tokenize=True,
                                         add_generation_prompt=True, return_dict=False)
            out.update(chat=rendered, chat_ids=[int(i) for i in ids])
        except Exception as err:  # a template that refuses the probe: the plain text is still checked
            out["chat_error"] = f"{type(err).__name__}: {str(err)[:120]}"
    return out


def compare(ref: dict[str, Any], tokenize: Callable[[str, bool], Sequence[int]], where: str) -> dict[str, Any]:
    """``tokenize(text, add_special)`` is the artifact's tokenizer; returns the check record."""
    problems, total = [], 0
    cases = [("plain text", ref["text"], True, ref["text_ids"])]
    if "chat" in ref:
        cases.insert(0, ("chat prompt", ref["chat"], False, ref["chat_ids"]))
    for name, text, add_special, want in cases:
        got = [int(t) for t in tokenize(text, add_special)]
        total += len(want)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            problems.append(f"{name}: {len(got)} ids in {where} vs {len(want)} in transformers, first difference "
                            f"at position {at}")
    record: dict[str, Any] = {"ok": not problems, "tokens": total, "tokenizer": where}
    if problems:
        record["detail"] = "; ".join(problems)
    if "chat_error" in ref:
        record["chat_template"] = ref["chat_error"]
    return record


def skipped(why: str) -> dict[str, Any]:
    return {"ok": None, "tokens": 0, "detail": f"not checked: {why}"}


def warn(record: dict[str, Any], artifact: Path | str) -> None:
    """The one warning line for a mismatch (nothing when the tokenizers agree)."""
    if record.get("ok") is False:
        click.echo(f"edgekit: warning: {artifact}: its tokenizer does not match transformers: {record['detail']}",
                   err=True)


def check_hf_directory(source: Path, artifact_dir: Path) -> dict[str, Any]:
    """ONNX / Core ML: transformers on the source checkpoint vs ``tokenizers`` on the shipped tokenizer.json
    (what runtimes.hftokenizer loads)."""
    from edgekit.tokenizer import chat_template

    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as err:  # transformers raises many types for tokenizers it cannot load
        return skipped(f"transformers cannot load the tokenizer ({type(err).__name__})")
    if not (artifact_dir / "tokenizer.json").exists():
        return skipped("the artifact has no tokenizer.json")
    from runtimes.hftokenizer import HFTokenizer

    ref = reference(hf, chat_template(source))

    def check() -> dict[str, Any]:
        tok = HFTokenizer(artifact_dir)
        return compare(ref, lambda text, special: tok.tok.encode(text, add_special_tokens=special).ids,
                       "tokenizer.json")

    record = check()
    backend = getattr(hf, "backend_tokenizer", None)
    if record["ok"] is False and backend is not None:
        # transformers 5 rebuilds some tokenizers' pipelines from tokenizer_config.json (LlamaTokenizer forces
        # Metaspace prepend_scheme=first), so the file on disk is not what it runs: ship what it runs
        before = record["detail"]
        backend.save(str(artifact_dir / "tokenizer.json"))
        record = check()
        record["rewritten"] = f"tokenizer.json saved from transformers' tokenizer (the source's gave {before})"
    return record


def _check_hf_directory(source: str, artifact_dir: str) -> dict[str, Any]:
    return check_hf_directory(Path(source), Path(artifact_dir))


def start_hf_directory(source: Path, artifact_dir: Path, child: bool | None = None) -> Job[dict[str, Any]]:
    """Begin :func:`check_hf_directory`, in a child process unless transformers is loaded already (``child``
    forces where; :class:`edgekit.child.Job`); ``.result()`` waits for the record, ``.cancel()`` stops it."""
    from edgekit.child import Job

    return Job(__name__, _check_hf_directory, [str(source), str(artifact_dir)], "checking the tokenizer failed",
               "check that transformers loads it: AutoTokenizer.from_pretrained(DIR)", child=child)


def as_metadata(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def check_gguf(path: Path, ref: dict[str, Any]) -> dict[str, Any]:
    """GGUF: transformers' ids (``ref``, measured on the source) vs llama.cpp's vocabulary in ``path``,
    loaded alone (vocab_only) and used the way runtimes.llamacpp uses it."""
    if not ref:
        return skipped("no transformers reference")
    try:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:
        return skipped("llama-cpp-python is not installed")
    from runtimes.llamacpp import PREPEND_FIRST_KEY, tokenize

    try:
        with suppress_stdout_stderr(disable=False):  # llama.cpp logs context warnings even when not verbose
            llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError, OSError) as err:
        return {"ok": False, "tokens": 0, "detail": f"llama.cpp cannot load the vocabulary: {err}"}
    try:
        prepend_first = llm.metadata.get(PREPEND_FIRST_KEY) == "true"
        return compare(ref, lambda text, special: tokenize(llm, text, special, prepend_first), "llama.cpp")
    finally:
        llm.close()


if __name__ == "__main__":
    import sys

    from edgekit.child import serve

    serve(_check_hf_directory, sys.argv[1:3])
