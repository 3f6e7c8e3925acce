"""NF4 (QLoRA's 4-bit NormalFloat): the 16-value codebook, nearest-code encoding against a per-block absmax,
and QLoRA's double quantization of the absmax (8-bit dynamic codes per 256 absmax, around their mean)."""

from __future__ import annotations

import numpy as np

# bitsandbytes' NF4 table (bitsandbytes/functional.py get_4bit_type "nf4"), exactly as float32
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


def nearest(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the sorted ``table`` for each value of ``x`` (ties to the lower entry, as
    ``argmin`` of the distance does in bitsandbytes' CPU kernel)."""
    i = np.clip(np.searchsorted(table, x), 1, len(table) - 1)
    below, above = table[i - 1], table[i]
    return np.where(np.abs(x - below) <= np.abs(above - x), i - 1, i).astype(np.uint8)


def absmax_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NF4 codes uint8 [n, block], absmax float32 [n]) of float32 ``blocks`` [n, block], as bitsandbytes
    ``quantize_4bit(quant_type="nf4")``: x * (1/absmax), clamped to [-1, 1], nearest table entry."""
    absmax = np.abs(blocks).max(axis=-1).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = (np.float32(1) / absmax).astype(np.float32)
    scaled = np.clip(blocks * inv[:, None], -1, 1)
    scaled = np.nan_to_num(scaled, nan=0.0)  # an all-zero block: 0 * inf
    return nearest(scaled, NF4), absmax


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map(signed=True)``): 256 sorted values, in
    [-1, 1], that QLoRA's double quantization encodes the absmax with."""
    # hand-written after bitsandbytes.functional.create_dynamic_map: no library exposes it without torch
    max_exponent_bits, total_bits = 7, 8
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    data: list[float] = []
    for i in range(max_exponent_bits):
        fraction_items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        boundaries = np.linspace(0.1, 1, fraction_items, dtype=np.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = np.linspace(0.1, 1, additional_items + 1, dtype=np.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return np.sort(np.array(data, dtype=np.float32))


def double_quantize(absmax: np.ndarray, block: int = 256) -> np.ndarray:
    """QLoRA's double quantization: the absmax minus their mean, 8-bit dynamic codes per ``block`` absmax with
    a float32 absmax of their own; returns the absmax as the runtime reconstructs them (float32)."""
    offset = np.float32(absmax.mean(dtype=np.float32))
    centred = (absmax - offset).astype(np.float32)
    n = len(centred)
    pad = (-n) % block
    blocks = np.concatenate([centred, np.zeros(pad, np.float32)]).reshape(-1, block)
    amax = np.abs(blocks).max(axis=-1, keepdims=True).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.nan_to_num(np.clip(blocks * (np.float32(1) / amax), -1, 1))
    table = dynamic_map()
    codes = nearest(scaled, table)
    return ((table[codes] * amax).reshape(-1)[:n] + offset).astype(np.float32)
