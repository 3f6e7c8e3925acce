"""llama.cpp's k-quants (and IQ types) through llama-cpp-python's C API: ``llama_model_quantize`` on edgekit's
F16/F32 GGUF, with edgekit's importance matrix passed as ``llama_model_imatrix_data`` entries, so no llama.cpp
binary is needed at run time. Progress comes from the quantizer's own per-tensor log lines."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

# --method name -> llama_ftype suffix (LLAMA_FTYPE_MOSTLY_<...>), as llama-quantize names them
# (q4_0..q8_0 here are llama.cpp's own quantizer, which weighs by the importance matrix; `--method rtn --type
# q4_0` is edgekit's round-to-nearest on the same grid)
METHODS: dict[str, str] = {m: m.upper() for m in (
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
    "q2_k", "q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
    "iq4_nl", "iq4_xs", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m",
    "iq1_s", "iq1_m", "tq1_0", "tq2_0")}
# llama.cpp refuses these without an importance matrix (llama_model_quantize_impl)
NEEDS_IMATRIX = {"iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m", "q2_k_s"}
_PROGRESS = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")


def ftype(method: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{METHODS[method]}", None)
    if value is None:  # not every enum value is exported as a constant by the bindings
        value = _FTYPES[METHODS[method]]
    return int(value)


# llama.h's enum llama_ftype, for the names the bindings do not export
_FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
           "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
           "Q5_K_M": 17, "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22, "IQ3_XXS": 23,
           "IQ1_S": 24, "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30,
           "IQ1_M": 31, "TQ1_0": 36, "TQ2_0": 37}
GGML_TYPE_F16 = 1
# rows of one tensor held in memory at once (source, float32 copy and output). llama.cpp's default (8 GiB) holds a
# whole tensor: for a 32000 x 2048 head that is 262 MB of float32 alone. Rows quantize independently, so slabs
# give the same bytes; 64 MiB keeps every slab large enough that the extra thread rounds do not show in the time
MAX_BUFFER = 64 << 20


def quantize(src: Path, dest: Path, method: str, imatrix: dict[str, np.ndarray] | None = None, *,
             keep_head: bool = False, keep_embed: bool = False, kv: dict[str, str] | None = None,
             threads: int = 0, progress: bool = True, max_buffer: int = MAX_BUFFER) -> dict[str, Any]:
    """Quantize the GGUF ``src`` into ``dest`` with llama.cpp's ``method`` mix; ``imatrix`` maps GGUF tensor
    names to per-column importances (sums / count). ``kv``: string metadata added to the output. ``max_buffer``:
    bytes of tensor rows processed at once (llama-quantize's ``--max-buffer-size``)."""
    import llama_cpp

    if method in NEEDS_IMATRIX and not imatrix:
        raise EdgekitError(f"{method} needs an importance matrix", "drop --no-imatrix, or pass --imatrix FILE")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(method)
    params.nthread = threads
    params.max_buf_size = max_buffer
    if keep_head:
        params.output_tensor_type = GGML_TYPE_F16
    if keep_embed:
        params.token_embedding_type = GGML_TYPE_F16
    keep: list[Any] = []  # ctypes buffers must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None  # terminator
        params.imatrix = entries
        keep.append(entries)
    if kv:
        overrides = (llama_cpp.llama_model_kv_override * (len(kv) + 1))()
        for i, (key, value) in enumerate(kv.items()):
            overrides[i].key = key.encode()[:127]
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            overrides[i].value.val_str = value.encode()[:127]
        overrides[len(kv)].key = b""  # terminator: empty key
        params.kv_overrides = overrides
        keep.append(overrides)
    log = _Log(progress)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    finally:
        log.close()
    if rc != 0:
        tail = log.errors[-1] if log.errors else "see llama.cpp's log"
        raise EdgekitError(f"llama.cpp's quantizer failed for {method} ({tail.strip()})",
                           "check the model converts to GGUF with `edgekit convert --to gguf`")
    return {"tensors": log.total}


class _Log:
    """Routes llama.cpp's log through a progress bar while quantizing, keeping errors; restores the default."""

    def __init__(self, progress: bool) -> None:
        import llama_cpp

        self.errors: list[str] = []
        self.total = 0
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(unit="tensor", desc="quantize", leave=False, disable=None)

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            m = _PROGRESS.search(text or b"")
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                self.total = total
                if self.bar is not None:
                    self.bar.total = total
                    self.bar.n = done
                    self.bar.refresh()
            if level == 3 and text:
                self.errors.append(text.decode("utf-8", "replace"))

        self.callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def close(self) -> None:
        import llama_cpp
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        if self.bar is not None:
            self.bar.close()
