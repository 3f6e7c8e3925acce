"""Checks of every input edgekit reads from the user's files, in one place.

Each check raises :class:`EdgekitError` (one line, exit 2) naming the file, the key and the bad value,
before anything is allocated from it: a config that says ``vocab_size: 10**12`` is refused here, not
by a MemoryError later. Callers: :func:`edgekit.checkpoint.open_checkpoint` (config, safetensors
headers, config against tensors, adapter config) and the converters (tokenizer files).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

RESTORE = "restore config.json from the model's source"
# generous ceilings, far above any published model, that keep a corrupt value from sizing an allocation
LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 17, "n_embd": 1 << 17, "num_hidden_layers": 1 << 12,
          "n_layer": 1 << 12, "num_attention_heads": 1 << 12, "n_head": 1 << 12, "num_key_value_heads": 1 << 12,
          "head_dim": 1 << 13, "intermediate_size": 1 << 20, "n_inner": 1 << 20, "moe_intermediate_size": 1 << 20,
          "shared_expert_intermediate_size": 1 << 20, "max_position_embeddings": 1 << 24, "n_positions": 1 << 24,
          "num_local_experts": 1 << 12, "num_experts": 1 << 12, "num_experts_per_tok": 1 << 12,
          "sliding_window": 1 << 24, "decoder_sparse_step": 1 << 12}
FLOATS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "partial_rotary_factor",
          "original_max_position_embeddings",
          "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar")
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
                      "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_EMBEDDING = ("embed_tokens.weight", "wte.weight")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _types(cfg: dict[str, Any], path: Path) -> None:
    """The non-size keys a ModelSpec reads have the JSON types transformers writes."""
    def bad(key: str, value: Any, want: str) -> EdgekitError:
        return EdgekitError(f"{path}: {key} is {value!r:.60}, not {want}", RESTORE)

    if not isinstance(cfg.get("model_type"), str):
        raise bad("model_type", cfg.get("model_type"), "a model type name")
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise bad("architectures", archs, "a list of class names")
    for key in ("hidden_act", "hidden_activation", "activation_function"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise bad(key, cfg[key], "an activation name")
    for key in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "norm_topk_prob"):
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            raise bad(key, cfg[key], "true or false")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = cfg.get(key)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(is_int(i) for i in ids):  # pad -1 appears in old configs
            raise bad(key, value, "a token id or a list of them")
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise bad(key, value, "an object")
        for rope in [value, *(v for v in value.values() if isinstance(v, dict))]:
            for k in ("rope_type", "type"):
                if rope.get(k) is not None and not isinstance(rope[k], str):
                    raise bad(f"{key}.{k}", rope[k], "a rope type name")
            for k in ("factor", "rope_theta", "partial_rotary_factor", "beta_fast", "beta_slow", "low_freq_factor",
                      "high_freq_factor", "attention_factor", "mscale", "mscale_all_dim"):
                zero_ok = k in ("attention_factor", "mscale", "mscale_all_dim", "beta_slow")
                if rope.get(k) is not None and (not _number(rope[k]) or rope[k] < 0 or (rope[k] == 0 and not zero_ok)):
                    raise bad(f"{key}.{k}", rope[k], "a finite positive number")
            k = "original_max_position_embeddings"
            if rope.get(k) is not None and (not is_int(rope[k]) or not 0 < rope[k] <= LIMITS["n_positions"]):
                raise bad(f"{key}.{k}", rope[k], "a positive integer")


def config(cfg: dict[str, Any], path: Path) -> None:
    """Sizes positive integers within :data:`LIMITS`, floats finite, heads dividing evenly, types right."""
    _types(cfg, path)
    for key, limit in LIMITS.items():
        value = cfg.get(key)
        if value is None:
            continue
        if key == "sliding_window" and value is False:
            continue
        zero_ok = key in ("num_experts", "sliding_window")
        if not is_int(value) or value < (0 if zero_ok else 1) or value > limit:
            raise EdgekitError(f"{path}: {key} is {value!r}, not a {'non-negative' if zero_ok else 'positive'} "
                               f"integer of at most {limit}", RESTORE)
    for key in FLOATS:
        value = cfg.get(key)
        if value is not None and (not _number(value) or value < 0):
            raise EdgekitError(f"{path}: {key} is {value!r}, not a finite non-negative number", RESTORE)
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    kv = cfg.get("num_key_value_heads") or heads
    if heads and kv and heads % kv:
        raise EdgekitError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}",
                           RESTORE)
    if hidden and heads and not cfg.get("head_dim") and hidden % heads:
        raise EdgekitError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
                           "and no head_dim is given", RESTORE)
    per_tok, experts = cfg.get("num_experts_per_tok"), cfg.get("num_local_experts", cfg.get("num_experts"))
    if per_tok and experts and per_tok > experts:
        raise EdgekitError(f"{path}: num_experts_per_tok {per_tok} exceeds the {experts} experts", RESTORE)


def config_against_tensors(cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """The config's vocabulary, width and depth against what the stored tensors hold."""
    vocab, hidden = cfg.get("vocab_size"), cfg.get("hidden_size", cfg.get("n_embd"))
    for name, shape in shapes.items():
        if name.endswith(_EMBEDDING) and len(shape) == 2:
            if vocab is not None and shape[0] != vocab:
                raise EdgekitError(f"{path}: vocab_size {vocab} does not match the {shape[0]} rows of {name}",
                                   RESTORE)
            if hidden is not None and shape[1] != hidden:
                raise EdgekitError(f"{path}: hidden_size {hidden} does not match the {shape[1]} columns of {name}",
                                   RESTORE)
            break
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    found = {int(m.group(1)) for name in shapes if (m := _LAYER.search(name))}
    if layers is not None and found and max(found) + 1 != layers:
        raise EdgekitError(f"{path}: num_hidden_layers is {layers} but the weights hold {max(found) + 1} layers",
                           RESTORE)


