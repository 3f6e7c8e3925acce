"""Open a model reference as a lazy tensor source: local directory, hub id, optional LoRA adapter.

A reference is a local Hugging Face directory (``config.json`` plus ``model.safetensors`` or a
sharded ``model.safetensors.index.json``) or a hub id ``org/name[@revision]``. Tensors are read one at
a time (headers through ``safetensors.safe_open``, data with plain reads), so nothing ever holds the
whole model; :meth:`Checkpoint.array` serves numpy without importing torch, :meth:`Checkpoint.get` torch.
Every problem found while opening (missing files, corrupt or truncated safetensors, pickle weights,
an adapter that does not fit) is raised as :class:`EdgekitError` before any work starts.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import validate
from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
ADAPTER_CONFIG = "adapter_config.json"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of a stored tensor, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def resolve(ref: str | os.PathLike, *, kind: str = "model") -> Path:
    """Return the local directory for ``ref``, downloading a hub id ``org/name[@rev]`` if needed.

    Raises EdgekitError when the path is missing, or the hub cannot be reached (offline or no network).
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EdgekitError(f"{kind} path {path} is a file, not a directory",
                               "pass the directory holding config.json and the weights")
        return path.resolve()
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise EdgekitError(f"{kind} path {text} does not exist",
                           "pass a local Hugging Face directory or a hub id such as org/name[@revision]")
    return _download(text, kind)


def _download(hub_id: str, kind: str) -> Path:
    repo, _, revision = hub_id.partition("@")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        where = _cached_snapshot(repo, revision or None)
        if where is not None:
            return where
        raise EdgekitError(f"{kind} {hub_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                           "unset HF_HUB_OFFLINE, or download it elsewhere and pass the local directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # the hub client raises many types; all mean "could not fetch"
        where = _cached_snapshot(repo, revision or None)
        if where is not None:
            return where
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise EdgekitError(f"cannot download {kind} {hub_id} from the Hugging Face hub ({reason})",
                           "check the id and your network, or pass a local directory") from None


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:
        return None


# safetensors dtype -> numpy dtype of the stored bits (numpy has no bfloat16: BF16 bits are read as uint16)
NUMPY_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "uint16", "F64": "float64", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def widen_bf16(bits):
    """BF16 bits (uint16 array) as float32, exactly: bfloat16 is the top half of a float32."""
    import numpy as np

    return (bits.astype(np.uint32) << 16).view(np.float32)


class _SafetensorsFiles:
    """A set of safetensors files: headers validated once, tensors read one at a time on demand.

    Tensors are read with plain ``readinto`` calls rather than through safetensors' memory map: pages
    touched through an mmap stay resident in the process, so streaming a whole checkpoint would leave
    RSS at the checkpoint's size; a plain read keeps it at the largest live tensor (the page cache
    still serves repeated reads). Reads go to numpy, so converters that need no torch never import it.
    """

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self.index: dict[str, TensorInfo] = {}
        self.offsets: dict[str, tuple[int, int]] = {}  # absolute byte range of each tensor's data
        for f in files:
            if not f.exists():
                raise EdgekitError(f"weights file {f} is missing", "re-download the checkpoint")
            offsets = _validated_offsets(f)
            try:
                handle = safe_open(str(f), framework="numpy")
                for name in handle.keys():
                    sl = handle.get_slice(name)
                    self.index[name] = TensorInfo(name, tuple(sl.get_shape()), str(sl.get_dtype()), f)
            except EdgekitError:
                raise
            except Exception as exc:
                raise EdgekitError(f"cannot read safetensors file {f}: {str(exc).splitlines()[0]}",
                                   "the file is corrupt or truncated; re-download or re-save it") from None
            self.offsets.update(offsets)

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        """(file, start, end) of the tensor's stored little-endian bytes, when they are plain."""
        info = self.index[name]
        if info.dtype not in NUMPY_DTYPES or name not in self.offsets:
            return None
        return (info.file, *self.offsets[name])

    def raw(self, name: str):
        """The stored bits as a numpy array (BF16 as uint16), or None for dtypes numpy cannot hold."""
        info = self.index[name]
        where = self.byte_range(name)
        if where is None:
            return None
        try:
            return read_bits(*where, info.dtype).reshape(info.shape)
        except Exception as exc:
            raise EdgekitError(f"cannot read tensor {name} from {info.file}: {exc}",
                               "the file is corrupt; re-download it") from None

    def array(self, name: str):
        """The tensor as numpy: stored dtype, BF16 widened to float32, other exotic types through torch."""
        bits = self.raw(name)
        if bits is None:
            return self.get(name).float().numpy()
        return widen_bf16(bits) if self.index[name].dtype == "BF16" else bits

    def get(self, name: str):
        """The tensor as torch."""
        import torch

        bits = self.raw(name)
        if bits is not None:
            t = torch.from_numpy(bits)
            return t.view(torch.bfloat16) if self.index[name].dtype == "BF16" else t
        info = self.index[name]
        try:
            from safetensors import safe_open

            with safe_open(str(info.file), framework="pt") as fh:
                return fh.get_tensor(name)
        except Exception as exc:
            raise EdgekitError(f"cannot read tensor {name} from {info.file}: {exc}",
                               "the file is corrupt; re-download it") from None


def read_bits(file: Path, start: int, end: int, dtype: str):
    """Bytes ``start:end`` of ``file`` as a flat numpy array of safetensors ``dtype``'s stored bits
    (:data:`NUMPY_DTYPES`), read with plain reads; safe to call from several threads at once."""
    import numpy as np

    buf = np.empty(end - start, dtype=np.uint8)  # not bytearray: no zero-fill of memory about to be read into
    with file.open("rb", buffering=0) as fh:
        fh.seek(start)
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = fh.readinto(view[got:])
            if not n:
                raise OSError(f"file ended at byte {start + got}")
            got += n
    return buf.view(NUMPY_DTYPES[dtype])


def _validated_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte range of each tensor's data, from the header parsed once.

    Refuses a file shorter than its header declares: safetensors would fail later, mid-conversion.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise EdgekitError(f"safetensors file {path} is truncated ({size} bytes)", "re-download or re-save it")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100_000_000):
            raise EdgekitError(f"safetensors file {path} has a corrupt header (declares {n} header bytes, "
                               f"file has {size})", "re-download or re-save it")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise EdgekitError(f"safetensors file {path} has a corrupt header (not JSON)",
                               "re-download or re-save it") from None
    return validate.safetensors_header(header, 8 + n, size, path)


