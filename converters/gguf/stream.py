"""Plan the GGUF tensors from shapes alone, then make and write them one at a time.

:func:`plan` runs every job on shape-only arrays (:func:`converters.gguf.model.meta`): each output's
shape, its GGML type, and whether the family left a stored tensor as it is. :func:`write_gguf`
registers each planned tensor with gguf's GGUFWriter as an object that writes itself when
``write_tensors_to_file`` asks (the duck type llama.cpp's converter streams its lazy tensors
through), so the header is written before any weight is read and only one tensor is live at a time:
- a stored tensor already in the output's encoding (f16 checkpoint to F16: nearly every byte) is
  copied file to file by the kernel (``os.copy_file_range``), never entering this process;
- any other untouched stored tensor is read in row chunks, each converted (numpy; BF16 and Q8_0 by
  ``gguf.quants``) on a pool of one thread per core (:mod:`converters.streaming`, the path the ONNX
  external data takes too);
- a tensor the family only reorders by rows (Q/K rope order; found by :func:`_row_order`) is read in
  spans of rows and, where its bytes stay as stored, written row by row in the new order by one
  ``pwritev`` per span (the kernel gathers; :meth:`converters.streaming.Sink.copy_rows`), else gathered and
  converted in small row chunks on the same pool; never whole;
- any other tensor the family transforms (stacked experts, norm offsets...) is built whole in numpy, then
  encoded in the same chunks.

The tensor seam (:mod:`converters.seam`) sits in :func:`plan`: each tensor's GGML type is chosen
there, one tensor at a time (llama.cpp's rule, then the seam's storage policy), and a seam transform
claims the tensors it replaces; :meth:`Planned.tofile` writes a float replacement through the same
encoder and a QuantizedTensor's raw blocks as they are. Tensors nobody transforms keep the paths above.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from converters import seam as tseam
from converters.gguf.model import Job, meta
from converters.gguf.types import Q, choose_type, nbytes
from converters.streaming import Encoder, Sink, preallocate
from edgekit import integrity
from edgekit.atomic import atomic_output
from edgekit.errors import EdgekitError

# the dtype a job sees for each stored float type: transforms (norm offsets, stacking) of bf16/f64
# sources run in float32, as llama.cpp converts them
_JOB_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.float32, "F64": np.float32}
_SAME_BYTES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}  # stored bytes that already are the encoding


def job_dtype(name: str) -> type:
    if name not in _JOB_DTYPES:
        raise EdgekitError(f"checkpoint tensor dtype {name} is not a float type GGUF conversion reads",
                           "re-save the checkpoint in float32, float16 or bfloat16")
    return _JOB_DTYPES[name]


@dataclass
class Stored:
    """Where an untouched tensor's bytes are: file, byte offset, stored dtype name."""

    file: Path
    start: int
    end: int
    dtype: str


@dataclass
class Plan:
    job: Job
    shape: tuple[int, ...]
    qtype: Q
    stored: Stored | None  # the job returns this stored tensor unchanged or reordered by rows (no seam transform)
    info: tseam.TensorInfo | None = None
    transform: tseam.Transform | None = None
    rows: np.ndarray | None = None  # the stored row of each output row, when the job only reorders rows

    @property
    def copied(self) -> bool:
        return self.stored is not None and self.rows is None and _SAME_BYTES.get(self.stored.dtype) == self.qtype

    @property
    def reordered(self) -> bool:
        """Stored rows written in a new order as they are (f16 Q/K to F16 in rope order): no conversion."""
        return (self.stored is not None and self.rows is not None and len(self.shape) == 2
                and _SAME_BYTES.get(self.stored.dtype) == self.qtype and hasattr(os, "pwritev"))


