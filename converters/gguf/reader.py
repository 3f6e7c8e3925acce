"""Read safetensors tensors with plain file reads instead of the memory map.

safetensors' ``get_tensor`` copies out of an mmap; every page it touches stays resident in the
process, so after streaming a whole checkpoint the RSS equals the checkpoint's size even though only
one tensor is alive. Reading each tensor with ``readinto`` into its own buffer keeps the RSS at the
largest tensor (the page cache still serves repeated reads). Offsets come from the header, which
edgekit.checkpoint has already validated (sizes, truncation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


class SafetensorsReader:
    def __init__(self) -> None:
        self.headers: dict[Path, tuple[int, dict[str, Any]]] = {}

    def _header(self, path: Path) -> tuple[int, dict[str, Any]]:
        if path not in self.headers:
            with path.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                self.headers[path] = (8 + n, json.loads(fh.read(n)))
        return self.headers[path]

    def read(self, path: Path, name: str):
        """The tensor ``name`` of ``path`` as a torch tensor owning its memory, or None if not plain-readable."""
        import torch

        base, header = self._header(path)
        entry = header.get(name)
        if entry is None or entry.get("dtype") not in _DTYPES:
            return None
        start, end = entry["data_offsets"]
        buf = bytearray(end - start)
        with path.open("rb", buffering=0) as fh:
            fh.seek(base + start)
            view, got = memoryview(buf), 0
            while got < len(buf):
                n = fh.readinto(view[got:])
                if not n:
                    raise OSError(f"{path} ended while reading {name}")
                got += n
        if not buf:
            return torch.empty(entry["shape"], dtype=getattr(torch, _DTYPES[entry["dtype"]]))
        return torch.frombuffer(buf, dtype=getattr(torch, _DTYPES[entry["dtype"]])).reshape(entry["shape"])