class _PickleFiles:
    """``pytorch_model.bin`` shards, read with ``torch.load(weights_only=True)`` (opt-in only)."""

    def __init__(self, files: list[Path]) -> None:
        import torch

        self.index: dict[str, TensorInfo] = {}
        self.tensors: dict[str, Any] = {}
        for f in files:
            try:
                state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise EdgekitError(f"cannot read pickle checkpoint {f}: {str(exc).splitlines()[0]}",
                                   "re-save it as safetensors") from None
            for name, t in state.items():
                self.index[name] = TensorInfo(name, tuple(t.shape), _torch_dtype_name(t.dtype), f)
                self.tensors[name] = t

    def get(self, name: str):
        return self.tensors[name]

    def array(self, name: str):
        import torch

        t = self.tensors[name]
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def byte_range(self, name: str) -> None:
        return None


def _torch_dtype_name(dtype) -> str:
    import torch

    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
             torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64"}
    return names.get(dtype, str(dtype))


def _weight_files(directory: Path, allow_pickle: bool, what: str) -> tuple[str, list[Path]]:
    """('safetensors' | 'pickle', files) for a model or adapter directory."""
    stems = {"model": (SAFETENSORS, SAFETENSORS_INDEX, PICKLE, PICKLE_INDEX),
             "adapter": ("adapter_model.safetensors", None, "adapter_model.bin", None)}[what]
    single, index, pickle_single, pickle_index = stems
    if (directory / single).exists():
        return "safetensors", [directory / single]
    if index and (directory / index).exists():
        return "safetensors", _index_files(directory, index)
    others = sorted(directory.glob("*.safetensors"))
    if others and what == "model":
        return "safetensors", others
    for name in (pickle_single, pickle_index):
        if name and (directory / name).exists():
            if not allow_pickle:
                raise EdgekitError(
                    f"{directory / name} is a pickle checkpoint, which can run code when loaded",
                    "pass --allow-pickle if you trust it (read with torch.load(weights_only=True)), "
                    "or convert it to safetensors")
            files = _index_files(directory, name) if name.endswith(".json") else [directory / name]
            return "pickle", files
    raise EdgekitError(f"no weights in {directory} (expected {single}"
                       + (f" or {index}" if index else "") + ")", "point at the directory holding the weights")