class Source:
    """Checkpoint tensors for jobs: real numpy arrays, or shape-only ones (``meta``) for planning.

    ``ckpt`` is anything with ``tensors`` (name -> TensorInfo), ``array(name)`` and ``byte_range(name)``.
    """

    def __init__(self, ckpt: Any, meta: bool) -> None:
        self.ckpt, self.meta = ckpt, meta

    def get(self, name: str) -> np.ndarray:
        info = self.ckpt.tensors[name]
        dtype = job_dtype(info.dtype)
        if self.meta:
            return meta(info.shape, dtype)
        a = self.ckpt.array(name)
        return a if a.dtype == dtype else a.astype(dtype)

    def run(self, job: Job) -> np.ndarray:
        return job.fn(*(self.get(n) for n in job.inputs))


def plan(jobs: Iterable[Job], ckpt: Any, outtype: Q, seam: tseam.Seam = tseam.NONE,
         architecture: str = "") -> list[Plan]:
    """Shape, type and stored source of every job's tensor, from shape-only runs (no weight is read).

    This is GGUF's seam point: the type is chosen per tensor (llama.cpp's rule as the default, then
    ``seam.storage``) and ``seam.transform`` claims the tensors it will replace."""
    src = Source(ckpt, meta=True)
    out = []
    for job in jobs:
        inputs = [src.get(n) for n in job.inputs]
        result = job.fn(*inputs)
        shape = tuple(result.shape)
        hf_name = job.inputs[0] if job.inputs else ""
        dtype = ckpt.tensors[hf_name].dtype if hf_name else "F32"
        info = tseam.info("gguf", job.name, hf_name, shape, dtype, architecture)
        default = choose_type(job.name, shape, outtype).name
        try:
            qtype = Q[seam.storage_for(info, default)]
        except KeyError:
            raise EdgekitError(f"storage type {seam.storage_for(info, default)!r} for {job.name} is not a GGML type",
                               f"choose one of: {', '.join(t.name for t in Q)}") from None
        transform = seam.transform_for(info)
        stored, rows = None, None
        if len(inputs) == 1 and transform is None:
            rows = None if result is inputs[0] else _row_order(job, shape, inputs[0].shape)
            name = job.inputs[0]
            where = ckpt.byte_range(name)
            if (result is inputs[0] or rows is not None) and where is not None \
                    and ckpt.tensors[name].dtype in _JOB_DTYPES:
                stored = Stored(*where, ckpt.tensors[name].dtype)
            else:
                rows = None
        out.append(Plan(job, shape, qtype, stored, info, transform, rows))
    return out


def _row_order(job: Job, shape: tuple[int, ...], in_shape: tuple[int, ...]) -> np.ndarray | None:
    """The input row each output row comes from, if ``job`` only reorders the rows of its matrix (llama.cpp's
    Q/K rope order), else None. Found by running the job on a probe matrix whose first column numbers the
    rows and whose other columns are random: a job that changes any value, mixes columns or changes the
    shape does not give back whole rows of the probe."""
    if len(shape) != 2 or tuple(in_shape) != shape:
        return None
    rng = np.random.default_rng(0)
    probe = np.column_stack([np.arange(shape[0], dtype=np.float64), rng.standard_normal((shape[0], 3))])
    try:
        out = np.asarray(job.fn(probe))
    except Exception:  # the job needs the real width or dtype: not a plain reordering
        return None
    if out.shape != probe.shape or out.dtype != probe.dtype:
        return None
    rows = out[:, 0].astype(np.int64)
    if not np.array_equal(np.sort(rows), np.arange(shape[0])) or not np.array_equal(out, probe[rows]):
        return None
    return rows


