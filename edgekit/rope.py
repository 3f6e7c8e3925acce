"""Rotary position tables, computed one way for every format.

:func:`tables` gives cos/sin per layer kind for the ONNX graph and the Core ML module: plain rope by
transformers' own formula (``compute_default_rope_parameters`` + its forward, fp32) without importing
its model classes, which costs seconds; any scaled rope by the family's transformers rotary class, so
every scaling type, attention factor and partial-rotary rule is exactly transformers'.
:func:`llama3_factors` is the numpy form llama.cpp's GGUF converter stores for Llama 3.1 scaling (the
GGUF path never imports torch, so it cannot ask transformers).
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

import numpy as np


def tables(config: dict[str, Any], spec: Any, length: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer kind: (cos, sin)} of shape (length, rotary_dim), float32, for the kinds in ``spec.layer_types``."""
    import torch

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rotary = None
    for kind in sorted(set(spec.layer_types)):
        rope = spec.rope_for(kind)
        if rope.scaling is None:
            dim = int(spec.head_dim * rope.partial_rotary_factor)
            inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))
            freqs = torch.arange(length)[:, None].float() * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            out[kind] = emb.cos().numpy(), emb.sin().numpy()
            continue
        if rotary is None:
            rotary = _transformers_rotary(config, spec)
        kw = {"layer_type": f"{kind}_attention"} if "layer_type" in inspect.signature(rotary.forward).parameters else {}
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(length)[None], **kw)
        out[kind] = cos[0].float().numpy(), sin[0].float().numpy()
    return out


def _transformers_rotary(config: dict[str, Any], spec: Any) -> Any:
    import transformers

    module = spec.family.transformers_module
    cfg = transformers.CONFIG_MAPPING[spec.architecture].from_dict(dict(config))
    modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    cls = next(getattr(modeling, n) for n in dir(modeling) if n.endswith("RotaryEmbedding"))
    return cls(config=cfg)


def llama3_factors(theta: float, dim: int, factor: float, extra: dict, old_context: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1 rope scaling, as llama.cpp's converter computes them."""
    low, high = float(extra.get("low_freq_factor", 1.0)), float(extra.get("high_freq_factor", 4.0))
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)