def _index_files(directory: Path, index_name: str) -> list[Path]:
    index = read_json(directory / index_name, "weight index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise EdgekitError(f"weight index {directory / index_name} has no weight_map", "restore the file")
    return [directory / f for f in sorted(set(weight_map.values()))]


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter, read lazily; :meth:`delta` gives ``scale * B @ A`` in the base layout."""

    path: Path
    config: dict[str, Any]
    files: Any
    # base tensor name -> (lora A name, lora B name, kind) with kind "linear" or "embedding"
    pairs: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # base tensor name -> adapter tensor name that replaces it (modules_to_save)
    replaced: dict[str, str] = field(default_factory=dict)

    def scale(self, base_name: str) -> float:
        module = base_name.rsplit(".", 1)[0]
        r = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config.get("r", 8))
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config.get("lora_alpha", 8))
        if self.config.get("use_rslora"):
            return alpha / r ** 0.5
        return alpha / r

    def delta(self, base_name: str):
        """The weight update for ``base_name`` in its stored layout, float32."""
        a_name, b_name, kind = self.pairs[base_name]
        a = self.files.get(a_name).float()
        b = self.files.get(b_name).float()
        if kind == "embedding":
            update = (b @ a).T  # peft stores embedding A as (r, vocab) and B as (dim, r)
        else:
            update = b @ a
            if self.config.get("fan_in_fan_out"):
                update = update.T
        return update * self.scale(base_name)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rule for rank_pattern/alpha_pattern: exact key, else a regex matching the module's tail."""
    if module in patterns:
        return patterns[module]
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")


def _strip_peft_prefix(name: str) -> str:
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def open_adapter(ref: str | os.PathLike, allow_pickle: bool = False) -> LoraAdapter:
    """Read a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)."""
    directory = resolve(ref, kind="adapter")
    if not (directory / ADAPTER_CONFIG).exists():
        raise EdgekitError(f"adapter directory {directory} has no {ADAPTER_CONFIG}",
                           "pass a PEFT LoRA adapter directory (as saved by peft's save_pretrained)")
    config = read_json(directory / ADAPTER_CONFIG, "adapter config")
    validate.adapter_config(config, directory / ADAPTER_CONFIG)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise EdgekitError(f"adapter {directory} is a {peft_type} adapter; only LoRA adapters can be merged",
                           "merge it with peft first and pass the merged model")
    if config.get("use_dora"):
        raise EdgekitError(f"adapter {directory} uses DoRA, which edgekit does not merge",
                           "merge it with peft's merge_and_unload() and pass the merged model")
    kind, files = _weight_files(directory, allow_pickle, "adapter")
    store = _SafetensorsFiles(files) if kind == "safetensors" else _PickleFiles(files)
    adapter = LoraAdapter(directory, config, store)
    halves: dict[str, dict[str, str]] = {}
    for name in store.index:
        m = _LORA_KEY.match(name)
        if m is None:
            # modules_to_save copies and saved embedding layers replace the base tensor outright
            base_name = _strip_peft_prefix(name).replace(".modules_to_save.default", "").replace(".base_layer", "")
            adapter.replaced[base_name] = name
            continue
        module = _strip_peft_prefix(m["module"])
        halves.setdefault(module, {})[m["which"]] = name
    for module, h in halves.items():
        if "lora_A" in h and "lora_B" in h:
            adapter.pairs[f"{module}.weight"] = (h["lora_A"], h["lora_B"], "linear")
        elif "lora_embedding_A" in h and "lora_embedding_B" in h:
            adapter.pairs[f"{module}.weight"] = (h["lora_embedding_A"], h["lora_embedding_B"], "embedding")
        else:
            raise EdgekitError(f"adapter {directory} has an incomplete LoRA pair for {module} ({sorted(h)})",
                               "re-save the adapter with peft")
    if not adapter.pairs and not adapter.replaced:
        raise EdgekitError(f"adapter {directory} holds no LoRA tensors", "re-save the adapter with peft")
    return adapter


class Checkpoint:
    """A checkpoint opened for streaming: config, tensor names/shapes/dtypes, and tensors on demand.

    With an adapter, :meth:`get` returns base + LoRA delta for the adapted tensors (merged in float32,
    cast back to the stored dtype), so every consumer sees the merged model without a merged copy.
    """

    def __init__(self, path: Path, config: dict[str, Any], store: Any, weight_kind: str, files: list[Path],
                 adapter: LoraAdapter | None = None) -> None:
        self.path, self.config, self.weight_kind, self.files = path, config, weight_kind, files
        self._store, self.adapter = store, adapter

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        """Name -> TensorInfo for every stored tensor, in file order."""
        return self._store.index

    def names(self) -> list[str]:
        return list(self._store.index)

    def get(self, name: str):
        """The tensor ``name`` as a torch tensor (adapter merged), read now from the mapped file."""
        if name not in self._store.index:
            raise KeyError(name)
        tensor = self._store.get(name)
        if self.adapter is not None:
            dtype = tensor.dtype
            if name in self.adapter.replaced:
                tensor = self.adapter.files.get(self.adapter.replaced[name])
            if name in self.adapter.pairs:
                tensor = tensor.float() + self.adapter.delta(name)
            tensor = tensor.to(dtype)
        return tensor

    def _adapted(self, name: str) -> bool:
        return self.adapter is not None and (name in self.adapter.pairs or name in self.adapter.replaced)

    def array(self, name: str):
        """The tensor ``name`` as a numpy array (adapter merged): its stored dtype, except BF16, which
        numpy cannot hold, widened exactly to float32. Without an adapter this never imports torch."""
        if name not in self._store.index:
            raise KeyError(name)
        if not self._adapted(name):
            return self._store.array(name)
        t = self.get(name)
        import torch

        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        """(file, start, end) holding the tensor's stored bytes unchanged (little-endian, row-major), or
        None when there is no such range (pickle weights, exotic dtypes, a tensor the adapter changes)."""
        if name not in self._store.index:
            raise KeyError(name)
        return None if self._adapted(name) else self._store.byte_range(name)

    def iter_tensors(self) -> Iterator[tuple[str, Any]]:
        """Yield (name, tensor) one at a time, in file order."""
        for name in self.names():
            yield name, self.get(name)

    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def sha256(self, check_finite: bool = True) -> str:
        """sha256 over the weight files' bytes, in sorted file-name order (streamed in 8 MiB blocks).

        The same pass refuses a float tensor holding NaN or infinity (EdgekitError naming it), so every
        converter, which hashes its source, rejects non-finite weights at no extra read; the adapter's
        float tensors are checked too.
        """
        h = hashlib.sha256()
        offsets = getattr(self._store, "offsets", {})
        for f in sorted(self.files, key=lambda p: p.name):
            _scan(f, _float_ranges(self._store.index, offsets, f) if check_finite else [], h)
        if check_finite and self.adapter is not None:
            store = self.adapter.files
            for f in getattr(store, "offsets", None) and {t.file for t in store.index.values()} or ():
                _scan(f, _float_ranges(store.index, store.offsets, f), None)
        return h.hexdigest()


_FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}
_HALF_EXPONENT = {"F16": 0x7C00, "BF16": 0x7F80}


