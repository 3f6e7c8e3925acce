"""Is an artifact what edgekit wrote? Checked on every load (cheap) and by ``edgekit verify`` (full).

* A directory artifact (ONNX, Core ML) carries ``edgekit.json`` listing every file with its size and
  sha256. The cheap check: every listed file present with its size, and each file's header the format's
  own (an ONNX ModelProto starts with its ir_version field, a Core ML package with Manifest.json). The
  full check hashes every file.
* A GGUF file carries, in its metadata, a digest of everything after the metadata (tensor infos and tensor
  data), patched in once the file is complete: ``edgekit.data_blake3`` (BLAKE3, ~3x sha256's speed on one
  core; what edgekit writes) or, in files written before it, ``edgekit.data_sha256``; both are checked.
  The cheap check parses
  the header (magic, version, counts, every tensor's type, shape and offset) and compares the size the
  tensors need with the file's size; the full check hashes the data. A GGUF written by another tool has
  no recorded hash: its structure is checked, and ``verify`` says there is nothing to compare against.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from edgekit.errors import EdgekitError

MANIFEST = "edgekit.json"
GGUF_MAGIC = b"GGUF"
DATA_SHA256_KEY = "edgekit.data_sha256"  # the first record: files written by older edgekit carry it
DATA_KEY = "edgekit.data_blake3"  # the record edgekit writes now
# every data digest key verify understands -> the hash object it names (newest first); 32-byte digests, 64 hex
DATA_KEYS: dict[str, Any] = {DATA_KEY: blake3.blake3, DATA_SHA256_KEY: hashlib.sha256}
RECREATE = "re-create it with edgekit convert (or restore it from where it came)"

# GGUF value types (gguf-py's GGUFValueType): scalar struct codes; 8 = string, 9 = array
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_U64 = struct.Struct("<Q")
_READ_BYTES = 1 << 20  # per read of a kernel-copied range: large enough for sha256's speed, small in RSS
_MAX_COUNT = 1 << 24  # more keys, tensors or array items than any model has: a corrupt count


@dataclass
class GGUFLayout:
    version: int
    kv_end: int  # first byte after the metadata (where the tensor infos start)
    data_start: int
    data_end: int  # end of the last tensor's bytes
    size: int
    alignment: int
    strings: dict[str, str] = field(default_factory=dict)  # the string-valued metadata
    tensors: int = 0


class _Reader:
    """Bounded little-endian reads over a memory map: a value pointing past the end is corruption."""

    def __init__(self, data: Any, size: int, path: Path) -> None:
        self.data, self.size, self.path, self.pos = data, size, path, 0

    def bad(self, why: str) -> EdgekitError:
        return EdgekitError(f"{self.path} is a corrupt GGUF file ({why})", RECREATE)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.bad(f"a field at byte {self.pos} runs past the end of the file")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.bad(f"a field at byte {self.pos} runs past the end of the file")
        self.pos += n

    def scalar(self, code: str) -> Any:
        size = struct.calcsize("<" + code)
        if self.pos + size > self.size:
            raise self.bad(f"a field at byte {self.pos} runs past the end of the file")
        value = struct.unpack_from("<" + code, self.data, self.pos)[0]
        self.pos += size
        return value

    def count(self, what: str) -> int:
        n = self.scalar("Q")
        if n > _MAX_COUNT:
            raise self.bad(f"{what} count {n} is implausible")
        return n

    def string(self) -> bytes:
        return self.take(self.scalar("Q"))

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9 and depth < 2:
            etype, n = self.scalar("I"), self.count("array")
            if etype in _SCALAR:
                self.skip(n * struct.calcsize("<" + _SCALAR[etype]))
            elif etype == 8:  # a vocabulary: tens of thousands of strings, skipped in one tight loop
                unpack, data, pos, end = _U64.unpack_from, self.data, self.pos, self.size - 8
                for _ in range(n):
                    if pos > end:
                        raise self.bad(f"a string array at byte {self.pos} runs past the end of the file")
                    pos += 8 + unpack(data, pos)[0]
                if pos > self.size:
                    raise self.bad(f"a string array at byte {self.pos} runs past the end of the file")
                self.pos = pos
            else:
                for _ in range(n):
                    self.value(etype, depth + 1)
            return None
        raise self.bad(f"unknown metadata value type {vtype}")


def gguf_layout(path: Path) -> GGUFLayout:
    """Parse a GGUF header (written by hand: gguf-py's GGUFReader maps and decodes every field, ~1 s
    on a 49k-token vocabulary, too slow for a check on every load). Raises EdgekitError if damaged."""
    import mmap

    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise EdgekitError(f"{path} is not a GGUF file ({size} bytes)", "pass a .gguf file written by edgekit convert")
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _layout(_Reader(data, size, path), path, size)


def _layout(r: _Reader, path: Path, size: int) -> GGUFLayout:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if r.take(4) != GGUF_MAGIC:
        raise EdgekitError(f"{path} is not a GGUF file", "pass a .gguf file written by edgekit convert")
    version = r.scalar("I")
    if version not in (2, 3):
        raise r.bad(f"version {version}")
    n_tensors, n_kv = r.count("tensor"), r.count("metadata")
    strings: dict[str, str] = {}
    alignment = 32
    for _ in range(n_kv):
        key = r.string().decode("utf-8", "replace")
        vtype = r.scalar("I")
        value = r.value(vtype)
        if isinstance(value, bytes):
            strings[key] = value.decode("utf-8", "replace")
        elif key == "general.alignment" and isinstance(value, int):
            alignment = value
    if not 1 <= alignment <= 1 << 16 or alignment & (alignment - 1):
        raise r.bad(f"alignment {alignment}")
    kv_end = r.pos
    need = 0
    for _ in range(n_tensors):
        name = r.string().decode("utf-8", "replace")
        n_dims = r.scalar("I")
        if n_dims > 4:
            raise r.bad(f"tensor {name} has {n_dims} dimensions")
        dims = [r.scalar("Q") for _ in range(n_dims)]
        ttype, offset = r.scalar("I"), r.scalar("Q")
        try:
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise r.bad(f"tensor {name} has unknown type {ttype}") from None
        numel = 1
        for d in dims:
            numel *= d
        if dims and dims[0] % block:
            raise r.bad(f"tensor {name}'s rows of {dims[0]} do not fill blocks of {block}")
        if offset % alignment:
            raise r.bad(f"tensor {name}'s offset {offset} is not aligned")
        need = max(need, offset + numel // block * nbytes)
    data_start = -(-r.pos // alignment) * alignment
    layout = GGUFLayout(version, kv_end, data_start, data_start + need, size, alignment, strings, n_tensors)
    if layout.data_end > size:
        raise EdgekitError(f"{path} is truncated: {size} bytes, its tensors need {layout.data_end}", RECREATE)
    return layout


def digest_from(path: Path, offset: int, new: Callable[[], Any] = hashlib.sha256) -> str:
    """The hex digest (``new``: the hash object's constructor) of ``path`` from byte ``offset`` to its end."""
    h = new()
    with Path(path).open("rb", buffering=0) as fh:
        fh.seek(offset)
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


class InlineDigest:
    """A digest (``new``: the hash object's constructor; sha256 unless told) of the bytes a writer emits, fed
    in write order as they are written and hashed on a thread (hashlib and blake3 release the GIL), so the hash
    costs no second read of the written file.

    :meth:`feed` takes a buffer the caller will not change again (an encoded numpy chunk is kept
    alive, not copied, until hashed); :meth:`feed_file` takes a byte range of a file the writer copied
    by the kernel (never through this process), read back from the page cache into one reused buffer
    (a mapping's touched pages would count in the resident set). At most ``depth`` items wait: bounded memory.
    """

    def __init__(self, depth: int = 8, new: Callable[[], Any] = hashlib.sha256) -> None:
        import queue
        import threading

        self.h = new()
        self.items: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def feed(self, data: Any) -> None:
        self._put(data)

    def feed_file(self, path: Path, start: int, end: int) -> None:
        self._put((Path(path), start, end))

    def finish(self) -> str:
        self._put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()

    def cancel(self) -> None:
        self.cancelled = True
        try:
            self.items.put_nowait(None)
        except Exception:  # full: the thread sees ``cancelled`` at its next item
            pass

    def _put(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.items.put(item)

    def _run(self) -> None:
        buf: memoryview | None = None  # for kernel-copied ranges, allocated at the first one
        try:
            while (item := self.items.get()) is not None and not self.cancelled:
                if isinstance(item, tuple):
                    if buf is None:
                        buf = memoryview(bytearray(_READ_BYTES))
                    _hash_file_range(self.h, *item, buf)
                else:  # as bytes: blake3 takes only byte-format buffers (an encoded chunk is float16 etc.)
                    self.h.update(memoryview(item).cast("B"))
        except BaseException as exc:  # re-raised on the writer's thread by the next feed() or finish()
            self.error = exc
            while self.items.get() is not None:  # unblock the writer until it stops
                pass


def _hash_file_range(h: Any, path: Path, start: int, end: int, buf: memoryview) -> None:
    """Feed ``path[start:end]`` to ``h`` by positioned reads into ``buf`` (one reused buffer): the bytes
    come from the page cache and no page of the file is ever mapped, so nothing piles up in the resident set."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start
        while pos < end:
            n = os.preadv(fd, [buf[:min(len(buf), end - pos)]], pos)
            if n <= 0:
                raise OSError(f"{path} ended at byte {pos}, before {end}")
            h.update(buf[:n])
            pos += n
    finally:
        os.close(fd)


def patch_gguf_data_hash(path: Path, kv_end: int, placeholder: str, value: str | None = None) -> str:
    """Write ``value`` (default: the :data:`DATA_KEY` digest of ``path[kv_end:]``) over ``placeholder`` in the
    metadata."""
    value = value or digest_from(path, kv_end, DATA_KEYS[DATA_KEY])
    with Path(path).open("r+b") as fh:
        head = fh.read(kv_end)
        at = head.find(placeholder.encode())
        if at < 0:
            raise RuntimeError("data sha256 placeholder not found in the GGUF metadata")
        fh.seek(at)
        fh.write(value.encode())
    return value


def _check_header(root: Path, name: str) -> str | None:
    """Why ``name``'s first bytes are not its format's, or None."""
    f = root / name
    if name.endswith(".onnx") or name.endswith(".ort"):
        with f.open("rb") as fh:
            first = fh.read(1)
        # ModelProto field 1 (ir_version, varint): tag byte 0x08; ORT flatbuffers start with a uint32 offset
        if name.endswith(".onnx") and first != b"\x08":
            return "does not start like an ONNX model"
    if name.endswith(".json"):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return "is not valid JSON"
    return None


def check(artifact: str | Path, full: bool = False) -> dict[str, Any]:
    """Check ``artifact`` (a GGUF file or an artifact directory) against what it records; ``full`` hashes
    every byte. Returns {"artifact", "format", "checked": "size+header" | "sha256" | "blake3" (the digest
    compared), "files"}; raises
    EdgekitError naming the first damaged part."""
    path = Path(artifact)
    if path.is_file():
        layout = gguf_layout(path)
        key = next((k for k in DATA_KEYS if k in layout.strings), None)
        result = {"artifact": str(path), "format": "gguf", "checked": "size+header", "files": 1,
                  "tensors": layout.tensors, "digest_recorded": key}
        if full:
            if key is None:
                raise EdgekitError(f"{path} records no {DATA_KEY} or {DATA_SHA256_KEY} (written by another tool or "
                                   "an older edgekit); its header and size are intact but its data cannot be verified",
                                   "re-create it with edgekit convert to get a verifiable artifact")
            recorded, algorithm = layout.strings[key], key.rsplit("_", 1)[1]
            actual = digest_from(path, layout.kv_end, DATA_KEYS[key])
            if actual != recorded:
                raise EdgekitError(f"{path} is damaged: its tensor data's {algorithm} is {actual[:16]}..., "
                                   f"its metadata records {recorded[:16]}...", RECREATE)
            result["checked"] = algorithm
        return result
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        if full:
            raise EdgekitError(f"{path} has no {MANIFEST} to verify against", "pass an artifact from edgekit convert")
        return {"artifact": str(path), "format": None, "checked": "none", "files": 0}
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if "files" not in manifest and not full:  # hand-made or pre-manifest directories: nothing to compare
            return {"artifact": str(path), "format": manifest.get("format"), "checked": "none", "files": 0}
        files = manifest["files"]
        entries = [(str(name), int(info["bytes"]), str(info["sha256"])) for name, info in files.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise EdgekitError(f"{manifest_path} is damaged (not the manifest edgekit writes)", RECREATE) from None
    from edgekit.manifest import file_sha256

    root = path.resolve()
    for name, size, sha in entries:
        f = (path / name).resolve()
        if root not in f.parents:
            raise EdgekitError(f"{manifest_path} lists {name}, outside the artifact", RECREATE)
        if not f.is_file():
            raise EdgekitError(f"artifact {path} is incomplete: {name} is missing", RECREATE)
        actual = f.stat().st_size
        if actual != size:
            raise EdgekitError(f"artifact {path} is damaged: {name} has {actual} bytes, its manifest says {size}",
                               RECREATE)
        why = _check_header(path, name)
        if why:
            raise EdgekitError(f"artifact {path} is damaged: {name} {why}", RECREATE)
        if full and file_sha256(f) != sha:
            raise EdgekitError(f"artifact {path} is damaged: {name} does not match its sha256 in {MANIFEST}",
                               RECREATE)
    return {"artifact": str(path), "format": manifest.get("format"), "checked": "sha256" if full else "size+header",
            "files": len(entries)}
