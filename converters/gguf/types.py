"""GGML tensor types as llama.cpp's converter chooses them: the --outtype names, what stays F32, sizes."""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}
# tensors llama.cpp's converter always keeps in F32 (MoE routers, the shared expert's gate, learned positions),
# besides 1-D tensors and norms; held as the name without its "blk.{bid}." prefix, as choose_type compares
_ALWAYS_F32 = {gguf.TENSOR_NAMES[t].rsplit(".", 1)[-1]
               for t in (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP,
                         gguf.MODEL_TENSOR.POS_EMBD)}


def resolve_outtype(outtype: str | None, ckpt: Any) -> Q:
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


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    """Bytes GGUF stores for a tensor of logical ``shape`` in ``qtype``."""
    if qtype == Q.F32:
        return 4 * int(np.prod(shape, dtype=np.int64))
    if qtype in (Q.F16, Q.BF16):
        return 2 * int(np.prod(shape, dtype=np.int64))
    return int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype), dtype=np.int64))
