"""Streaming tensors into a file: the one write path of the GGUF writer and the ONNX external data.

- :class:`Sink` is the output file as the writers see it: every byte written through it also goes,
  in order, to an optional inline digest (:class:`edgekit.integrity.InlineDigest`), so no artifact is
  read back to be hashed; kernel-copied ranges are hashed from their source's page cache.
- :class:`Encoder` converts row chunks on a pool of one thread per core (numpy releases the GIL;
  chunks keep the converted copies small) and writes them in order, a few chunks ahead at most.
- :func:`copy_bytes` copies a stored range file to file by the kernel (``os.copy_file_range``), where
  the stored bytes already are the output's: they never enter this process.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edgekit import integrity
from edgekit.checkpoint import NUMPY_DTYPES, read_bits, widen_bf16

_CHUNK = 1 << 22  # elements per conversion task: 16 MB of float32
_ROWS_BUFFER = 1 << 21  # bytes of stored rows read at a time by Sink.copy_rows
_GATHER_SHARE = 16  # reordered rows go in chunks this much smaller: a row span read plus its gathered copy
Encode = Callable[[np.ndarray], np.ndarray]  # a chunk of rows -> the bytes to write, as an array


def copy_bytes(fout: BinaryIO, src: Path, start: int, end: int) -> None:
    """Append ``src[start:end]`` to ``fout``: by the kernel (``copy_file_range``, no trip through user
    space) where the OS and file systems allow it, else by plain reads and writes."""
    fout.flush()
    pos, n, done = fout.tell(), end - start, 0
    with src.open("rb", buffering=0) as fin:
        if hasattr(os, "copy_file_range"):
            try:
                while done < n:
                    k = os.copy_file_range(fin.fileno(), fout.fileno(), n - done, start + done, pos + done)
                    if k == 0:
                        raise OSError(errno.EIO, f"{src} ended at byte {start + done}")
                    done += k
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
        fout.seek(pos + done)
        if done < n:
            fin.seek(start + done)
            buf = memoryview(bytearray(min(n - done, 16 << 20)))
            while done < n:
                k = fin.readinto(buf[:min(len(buf), n - done)])
                if not k:
                    raise OSError(errno.EIO, f"{src} ended at byte {start + done}")
                fout.write(buf[:k])
                done += k


def _iov_max() -> int:
    """Buffers one ``pwritev`` takes (1024 on Linux and macOS; POSIX guarantees 16)."""
    try:
        return max(16, os.sysconf("SC_IOV_MAX"))
    except (ValueError, OSError):
        return 16


def _pwritev_all(fd: int, pieces: list[memoryview], at: int) -> int:
    """``os.pwritev`` until every piece is written (a regular file takes them all at once; a short write resumes)."""
    total, done = sum(len(p) for p in pieces), 0
    while True:
        k = os.pwritev(fd, pieces, at + done)
        if k <= 0:
            raise OSError(errno.EIO, f"short write at byte {at + done}")
        done += k
        if done >= total:
            return total
        while k >= len(pieces[0]):  # drop what was written
            k -= len(pieces[0])
            pieces = pieces[1:]
        pieces = [pieces[0][k:], *pieces[1:]]


class Sink:
    """The output file as the tensor writers see it: every byte written through it (GGUFWriter's own
    tensor infos and padding too) also goes, in order, to the optional inline hash
    (:class:`edgekit.integrity.InlineDigest`); kernel-copied ranges are hashed from their source."""

    def __init__(self, raw: BinaryIO, hasher: integrity.InlineDigest | None = None) -> None:
        self.raw, self.hasher = raw, hasher

    def write(self, data: Any) -> int:
        n = self.raw.write(data)
        if self.hasher is not None:
            self.hasher.feed(bytes(data))  # the caller may reuse its buffer
        return n

    def write_array(self, a: np.ndarray) -> None:
        a.tofile(self.raw)
        if self.hasher is not None:
            self.hasher.feed(a)  # kept alive, not copied: nobody changes an encoded chunk

    def copy_range(self, src: Path, start: int, end: int) -> None:
        copy_bytes(self.raw, src, start, end)
        if self.hasher is not None:
            self.hasher.feed_file(src, start, end)

    def copy_rows(self, src: Path, start: int, row_bytes: int, rows: np.ndarray) -> None:
        """Append the rows of the matrix stored at ``src[start:]`` in the order ``rows`` (the stored row of each
        output row; llama.cpp's Q/K rope order), where the stored bytes already are the output's encoding: spans of
        stored rows are read into one reused buffer and written by ``pwritev`` with one buffer slice per row, so the
        kernel gathers them and no reordered copy is made; the inline hash reads the written range back from the
        page cache, as for kernel-copied ranges. Hand-written: numpy has no vectored I/O."""
        self.raw.flush()
        fd, at = self.raw.fileno(), self.raw.tell()
        first, n = at, len(rows)
        buf = memoryview(mmap.mmap(-1, max(_ROWS_BUFFER, row_bytes)))  # page-aligned; unmapped on return
        fit = len(buf) // row_bytes  # stored rows the buffer holds
        per_call = min(_iov_max(), fit)
        with src.open("rb", buffering=0) as fin:
            i = 0
            while i < n:
                group = rows[i:i + per_call]
                # the longest prefix of the group whose stored rows span no more than the buffer (all of it for a
                # rope order, which permutes rows within a head)
                over = np.flatnonzero(np.maximum.accumulate(group) - np.minimum.accumulate(group) >= fit)
                group = group[:over[0]] if over.size else group
                lo, hi = int(group.min()), int(group.max()) + 1
                span = buf[:(hi - lo) * row_bytes]
                got = 0
                while got < len(span):
                    k = os.preadv(fin.fileno(), [span[got:]], start + lo * row_bytes + got)
                    if not k:
                        raise OSError(errno.EIO, f"{src} ended at byte {start + lo * row_bytes + got}")
                    got += k
                pieces = [span[(r - lo) * row_bytes:(r - lo + 1) * row_bytes] for r in group.tolist()]
                at += _pwritev_all(fd, pieces, at)
                i += len(group)
        self.raw.seek(at)
        if self.hasher is not None:
            self.hasher.feed_file(Path(self.raw.name), first, at)

    def __getattr__(self, name: str) -> Any:  # tell, flush, seek, fileno, close: the file's own
        return getattr(self.raw, name)


class Encoder:
    """Writes tensors encoded (``encode``: the format's conversion of a row chunk), on one thread per core."""

    def __init__(self) -> None:
        self.workers = max(1, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=self.workers)

    def write_array(self, fout: Sink, t: np.ndarray, encode: Encode) -> None:
        """``t`` (any layout, e.g. a transposed view: each chunk is made contiguous by ``encode``) in row chunks."""
        rows = t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t.reshape(1, -1)
        step = _rows_per_chunk(rows.shape[1])
        chunks = [rows[i:i + step] for i in range(0, rows.shape[0], step)]
        self._write(fout, (lambda c=c: encode(c) for c in chunks))

    def write_stored(self, fout: Sink, file: Path, start: int, dtype: str, shape: tuple[int, ...],
                     encode: Encode, rows: np.ndarray | None = None) -> None:
        """The tensor stored at ``file[start:]`` as safetensors ``dtype``, read in row chunks (each task
        reads its own rows; BF16 widened to float32) and written encoded. ``rows``: the stored row each
        output row comes from (a reordering such as llama.cpp's Q/K rope order), gathered chunk by chunk
        in small chunks, so a reordered matrix is never held whole."""
        row = shape[-1] if shape else 1
        n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        row_bytes = row * np.dtype(NUMPY_DTYPES[dtype]).itemsize
        step = _rows_per_chunk(row) if rows is None else max(1, _CHUNK // _GATHER_SHARE // max(1, row))

        def task(first: int) -> np.ndarray:
            n = min(step, n_rows - first)
            pick = None if rows is None else rows[first:first + n]
            lo, hi = (first, first + n) if pick is None else (int(pick.min()), int(pick.max()) + 1)
            chunk = read_bits(file, start + lo * row_bytes, start + hi * row_bytes, dtype).reshape(hi - lo, row)
            if pick is not None:
                chunk = chunk[pick - lo]
            return encode(widen_bf16(chunk) if dtype == "BF16" else chunk)

        self._write(fout, (lambda f=f: task(f) for f in range(0, n_rows, step)))

    def _write(self, fout: Sink, tasks: Iterable[Callable[[], np.ndarray]]) -> None:
        # at most two chunks ahead of the writer: bounded memory, every core busy
        pending: list[Any] = []
        for task in tasks:
            pending.append(self.pool.submit(task))
            if len(pending) > self.workers + 1:
                fout.write_array(pending.pop(0).result())
        for fut in pending:
            fout.write_array(fut.result())

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def preallocate(fd: int, start: int, end: int) -> bool:
    """Reserve ``[start, end)`` of the file ``fd`` on disk before it is written (``fallocate``; the file's size
    becomes ``end`` if it was smaller): ext4 then skips its per-block delayed-allocation bookkeeping on each page
    written, ~0.4 s of kernel time for 2 GB, and a full disk is reported before anything is written. False, and
    nothing done, where the OS or the file system has no ``fallocate``. Hand-written: Python's ``os`` has only
    ``posix_fallocate``, whose glibc fallback writes a byte into every block of such file systems."""
    import ctypes
    import sys

    if end <= start or not sys.platform.startswith("linux"):
        return False
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):  # not glibc
        return False
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if fallocate(fd, 0, start, end - start) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSPC, errno.EDQUOT):  # the CLI's one-line "disk full" error, before any tensor is written
        raise OSError(err, os.strerror(err))
    return False  # EOPNOTSUPP and the like: written as it comes


def return_freed_chunks() -> None:
    """Have glibc's malloc hand every block of 128 KiB or more back to the OS when freed. By default the
    threshold rises to the largest block freed so far (up to 32 MiB), after which chunk buffers come from
    the heap and its high-water mark stays resident (~4 MB more peak RSS for the 1B f16 export). Process-wide;
    a no-op where there is no mallopt. Hand-written: no library exposes malloc's options."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD; setting it also stops its dynamic rise
    except (OSError, AttributeError):  # not glibc
        pass


def _rows_per_chunk(row: int) -> int:
    return max(1, _CHUNK // max(1, row))

