"""The round trip of a llama.cpp k-quant, for AWQ's search before ``--then q4_k_m`` (and the other k-quants):
llama.cpp's own quantizer (``ggml_quantize_chunk`` in llama-cpp-python's libggml-base, weighted by the importance
of each input column as llama.cpp's imatrix path weighs it) and gguf-py's dequantizer, so the error AWQ searches
and clips against is the error of the k-quant's own sub-block scales and mins, not a stand-in grid's."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

# --then method prefix -> the k-quant type of most of its tensors (q4_k_m keeps some v/down at q6_K: finer, so the
# q4_K search is the one that matters)
TYPES = {"q2_k": "Q2_K", "q3_k": "Q3_K", "q4_k": "Q4_K", "q5_k": "Q5_K", "q6_k": "Q6_K"}
# what llama.cpp's llama_tensor_get_type falls back to for rows that are not a multiple of 256 (e.g. SmolLM2's 576)
FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def for_method(method: str) -> KQuant | None:
    """The k-quant grid of a llama.cpp ``--then`` method, None for the types that have none here (IQ, TQ)."""
    name = next((t for p, t in TYPES.items() if method.startswith(p)), None)
    return KQuant(name) if name else None


class KQuant:
    """quantize / dequantize of one k-quant type over rows of 256-multiples; ``block_size`` is the sub-block that has
    its own scale (and min): the clip search's unit."""

    block_size = 32
    weighted = True  # quantize takes the importance of each input column

    def __init__(self, type_name: str) -> None:
        self.name = type_name
        self._lib = _lib()

    def _type(self, n: int) -> tuple[int, Any]:
        import gguf

        qtype = gguf.GGMLQuantizationType[self.name if n % 256 == 0 else FALLBACK[self.name]]
        self._lib.ggml_quantize_init(int(qtype))
        return int(qtype), qtype

    def quantize(self, a: np.ndarray, importance: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
        # the k-quant path quantizes an F16 GGUF (llama.cpp's default base for float32 weights)
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float32).astype(np.float16), dtype=np.float32)
        rows, n = a.shape
        t, qtype = self._type(n)
        dst = np.empty((rows, self._lib.ggml_row_size(t, n)), np.uint8)
        imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
        self._lib.ggml_quantize_chunk(t, a.ctypes.data, dst.ctypes.data, 0, rows, n,
                                      None if imp is None else imp.ctypes.data)
        return qtype, dst

    def dequantize(self, q: tuple[Any, np.ndarray]) -> np.ndarray:
        from gguf.quants import dequantize

        return dequantize(q[1], q[0])


_LIB = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        from llama_cpp import _ggml

        lib = ctypes.CDLL(str(Path(_ggml.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        _LIB = lib
    return _LIB
