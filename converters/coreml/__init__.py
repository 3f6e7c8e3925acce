"""``edgekit convert --to coreml``: a stateful ML program with its KV cache as Core ML state.

The recipe is Apple's "On Device Llama 3.1 with Core ML": the KV cache lives in ``ct.StateType``
buffers (iOS 18 / macOS 15), ``input_ids`` take 1..N tokens through ``ct.RangeDim`` so one model
does both prefill and decode, attention goes through the fused SDPA op. The torch module that is
traced is :class:`converters.coreml.wrapper.StatefulCausalLM` (see its docstring for the interface
and for why it does not wrap transformers' modules).

Output directory::

    model.mlpackage      the ML program (fp16 weights and compute by default, fp32 on request; the
                         KV-cache states are fp16 either way, the only state type Core ML has)
    tokenizer files      copied from the checkpoint (tokenizer.json, chat template, configs)
    edgekit.json         manifest; its ``coreml`` key records inputs, states, context and precision
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

OPTIONS = ("context", "precision")
DEFAULT_CONTEXT = 2048
PACKAGE = "model.mlpackage"


def _context(spec: Any, context: int | None) -> int:
    n = context if context is not None else min(spec.context_length, DEFAULT_CONTEXT)
    if n < 1:
        raise EdgekitError(f"--context {n} must be positive", "pass a positive number of tokens")
    if n > spec.context_length:
        raise EdgekitError(f"--context {n} exceeds the model's {spec.context_length} positions",
                           f"pass --context {spec.context_length} or less")
    return n


def convert(model: str, output: str | None, *, adapter: str | None = None, allow_pickle: bool = False,
            force: bool = False, progress: bool = True, context: int | None = None,
            precision: str | None = None, seam: Any = None) -> dict[str, Any]:
    """Convert ``model`` (+ ``adapter``) to a Core ML directory; returns a JSON-serialisable summary.

    ``seam``: per-tensor transforms (:mod:`converters.seam`; float replacements here)."""
    from converters import default_output
    from edgekit import validate
    from edgekit.atomic import atomic_output, check_destination
    from edgekit.checkpoint import open_checkpoint
    from edgekit.spec import from_config

    start = time.perf_counter()
    precision = precision or "fp16"
    if precision not in ("fp16", "fp32"):
        raise EdgekitError(f"--precision {precision} is not a Core ML precision", "pass fp16 or fp32")
    dest = Path(output) if output else default_output(model, "coreml")
    check_destination(dest, force, sources=(model, adapter))  # before any heavy work
    ckpt = open_checkpoint(model, adapter=adapter, allow_pickle=allow_pickle)
    spec = from_config(ckpt.config)
    from converters.coreml.wrapper import check_supported

    check_supported(spec)
    validate.tokenizer_files(ckpt.path, spec.vocab_size)  # the artifact will carry these files
    n = _context(spec, context)
    with atomic_output(dest, force, directory=True) as tmp:
        summary = _write(ckpt, spec, tmp, context=n, precision=precision, progress=progress, seam=seam)
    files = summary.pop("_files")
    from edgekit.tokenizer_check import warn

    warn(summary["tokenizer_check"], dest)
    return {"output": str(dest), "format": "coreml", "precision": precision, "dtype": precision,
            "bytes": sum(f["bytes"] for f in files.values()), "seconds": round(time.perf_counter() - start, 3),
            **summary}


def _write(ckpt: Any, spec: Any, out: Path, *, context: int, precision: str, progress: bool,
           seam: Any = None) -> dict[str, Any]:
    from converters.coreml import mlprogram, wrapper
    from edgekit import manifest as mf
    from edgekit import tokenizer_check
    from edgekit.atomic import temporary_files_in
    from edgekit.tokenizer import chat_template, copy_files, describe, stop_token_ids

    steps = ["read weights", "trace + convert", "save"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(steps), desc="coreml export", unit="step", leave=False, disable=None)
    try:
        # coremltools' intermediate packages (else /tmp/tmp*) live in, and go with, the artifact's temporary dir
        with temporary_files_in(out):
            module = wrapper.build(ckpt, spec, context, seam=seam)
            _tick(bar, steps[0])
            mlmodel = mlprogram.convert(module, precision)
            del module  # the torch copy of the weights is no longer needed while saving
            _tick(bar, steps[1])
            mlmodel.short_description = f"edgekit {spec.architecture} decoder, stateful KV cache of {context} tokens"
            mlmodel.user_defined_metadata.update({
                "edgekit.architecture": spec.architecture, "edgekit.context": str(context),
                "edgekit.precision": precision, "edgekit.source": str(ckpt.path)})
            mlmodel.save(str(out / PACKAGE))
            _tick(bar, steps[2])
    finally:
        if bar:
            bar.close()
    copy_files(ckpt.path, out)
    state_shape = [spec.num_layers, spec.num_kv_heads, context, spec.head_dim]
    coreml_info = {
        "package": PACKAGE, "precision": precision, "context": context,
        "minimum_deployment_target": "iOS18 / macOS15",
        "inputs": {"input_ids": {"dtype": "int32", "shape": [1, f"1..{context}"]},
                   "position": {"dtype": "int32", "shape": [1],
                                "meaning": "tokens already in the cache; this call's tokens go at position.."}},
        "states": {name: {"dtype": "float16", "shape": state_shape}  # Core ML states are fp16 only
                   for name in mlprogram.STATES},
        "outputs": {mlprogram.OUTPUT: {"dtype": "float32", "shape": [1, 1, spec.vocab_size],
                                       "meaning": "logits of the call's last token"}},
    }
    check = tokenizer_check.check_hf_directory(ckpt.path, out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = mf.build(
        format="coreml", source=str(ckpt.path), source_sha256=ckpt.sha256(),
        quant={"method": "none", "dtype": precision}, tokenizer=describe(ckpt.path),
        chat_template=chat_template(ckpt.path), context_length=context, files=files, root=out,
        adapter=str(ckpt.adapter.path) if ckpt.adapter is not None else None,
        architecture=spec.architecture, coreml=coreml_info,
        stop_token_ids=stop_token_ids(ckpt.path), tokenizer_check=check,
    )
    mf.write(out, manifest)
    return {"architecture": spec.architecture, "context_length": context, "package": PACKAGE,
            "stop_token_ids": manifest["stop_token_ids"], "tokenizer_check": check, "_files": manifest["files"]}


def _tick(bar: Any, what: str) -> None:
    if bar is not None:
        bar.set_postfix_str(what)
        bar.update(1)
