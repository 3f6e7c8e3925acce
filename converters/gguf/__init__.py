"""GGUF converter: ``edgekit convert MODEL --to gguf [--outtype ...] [--adapter DIR [--adapter-only]]``.

Written with the ``gguf`` package (GGUFWriter, constants, TensorNameMap, quants) so names, keys and
encodings are llama.cpp's own. Layout: :mod:`base` (the conversion, start to end), :mod:`stream`
(planning and streaming tensors into the file), :mod:`types` (llama.cpp's type rules), :mod:`model`
(the mapping a family specialises), :mod:`archs` (one module per family), :mod:`tokenizer`,
:mod:`pretokenizer` and :mod:`hf_tokenizer` (vocabulary), :mod:`moe` (expert stacking), :mod:`lora`
(adapter-only output).
"""

from __future__ import annotations

from typing import Any

OPTIONS = ("outtype", "adapter_only")


def convert(model: str, output: str | None, *, adapter: str | None = None, allow_pickle: bool = False,
            force: bool = False, progress: bool = True, **options: Any) -> dict[str, Any]:
    """Convert ``model`` to GGUF; see :func:`converters.gguf.base.convert`."""
    # measuring the HF tokenizer takes a child process ~2 s: start it before importing the converter
    from converters.gguf import hf_tokenizer

    facts = None if options.get("adapter_only") else hf_tokenizer.start_local(model)
    try:
        from converters.gguf.base import convert as run

        return run(model, output, adapter=adapter, allow_pickle=allow_pickle, force=force, progress=progress,
                   facts=facts, **options)
    finally:
        if facts is not None:
            facts.cancel()
