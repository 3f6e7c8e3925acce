"""``edgekit convert --to onnx``: a decoder with KV cache, dynamic or static-shape, for onnxruntime.

How the graph is made, and why. Three candidates were measured on the tiny random Llama (2 layers,
hidden 64) and the 1B-shaped benchmark checkpoint (``benchmarks/convert_onnx.py``):

* transformers 5's exporter (``transformers.exporters.OnnxExporter``, torch.export + dynamo): 17 s
  for the 2-layer tiny model, 470 MB peak RSS; it needs the whole model materialised in torch, traces
  only what the sample inputs exercise (the sample without a cache gave no ``past_key_values`` inputs),
  and names the cache ``past_key_values.layers.{i}.keys``, so optimum's names need a rename pass.
  It cannot express the static form (fixed KV buffers + mask) without a hand-written wrapper anyway.
* ``torch.onnx.export`` directly: the same tracing cost and memory, same wrapper needed.
* building the graph node by node with ``onnx.helper`` from the checkpoint's tensors, as
  onnxruntime-genai's model builder does (chosen). The graph build takes well under a second for the
  tiny models (a CLI run is ~4 s, mostly interpreter and torch import); the weights take the GGUF
  writer's streaming path (:mod:`converters.streaming`): float16/float32 tensors memory-mapped and read
  once, cast (and transposed) in row chunks on every core straight into the external-data file, whole
  tensors already in the graph's dtype copied by the kernel, the file hashed as it is written, while the
  graph is built; so models past 2 GiB need nothing special and peak memory is a few tensors.
  ``benchmarks/convert_onnx.py`` measures it against onnxruntime-genai's builder on the 1B-shaped checkpoint.
  Fidelity is measured, not assumed: tests compare logits with transformers for every architecture
  (measured max |diff| 4e-7 .. 2e-6 of the largest |logit|, bound 1e-4; 1.9e-6 on the 1B fp32 export).
  The graph uses standard ops only, so the same file also serves NNAPI / CoreML; rope tables are
  transformers' (its formula in torch for plain RoPE, its rotary classes for scaled RoPE).

Names follow optimum's ``text-generation-with-past``: inputs ``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values.{i}.key/.value`` (batch, kv_heads, past, head_dim); outputs
``logits``, ``present.{i}.key/.value``. The dynamic graph's present is past + new (what optimum and
onnxruntime-genai expect). The static graph (``--static``): batch 1, every dimension fixed, integer
inputs int32 (NNAPI has no int64), KV inputs are buffers of ``--context`` slots, ``attention_mask``
(1, context + chunk) marks valid buffer slots followed by valid chunk tokens, and present holds only
the chunk's new K/V, which the host writes into its buffers (slot = position); no scatter op needed.
It comes as ``model.onnx`` (``--prefill-chunk`` tokens) and, when the chunk is longer than 1 token,
``decode.onnx`` (1 token); both read the same ``model.onnx.data``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

OPTIONS = ("dtype", "static", "context", "prefill_chunk", "ort")
DEFAULT_STATIC_CONTEXT = 1024
DEFAULT_PREFILL_CHUNK = 32


def _static_sizes(spec: Any, context: int | None, chunk: int | None) -> tuple[int, int]:
    from converters.onnx.decoder import sliding_window

    # defaults: context + chunk must fit the model's positions (rope table) and any sliding window
    limit = min(spec.context_length, sliding_window(spec) or spec.context_length)
    c = chunk if chunk is not None else min(DEFAULT_PREFILL_CHUNK, max(limit // 8, 1))
    n = context if context is not None else max(min(limit - c, DEFAULT_STATIC_CONTEXT), 1)
    if n < 1 or c < 1:
        raise EdgekitError(f"--context {n} and --prefill-chunk {c} must be positive", "pass positive sizes")
    if c > n:
        raise EdgekitError(f"--prefill-chunk {c} is larger than --context {n}",
                           "pass a chunk no larger than the context")
    if n + c > spec.context_length:
        raise EdgekitError(f"--context {n} plus --prefill-chunk {c} exceeds the model's {spec.context_length} "
                           "positions", f"pass --context {max(spec.context_length - c, 1)} or less")
    return n, c


def convert(model: str, output: str | None, *, adapter: str | None = None, allow_pickle: bool = False,
            force: bool = False, progress: bool = True, dtype: str | None = None, static: bool = False,
            context: int | None = None, prefill_chunk: int | None = None, ort: bool = False,
            seam: Any = None) -> dict[str, Any]:
    """Export ``model`` (+ ``adapter``) to an ONNX directory; returns a JSON-serialisable summary.

    ``seam``: per-tensor storage and transforms (:mod:`converters.seam`; a quantizer)."""
    from converters import default_output
    from edgekit import validate
    from edgekit.atomic import atomic_output, check_destination
    from edgekit.checkpoint import open_checkpoint
    from edgekit.spec import from_config

    start = time.perf_counter()
    dtype = dtype or "fp32"
    if not static and (context is not None or prefill_chunk is not None):
        raise EdgekitError("--context and --prefill-chunk only apply to a static export", "add --static")
    dest = Path(output) if output else default_output(model, "onnx-static" if static else "onnx")
    check_destination(dest, force, sources=(model, adapter))  # before opening anything large
    ckpt = open_checkpoint(model, adapter=adapter, allow_pickle=allow_pickle)
    spec = from_config(ckpt.config)
    from converters.onnx.decoder import check_static_window, check_supported

    check_supported(spec)
    validate.tokenizer_files(ckpt.path, spec.vocab_size)  # the artifact will carry these files
    sizes = _static_sizes(spec, context, prefill_chunk) if static else None
    if sizes:
        check_static_window(spec, *sizes)
    with atomic_output(dest, force, directory=True) as tmp:
        summary = _write(ckpt, spec, tmp, dtype=dtype, sizes=sizes, ort=ort, progress=progress, seam=seam)
    files = summary.pop("_files")
    from edgekit.tokenizer_check import warn

    warn(summary["tokenizer_check"], dest)
    return {"output": str(dest), "format": "onnx", "dtype": dtype, "static": static,
            "bytes": sum(f["bytes"] for f in files.values()), "seconds": round(time.perf_counter() - start, 3),
            **summary}


def _write(ckpt: Any, spec: Any, out: Path, *, dtype: str, sizes: tuple[int, int] | None, ort: bool,
           progress: bool, seam: Any = None) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from converters.onnx import genai, mobile
    from converters.onnx.decoder import Variant
    from converters.onnx.graph import OPSET
    from edgekit import manifest as mf
    from edgekit import tokenizer_check
    from edgekit.tokenizer import chat_template, copy_files, describe, stop_token_ids

    np_dtype = np.dtype(np.float16 if dtype == "fp16" else np.float32)
    context = sizes[0] if sizes else spec.context_length
    graphs: dict[str, Variant] = {}
    if sizes:
        n, c = sizes
        graphs["model.onnx"] = Variant(np_dtype, static=True, tokens=c, context=n)
        if c > 1:
            graphs["decode.onnx"] = Variant(np_dtype, static=True, tokens=1, context=n)
    else:
        graphs["model.onnx"] = Variant(np_dtype)
    copy_files(ckpt.path, out)
    # what needs no weights runs beside the export: the tokenizer check on the files just copied (a child
    # process, started first: it is the slowest to start), the source's sha256 (which also refuses NaN /
    # infinite weights) on a thread
    check_job = tokenizer_check.start_hf_directory(ckpt.path, out)
    side = ThreadPoolExecutor(max_workers=1)
    source_sha = side.submit(ckpt.sha256)
    try:
        weights = _stream(ckpt, spec, out, graphs, dtype, sizes, context, progress, seam)
        if not sizes:
            (out / "genai_config.json").write_text(json.dumps(genai.config(spec, context), indent=4) + "\n")
        usability = {name: mobile.usability(out / name) for name in graphs}
        if ort:
            mobile.to_ort(out)
        check = check_job.result()
    except BaseException:
        check_job.cancel()  # before the temporary directory goes: the check may write tokenizer.json there
        side.shutdown(wait=True, cancel_futures=True)
        raise
    onnx_info = {
        "opset": OPSET, "dtype": dtype, "static": bool(sizes), "graphs": {
            name: {"tokens": v.tokens or None, "context": v.context or None} for name, v in graphs.items()},
        "inputs": ["input_ids", "attention_mask", "position_ids", "past_key_values.{i}.key",
                   "past_key_values.{i}.value"],
        "outputs": ["logits", "present.{i}.key", "present.{i}.value"],
        "kv_shape": ["batch", spec.num_kv_heads, "seq", spec.head_dim],
        "present": "new chunk only (host writes it at slot = position)" if sizes else "past + new",
        "index_dtype": "int32" if sizes else "int64",
        "genai_config": not sizes,
    }
    files = sorted(p for p in out.rglob("*") if p.is_file())
    try:
        source_sha256 = source_sha.result()
    finally:
        side.shutdown(wait=False)
    manifest = mf.build(
        format="onnx", source=str(ckpt.path), source_sha256=source_sha256, hashed={weights.path: weights.sha256},
        quant={"method": "none", "dtype": dtype}, tokenizer=describe(ckpt.path), chat_template=chat_template(ckpt.path),
        context_length=context, files=files, root=out,
        adapter=str(ckpt.adapter.path) if ckpt.adapter is not None else None,
        architecture=spec.architecture, onnx=onnx_info, mobile_usability=usability,
        stop_token_ids=stop_token_ids(ckpt.path), tokenizer_check=check,
    )
    mf.write(out, manifest)
    return {"architecture": spec.architecture, "graphs": list(graphs), "context_length": context,
            "mobile_usability": {g: {ep: {k: r[k] for k in ("partitions", "supported_share", "verdict")}
                                     for ep, r in u.items()} for g, u in usability.items()},
            "stop_token_ids": manifest["stop_token_ids"], "tokenizer_check": check, "_files": manifest["files"]}


def _stream(ckpt: Any, spec: Any, out: Path, graphs: dict[str, Any], dtype: str, sizes: tuple[int, int] | None,
            context: int, progress: bool, seam: Any) -> Any:
    """Build every graph while its weights stream into model.onnx.data; returns the closed WeightFile."""
    from converters.onnx.decoder import DecoderBuilder, Weights
    from converters.onnx.graph import Graph, WeightFile
    from converters.seam import NONE
    from edgekit.rope import tables

    # the static graph gathers positions up to context + chunk - 1; the dynamic one up to the model's limit
    rope_len = (sizes[0] + sizes[1]) if sizes else spec.context_length
    rope = tables(ckpt.config, spec, rope_len) if spec.rope is not None else None
    weights = WeightFile(out / "model.onnx.data")
    reader = Weights(ckpt)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.num_layers * len(graphs), desc="onnx export", unit="layer", leave=False, disable=None)
    try:
        for filename, variant in graphs.items():
            graph = Graph(weights)
            DecoderBuilder(graph, spec, ckpt.config, reader, variant, rope,
                           progress=bar.update if bar else None, seam=seam or NONE).build()
            meta = {"edgekit.architecture": spec.architecture, "edgekit.dtype": dtype,
                    "edgekit.static": json.dumps(variant.static), "edgekit.tokens": str(variant.tokens),
                    "edgekit.context": str(variant.context or context)}
            graph.save(out / filename, f"edgekit decoder for {spec.architecture}", meta)
        weights.close()
    except BaseException:
        weights.abort()
        raise
    finally:
        if bar:
            bar.close()
    return weights