def _encode(rows: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(rows, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(rows, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(rows, dtype=np.float32), qtype)


class Planned:
    """One planned tensor for GGUFWriter: ``write_tensors_to_file`` calls ``tofile`` when its turn comes."""

    dtype = np.dtype(np.float32)  # tells GGUFWriter.add_tensor that raw_shape is logical, not bytes

    def __init__(self, p: Plan, real: Source, encoder: Encoder, done: Callable[[str], None]) -> None:
        self.plan, self.real, self.encoder, self.done = p, real, encoder, done
        self.shape, self.nbytes = p.shape, nbytes(p.shape, p.qtype)

    def tofile(self, fout: Sink) -> None:
        p = self.plan
        if p.copied:
            assert p.stored is not None
            fout.copy_range(p.stored.file, p.stored.start, p.stored.end)
        elif p.reordered:
            assert p.stored is not None and p.rows is not None
            fout.copy_rows(p.stored.file, p.stored.start, (p.stored.end - p.stored.start) // p.shape[0], p.rows)
        elif p.stored is not None:
            self.encoder.write_stored(fout, p.stored.file, p.stored.start, p.stored.dtype, p.shape,
                                      partial(_encode, qtype=p.qtype), rows=p.rows)
        else:
            t = self.real.run(p.job)
            if tuple(t.shape) != p.shape:
                raise RuntimeError(f"{p.job.name}: planned {p.shape}, produced {tuple(t.shape)}")
            if p.transform is not None:
                assert p.info is not None
                t = tseam.run(p.info, p.transform, t)
            if isinstance(t, np.ndarray):
                self.encoder.write_array(fout, t, partial(_encode, qtype=p.qtype))
            else:
                self._write_codes(fout, t)
        self.done(p.job.name)

    def _write_codes(self, fout: Sink, q: Any) -> None:
        """A QuantizedTensor's GGML blocks, byte for byte, under the type planned for the header."""
        p = self.plan
        if q.attrs["ggml_type"] != p.qtype.name:
            raise EdgekitError(f"{p.job.name}: the transform returned {q.grid} codes but the tensor's storage type is "
                               f"{p.qtype.name}", f"choose storage {q.attrs['ggml_type']} for it in the seam")
        data = np.ascontiguousarray(q.arrays["data"]).view(np.uint8)
        if data.nbytes != self.nbytes:
            raise ValueError(f"{p.job.name}: {q.grid} data holds {data.nbytes} bytes, {p.qtype.name} of shape "
                             f"{p.shape} takes {self.nbytes}")
        fout.write_array(data)


_NUMBERS = {gguf.GGUFValueType.FLOAT32: (float, "f4"), gguf.GGUFValueType.INT32: (int, "i4")}


class Writer(gguf.GGUFWriter):
    """gguf's GGUFWriter, packing a metadata array of str, float or int (the vocabulary's tokens, scores, types,
    merges) in one step instead of element by element: the same bytes, in ~0.02 s instead of ~0.15 s for a
    32k vocabulary, time spent between the tokenizer facts and the first tensor. Any other array, or one the
    fast path cannot pack exactly as struct would, goes to gguf's own packing. Hand-written: gguf has no bulk
    packing."""

    data_end: int | None = None  # where the tensor data ends in the file, once the tensor infos are written

    def write_ti_data_to_file(self) -> None:
        """gguf's, then the tensor data's extent reserved on disk (:func:`converters.streaming.preallocate`)."""
        super().write_ti_data_to_file()
        assert self.fout is not None and len(self.fout) == 1, "one output file"
        fout = self.fout[0]
        fout.flush()
        start = self.ggml_pad(fout.tell(), self.data_alignment)
        self.data_end = start + sum(self.ggml_pad(ti.nbytes, self.data_alignment) for ti in self.tensors[0].values())
        preallocate(fout.fileno(), fout.tell(), self.data_end)

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        body = self._pack_array(val) if vtype == gguf.GGUFValueType.ARRAY and sub_type is None else None
        if body is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (self._pack("I", vtype) if add_vtype else b"") + body

    def _pack_array(self, val: Any) -> bytes | None:
        if not isinstance(val, list) or len(val) < 2:
            return None
        order = "<" if self.endianess == gguf.GGUFEndian.LITTLE else ">"
        kind = type(val[0])
        if kind is str and all(type(v) is str for v in val):
            data = [v.encode("utf-8") for v in val]
            sizes = struct.pack(f"{order}{len(data)}Q", *map(len, data))
            pieces = (sizes[8 * i:8 * i + 8] for i in range(len(data)))
            body = b"".join(x for pair in zip(pieces, data, strict=True) for x in pair)
            ltype = gguf.GGUFValueType.STRING
        else:
            ltype = next((t for t, (py, _) in _NUMBERS.items() if kind is py), None)
            if ltype is None or not all(type(v) is kind for v in val):  # bool, numpy scalars, mixed: gguf's way
                return None
            try:
                wide = np.asarray(val, dtype=np.float64 if kind is float else np.int64)
            except OverflowError:
                return None
            with np.errstate(over="ignore"):
                packed = wide.astype(order + _NUMBERS[ltype][1])
            # out of int32's range, or finite beyond float32's: struct raises, so let gguf's packing raise it
            if kind is int and not np.array_equal(packed, wide):
                return None
            if kind is float and np.isinf(packed).sum() != np.isinf(wide).sum():
                return None
            body = packed.tobytes()
        return self._pack("I", ltype) + self._pack("Q", len(val)) + body


def write_gguf(dest: Path, force: bool, arch_name: str, planned: list[Plan], ckpt: Any,
               metadata: Callable[[gguf.GGUFWriter], None], progress: bool,
               finish: Callable[[Path, int], None] | None = None,
               data_hash_placeholder: str | None = None,
               header: Callable[[bytes], None] | None = None) -> dict[str, Any]:
    """Write the :func:`plan`ned tensors of ``ckpt`` into ``dest``, atomically.

    ``header(head)`` gets the file's bytes up to the end of the metadata as soon as they are written
    (work that needs only the metadata runs while the tensors stream); ``finish(path, metadata_end)``
    runs on the complete temporary file before it is renamed. With ``data_hash_placeholder`` (a metadata
    string value), the digest (:data:`edgekit.integrity.DATA_KEY`) of everything after the metadata is computed
    inline as it is written and patched over it (:mod:`edgekit.integrity`). Returns {"tensors", "types", "bytes",
    "copied"}; ``copied`` counts tensors copied as stored.
    """
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.qtype.name] = counts.get(p.qtype.name, 0) + 1
    real, encoder = Source(ckpt, meta=False), Encoder()
    bar = _bar(len(planned), progress)

    def done(name: str) -> None:
        if bar is not None:
            bar.set_postfix_str(name, refresh=False)
            bar.update(1)

    hasher = None
    with atomic_output(dest, force=force) as tmp:
        w = Writer(tmp, arch_name)
        try:
            for p in planned:
                w.add_tensor(p.job.name, Planned(p, real, encoder, done),  # type: ignore[arg-type]
                             raw_shape=p.shape, raw_dtype=p.qtype)
            metadata(w)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            kv_end = w.fout[0].tell()
            if header is not None:
                w.fout[0].flush()
                header(_head(tmp, kv_end))
            if data_hash_placeholder is not None:
                hasher = integrity.InlineDigest(new=integrity.DATA_KEYS[integrity.DATA_KEY])
            w.fout[0] = Sink(w.fout[0], hasher)  # type: ignore[call-overload]
            w.write_tensors_to_file(progress=False)
            w.flush()
            if w.fout[0].tell() != w.data_end:  # the reserved extent set the file's size: it must be what was written
                raise RuntimeError(f"wrote {w.fout[0].tell()} bytes of {dest.name}, planned {w.data_end}")
        except BaseException:
            if hasher is not None:
                hasher.cancel()
            raise
        finally:
            w.close()
            encoder.close()
            if bar is not None:
                bar.close()
        if hasher is not None:
            assert data_hash_placeholder is not None
            integrity.patch_gguf_data_hash(tmp, kv_end, data_hash_placeholder, hasher.finish())
        if finish is not None:
            finish(tmp, kv_end)
        size = tmp.stat().st_size
    return {"tensors": len(planned), "types": counts, "bytes": size, "copied": sum(1 for p in planned if p.copied)}


def _head(path: Path, n: int) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    # disable=None: only on a terminal, so piped stderr (scripts, --json users) carries just errors
    return tqdm(total=total, unit="tensor", desc="gguf", leave=False, dynamic_ncols=True, disable=None)