def _float_ranges(index: dict[str, TensorInfo], offsets: dict[str, tuple[int, int]],
                  file: Path) -> list[tuple[int, int, str, str]]:
    """(start, end, name, dtype) of the float tensors stored in ``file``, in file order."""
    return sorted((*offsets[n], n, t.dtype) for n, t in index.items()
                  if t.file == file and n in offsets and t.dtype in _FLOAT_DTYPES)


def _scan(path: Path, tensors: list[tuple[int, int, str, str]], h: Any, block: int = 2 << 20) -> None:
    """Feed ``path`` to the hash ``h`` (if any) in blocks, checking each listed tensor's elements are
    finite as its bytes pass (blocks are cut at tensor boundaries, so elements never straddle two).
    Blocks are read into one reused buffer and checked into reused scratch arrays: a few MB resident,
    whatever the checkpoint's size."""
    import numpy as np

    cuts = sorted({c for s, e, _, _ in tensors for c in (s, e)})
    buf = memoryview(bytearray(block))
    masked = np.empty(block // 2, dtype=np.uint16)  # a half-precision block's bits without the sign
    finite = np.empty(block // 4, dtype=bool)
    with path.open("rb", buffering=0) as fh:
        pos, ti = 0, 0
        while True:
            i = bisect.bisect_right(cuts, pos)
            nxt = min(pos + block, cuts[i]) if i < len(cuts) else pos + block
            n = 0
            while n < nxt - pos and (k := fh.readinto(buf[n:nxt - pos])):
                n += k
            if not n:
                break
            data = buf[:n]
            if h is not None:
                h.update(data)
            while ti < len(tensors) and tensors[ti][1] <= pos:
                ti += 1
            if ti < len(tensors) and tensors[ti][0] <= pos < tensors[ti][1]:
                _, _, name, dtype = tensors[ti]
                code = np.dtype(_FLOAT_DTYPES[dtype])
                values = np.frombuffer(data, dtype=code, count=n // code.itemsize)
                if dtype in _HALF_EXPONENT:  # |bits| at or above all-ones exponent = inf or NaN; 4x isfinite's speed
                    bits = np.bitwise_and(values.view(np.uint16), 0x7FFF, out=masked[:values.size])
                    bad = values.size > 0 and int(bits.max()) >= _HALF_EXPONENT[dtype]
                else:
                    bad = not bool(np.isfinite(values, out=finite[:values.size]).all())
                if bad:
                    raise EdgekitError(f"tensor {name} in {path} holds NaN or infinite values",
                                       "the checkpoint is corrupt or diverged in training; use a healthy checkpoint")
            pos += n


def open_checkpoint(ref: str | os.PathLike, adapter: str | os.PathLike | None = None,
                    allow_pickle: bool = False) -> Checkpoint:
    """Open ``ref`` (local directory or hub id) and optionally a LoRA ``adapter`` to merge on the fly.

    Everything is validated here: config present and JSON, weights readable and complete, adapter
    tensors matching the base shapes. Raises EdgekitError with a one-line explanation otherwise.
    """
    path = resolve(ref)
    if not (path / CONFIG).exists():
        hint = "this looks like a PEFT adapter: pass the base model and --adapter this directory" \
            if (path / ADAPTER_CONFIG).exists() else "point at a Hugging Face model directory"
        raise EdgekitError(f"{path} has no {CONFIG}", hint)
    config = read_json(path / CONFIG, "model config")
    validate.config(config, path / CONFIG)
    kind, files = _weight_files(path, allow_pickle, "model")
    store = _SafetensorsFiles(files) if kind == "safetensors" else _PickleFiles(files)
    validate.config_against_tensors(config, {n: t.shape for n, t in store.index.items()}, path / CONFIG)
    lora = open_adapter(adapter, allow_pickle) if adapter is not None else None
    if lora is not None:
        _check_adapter_fits(store.index, lora)
    return Checkpoint(path, config, store, kind, files, lora)


def _check_adapter_fits(index: dict[str, TensorInfo], lora: LoraAdapter) -> None:
    for base_name, (a_name, b_name, kind) in lora.pairs.items():
        if base_name not in index:
            raise EdgekitError(f"adapter {lora.path} targets {base_name}, which the base model does not have",
                               "use the base model the adapter was trained on")
        a, b = lora.files.index[a_name].shape, lora.files.index[b_name].shape
        if kind == "embedding":
            shape = (a[1], b[0])
        else:
            shape = (b[0], a[1])
            if lora.config.get("fan_in_fan_out"):
                shape = shape[::-1]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1] or tuple(index[base_name].shape) != shape:
            raise EdgekitError(
                f"adapter {lora.path} does not fit the base model: {base_name} is "
                f"{list(index[base_name].shape)} but the LoRA update is {list(shape)}",
                "use the base model the adapter was trained on")
    for base_name, adapter_name in lora.replaced.items():
        if base_name not in index or tuple(index[base_name].shape) != lora.files.index[adapter_name].shape:
            raise EdgekitError(f"adapter {lora.path} replaces {base_name}, which the base model lacks or shapes "
                               "differently", "use the base model the adapter was trained on")