def safetensors_header(header: Any, data_start: int, size: int, path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte range of each tensor, after checking every entry's dtype, shape and data_offsets:
    types right, offsets inside the file, length = elements x item size, no two tensors overlapping."""
    fix = "the file is corrupt; re-download or re-save it"
    if not isinstance(header, dict):
        raise EdgekitError(f"safetensors file {path} has a corrupt header (not a JSON object)", fix)
    ranges: dict[str, tuple[int, int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and not isinstance(entry, dict):
                raise EdgekitError(f"safetensors file {path}: __metadata__ is not an object", fix)
            continue
        what = f"safetensors file {path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise EdgekitError(f"{what} has no dtype/shape/data_offsets entry", fix)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise EdgekitError(f"{what} has dtype {dtype!r}, not a safetensors dtype", fix)
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise EdgekitError(f"{what} has shape {shape!r}, not a list of non-negative integers", fix)
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise EdgekitError(f"{what} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end", fix)
        numel = math.prod(shape)
        bits = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}.get(dtype, 8 * SAFETENSORS_DTYPES[dtype])
        if (offsets[1] - offsets[0]) * 8 != numel * bits:
            raise EdgekitError(f"{what}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes but shape "
                               f"{shape} x {dtype} needs {numel * bits // 8}", fix)
        start, end = data_start + offsets[0], data_start + offsets[1]
        if end > size:
            raise EdgekitError(f"safetensors file {path} is truncated: {size} bytes, tensor {name!r} needs {end}",
                               "re-download or re-save it")
        ranges[name] = (start, end)
    spans = sorted((s, e, n) for n, (s, e) in ranges.items() if e > s)
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise EdgekitError(f"safetensors file {path}: tensors {a!r} and {b!r} overlap", fix)
    return ranges


def adapter_config(cfg: dict[str, Any], path: Path) -> None:
    """LoRA rank a positive integer, alpha a finite number, and the per-module patterns alike."""
    fix = "fix adapter_config.json or re-save the adapter with peft"

    def rank(value: Any, where: str) -> None:
        if not is_int(value) or not 1 <= value <= 1 << 16:
            raise EdgekitError(f"{path}: {where} is {value!r}, not a positive integer rank", fix)

    def alpha(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
            raise EdgekitError(f"{path}: {where} is {value!r}, not a finite non-zero number", fix)

    rank(cfg.get("r", 8), "r")
    alpha(cfg.get("lora_alpha", 8), "lora_alpha")
    for key, check in (("rank_pattern", rank), ("alpha_pattern", alpha)):
        patterns = cfg.get(key) or {}
        if not isinstance(patterns, dict):
            raise EdgekitError(f"{path}: {key} is not an object", fix)
        for module, value in patterns.items():
            check(value, f"{key}[{module!r}]")


def tokenizer_files(directory: Path, vocab_size: int) -> None:
    """The tokenizer an artifact will carry: present, loadable, and its ids inside the model's vocabulary."""
    has_json, has_spm = (directory / "tokenizer.json").exists(), (directory / "tokenizer.model").exists()
    fix = "copy the tokenizer files from the model's source next to config.json"
    if not has_json and not has_spm:
        raise EdgekitError(f"{directory} has no tokenizer (tokenizer.json or tokenizer.model)", fix)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        f = directory / name
        if f.exists():
            try:
                ok = isinstance(json.loads(f.read_text(encoding="utf-8")), dict)
            except (OSError, UnicodeDecodeError, ValueError):
                ok = False
            if not ok:
                raise EdgekitError(f"{f} is not a JSON object", fix)
    if not has_json:
        return
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises a plain Exception for any parse error
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise EdgekitError(f"{directory / 'tokenizer.json'} cannot be loaded ({reason})", fix) from None
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise EdgekitError(f"{directory / 'tokenizer.json'} has token id {top}, beyond the model's vocab_size "
                           f"{vocab_size}", "use the tokenizer the model was trained with")
