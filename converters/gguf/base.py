"""The shared GGUF converter: checkpoint -> family jobs -> tensors written one at a time.

Order of work, so that every input problem surfaces before the destination is touched and peak
memory stays at about one tensor:
1. open the checkpoint (validates weights), describe it (ModelSpec), pick the family, read the
   tokenizer (validates the pre-tokenizer), check the destination;
2. plan: run every job on ``meta`` tensors to learn each output's shape, then pick its GGML type
   with llama.cpp's rules and register it with gguf's GGUFWriter (``add_tensor_info``);
3. write header, metadata and tensor table, then for each job read its inputs, build the tensor,
   encode it (F32/F16/BF16 by torch, Q8_0 by ``gguf.quants``) and ``write_tensor_data`` it;
   the file is a temporary beside the destination, renamed at the end (edgekit.atomic).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from converters.gguf import archs, tokenizer
from converters.gguf.model import Job, Model
from edgekit.atomic import atomic_output, check_destination
from edgekit.checkpoint import Checkpoint, open_checkpoint
from edgekit.errors import EdgekitError
from edgekit.spec import from_config

Q = gguf.GGMLQuantizationType
OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}
# tensors llama.cpp's converter always keeps in F32 (routers, learned positions), besides 1-D and norms
_ALWAYS_F32 = {gguf.TENSOR_NAMES[t] for t in (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP,
                                              gguf.MODEL_TENSOR.POS_EMBD)}
_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def torch_dtype(name: str):
    import torch

    if name not in _TORCH_DTYPES:
        raise EdgekitError(f"checkpoint tensor dtype {name} is not a float type GGUF conversion reads",
                           "re-save the checkpoint in float32, float16 or bfloat16")
    return getattr(torch, _TORCH_DTYPES[name])


def resolve_outtype(outtype: str | None, ckpt: Checkpoint) -> Q:
    """``auto`` (the default) is llama.cpp's: the checkpoint's 16-bit type, F16 for float32 weights."""
    if outtype and outtype != "auto":
        return OUTTYPES[outtype]
    dtypes = {info.dtype for info in ckpt.tensors.values() if len(info.shape) > 1}
    return Q.BF16 if dtypes == {"BF16"} else Q.F16


def choose_type(name: str, shape: tuple[int, ...], outtype: Q) -> Q:
    """llama.cpp's rule (convert_hf_to_gguf prepare_tensors): what stays F32, and Q8_0's F16 fallback."""
    base = name.split(".", 2)[-1].rsplit(".", 1)[0] if name.startswith("blk.") else name.rsplit(".", 1)[0]
    if (len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith((".weight", ".lora_a", ".lora_b"))
            or base in _ALWAYS_F32):
        return Q.F32
    if outtype == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16
    return outtype


def encode(t, qtype: Q) -> np.ndarray:
    """A torch tensor as the bytes GGUF stores for ``qtype`` (C-contiguous numpy array)."""
    import torch

    if qtype == Q.F32:
        return t.to(torch.float32).contiguous().numpy()
    if qtype == Q.F16:
        return t.to(torch.float16).contiguous().numpy()
    if qtype == Q.BF16:  # torch rounds to nearest-even, as gguf.quants does; int16 view keeps the element shape
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    return gguf.quants.quantize(t.to(torch.float32).contiguous().numpy(), qtype)


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    if qtype in (Q.F32,):
        return 4 * int(np.prod(shape, dtype=np.int64))
    if qtype in (Q.F16, Q.BF16):
        return 2 * int(np.prod(shape, dtype=np.int64))
    return int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype), dtype=np.int64))


class Source:
    """Checkpoint tensors for jobs: real ones, or meta ones (shape and dtype only) for planning."""

    def __init__(self, ckpt: Checkpoint, meta: bool) -> None:
        self.ckpt, self.meta = ckpt, meta

    def _read(self, name: str):
        return self.ckpt.get(name)

    def get(self, name: str):
        import torch

        info = self.ckpt.tensors[name]
        if self.meta:
            dtype = torch_dtype(info.dtype)
            return torch.empty(info.shape, dtype=torch.float32 if dtype == torch.bfloat16 else dtype, device="meta")
        t = self._read(name)
        # transforms (norm offsets, stacking) run in float32 for bf16/f64 sources, as llama.cpp converts them
        return t.float() if t.dtype not in (torch.float16, torch.float32) else t

    def run(self, job: Job):
        return job.fn(*(self.get(n) for n in job.inputs))


def open_model(model: str, adapter: str | None, allow_pickle: bool) -> tuple[Checkpoint, Model]:
    ckpt = open_checkpoint(model, adapter=adapter, allow_pickle=allow_pickle)
    spec = from_config(ckpt.config)
    cls = archs.get(spec.hf_class, spec.architecture)
    return ckpt, cls(spec, ckpt.config, ckpt.names())


def default_output(ckpt: Checkpoint, qtype: Q, adapter_only: bool = False) -> Path:
    suffix = "-lora" if adapter_only else ""
    return Path.cwd() / f"{ckpt.path.name}{suffix}-{qtype.name.lower()}.gguf"


class Sha256Later:
    """sha256 of the source weights, hashed on a second thread while tensors are converted.

    The metadata block sits before the tensors, so the value is first written as a unique placeholder of
    the same length and patched in place once the hash is known (hashing 2 GB up front costs ~2 s).
    """

    def __init__(self, ckpt: Checkpoint) -> None:
        self.placeholder = secrets.token_hex(32)
        self.value: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ckpt,), daemon=True)
        self.thread.start()

    def _run(self, ckpt: Checkpoint) -> None:
        try:
            self.value = ckpt.sha256()
        except BaseException as exc:  # re-raised on the main thread in patch()
            self.error = exc

    def patch(self, path: Path, search_bytes: int) -> str:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        with path.open("r+b") as fh:
            head = fh.read(search_bytes)
            at = head.find(self.placeholder.encode())
            if at < 0:
                raise RuntimeError("sha256 placeholder not found in the GGUF metadata")
            fh.seek(at)
            fh.write(self.value.encode())
        return self.value


def write_gguf(dest: Path, force: bool, arch_name: str, jobs: Iterable[Job], ckpt: Checkpoint,
               outtype: Q, metadata: Callable[[gguf.GGUFWriter], None], progress: bool,
               sha: Sha256Later | None) -> dict[str, Any]:
    """Plan, then stream ``jobs`` into ``dest`` atomically. Returns {"tensors", "types", "bytes"}."""
    jobs = list(jobs)
    meta = Source(ckpt, meta=True)
    plan: list[tuple[Job, tuple[int, ...], Q]] = []
    for job in jobs:
        shape = tuple(meta.run(job).shape)
        plan.append((job, shape, choose_type(job.name, shape, outtype)))
    counts: dict[str, int] = {}
    for _, _, q in plan:
        counts[q.name] = counts.get(q.name, 0) + 1
    real = Source(ckpt, meta=False)
    with atomic_output(dest, force=force) as tmp:
        w = gguf.GGUFWriter(tmp, arch_name)
        try:
            for job, shape, q in plan:
                w.add_tensor_info(job.name, shape, np.dtype(np.float32), nbytes(shape, q), raw_dtype=q)
            metadata(w)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            kv_end = w.fout[0].tell()
            bar = _bar(len(plan), progress)
            try:
                for job, shape, q in plan:
                    if bar is not None:
                        bar.set_postfix_str(job.name, refresh=False)
                    t = real.run(job)
                    if tuple(t.shape) != shape:
                        raise RuntimeError(f"{job.name}: planned {shape}, produced {tuple(t.shape)}")
                    w.write_tensor_data(encode(t, q))
                    del t
                    if bar is not None:
                        bar.update(1)
            finally:
                if bar is not None:
                    bar.close()
            w.flush()
        finally:
            w.close()
        if sha is not None:
            sha.patch(tmp, kv_end)
        size = tmp.stat().st_size
    return {"tensors": len(plan), "types": counts, "bytes": size}


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    # disable=None: only on a terminal, so piped stderr (scripts, --json users) carries just errors
    return tqdm(total=total, unit="tensor", desc="gguf", leave=False, dynamic_ncols=True, disable=None)


def convert(model: str, output: str | None, *, adapter: str | None, allow_pickle: bool, force: bool,
            progress: bool, outtype: str | None = None, adapter_only: bool = False) -> dict[str, Any]:
    """Convert ``model`` (+ merged ``adapter``) to a GGUF file, or ``adapter`` alone with ``adapter_only``."""
    from edgekit import __version__

    started = time.perf_counter()
    if adapter_only and not adapter:
        raise EdgekitError("--adapter-only needs --adapter DIR", "pass the PEFT LoRA adapter directory")
    # with --adapter-only the base tensors are never read (only names and shapes), so merging costs nothing
    ckpt, fam = open_model(model, adapter, allow_pickle)
    qtype = resolve_outtype(outtype, ckpt)
    dest = Path(output).expanduser() if output else default_output(ckpt, qtype, adapter_only)
    check_destination(dest, force)
    summary: dict[str, Any] = {"format": "gguf", "architecture": fam.arch_name, "hf_class": fam.spec.hf_class}
    if adapter_only:
        from converters.gguf import lora

        result = lora.write_adapter(ckpt, fam, adapter, dest, force=force, outtype=qtype, progress=progress,
                                    allow_pickle=allow_pickle)
        summary.update(result)
    else:
        vocab = tokenizer.load(ckpt.path, fam.spec.vocab_size)
        sha = Sha256Later(ckpt)

        def metadata(w: gguf.GGUFWriter) -> None:
            general_metadata(w, ckpt, "model", vocab.tokens)
            fam.set_params(w)
            w.add_file_type(FILE_TYPES[qtype])
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            vocab.write(w)
            w.add_string("edgekit.version", __version__)
            w.add_string("edgekit.source_sha256", sha.placeholder)
            if adapter:
                w.add_string("edgekit.adapter", str(ckpt.adapter.path) if ckpt.adapter else adapter)

        result = write_gguf(dest, force, fam.arch_name, fam.jobs(), ckpt, qtype, metadata, progress, sha)
        summary.update(result)
        summary.update({"tokenizer": vocab.summary(), "chat_template": vocab.chat_template is not None,
                        "source_sha256": sha.value})
    summary.update({"output": str(dest), "outtype": qtype.name.lower(), "adapter": adapter,
                    "adapter_only": adapter_only, "seconds": round(time.perf_counter() - started, 3)})
    return summary


def general_metadata(w: gguf.GGUFWriter, ckpt: Checkpoint, kind: str, tokens: list[str] | None = None) -> None:
    """general.* as llama.cpp writes it: gguf.Metadata from the model card and directory name."""
    total, shared, expert, count = w.get_total_parameter_count()
    meta = gguf.Metadata.load(None, ckpt.path, None, total)
    if meta.name is None:
        meta.name = ckpt.path.name
    meta.name = _avoid_name_quirks(meta.name, tokens)
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, count)
    w.add_type(gguf.GGUFType.MODEL if kind == "model" else gguf.GGUFType.ADAPTER)
    meta.set_gguf_meta_model(w)


def _avoid_name_quirks(name: str, tokens: list[str] | None) -> str:
    """llama.cpp keys a Phi-3 tokenizer fix on general.name containing "phi3"/"phi-3" and then aborts
    loading (unordered_map::at) when the vocabulary lacks Phi-3's "</s>", "<unk>", "<s>", "<|endoftext|>".
    A model so named with another tokenizer gets the name spelled with a space, which llama.cpp ignores."""
    if tokens is None or not any(k in name.lower() for k in ("phi3", "phi-3")):
        return name
    have = set(tokens)
    if all(t in have for t in ("</s>", "<unk>", "<s>", "<|endoftext|>")):
        return name
    return re.sub(r"(?i)(phi)-?(3)", r"\1 \2", name)
