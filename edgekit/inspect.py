"""``edgekit inspect``: what a checkpoint is, read from its config and safetensors headers only."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from edgekit import spec as specmod
from edgekit import tokenizer
from edgekit.artifacts import human_size
from edgekit.checkpoint import open_checkpoint


def inspect(model: str | os.PathLike, adapter: str | os.PathLike | None = None,
            allow_pickle: bool = False) -> dict[str, Any]:
    """Describe a checkpoint without reading any tensor data.

    Returns a JSON-serialisable dict: path, spec, parameter counts (from the spec and from the stored
    tensors), dtypes, size on disk, tokenizer kind, chat template presence, adapter summary.
    Raises EdgekitError for anything unreadable or unsupported.
    """
    ckpt = open_checkpoint(model, adapter=adapter, allow_pickle=allow_pickle)
    spec = specmod.from_config(ckpt.config)
    dtypes = Counter()
    stored = 0
    for info in ckpt.tensors.values():
        dtypes[info.dtype] += info.numel
        stored += info.numel
    result: dict[str, Any] = {
        "path": str(ckpt.path),
        "architecture": spec.architecture,
        "hf_class": spec.hf_class,
        "parameters": spec.parameter_count(),
        "stored_parameters": stored,
        "tensors": len(ckpt.tensors),
        "dtypes": dict(dtypes.most_common()),
        "weights": ckpt.weight_kind,
        "size_on_disk": ckpt.size_on_disk(),
        "tokenizer": tokenizer.describe(ckpt.path),
        "spec": spec.to_dict(),
    }
    if ckpt.adapter is not None:
        cfg = ckpt.adapter.config
        result["adapter"] = {
            "path": str(ckpt.adapter.path), "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"),
            "use_rslora": bool(cfg.get("use_rslora")), "target_modules": cfg.get("target_modules"),
            "merged_tensors": len(ckpt.adapter.pairs), "replaced_tensors": len(ckpt.adapter.replaced),
            "base_model": cfg.get("base_model_name_or_path"),
        }
    return result


def format_text(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect`'s result."""
    s = info["spec"]
    rope = s["rope"]
    rope_txt = "learned positions" if rope is None else (
        f"theta {rope['theta']:g}" + (f", {rope['scaling']} x{rope['factor']}" if rope["scaling"] else ""))
    tok = info["tokenizer"]
    lines = [
        f"model         {info['path']}",
        f"architecture  {info['architecture']} ({info['hf_class']})",
        f"parameters    {info['parameters']:,} ({info['stored_parameters']:,} stored in {info['tensors']} tensors)",
        f"dtypes        {', '.join(f'{k} {v:,}' for k, v in info['dtypes'].items())}",
        f"on disk       {human_size(info['size_on_disk'])} ({info['weights']})",
        f"layers        {s['num_layers']} x hidden {s['hidden_size']}, ffn {s['intermediate_size']}, "
        f"{s['activation']}",
        f"attention     {s['num_heads']} heads, {s['num_kv_heads']} kv heads, head_dim {s['head_dim']}"
        + (f", sliding window {s['sliding_window']}" if s["sliding_window"] else "")
        + (", qk-norm" if s["qk_norm"] else "") + (", bias" if s["attention_bias"] else ""),
        f"norm          {s['norm']} eps {s['norm_eps']:g}",
        f"positions     {rope_txt}; context {s['context_length']}",
        f"embeddings    {'tied' if s['tied_embeddings'] else 'untied'}, vocab {s['vocab_size']}",
    ]
    if s["moe"]:
        m = s["moe"]
        lines.append(f"experts       {m['experts']} ({m['experts_per_token']} per token)"
                     + (f", shared expert ffn {m['shared_expert_intermediate']}" if m["shared_expert_intermediate"]
                        else ""))
    kind = tok["kind"] + (" (byte-level)" if tok["byte_level"] else "")
    lines.append(f"tokenizer     {kind}" + (f", {tok['vocab_size']} tokens" if tok["vocab_size"] else ""))
    lines.append(f"chat template {'yes' if tok['chat_template'] else 'no'}")
    lines.append(f"special ids   bos {s['bos_token_id']}, eos {s['eos_token_id']}, pad {s['pad_token_id']}")
    if "adapter" in info:
        a = info["adapter"]
        lines.append(f"adapter       {a['path']}: LoRA r={a['r']} alpha={a['lora_alpha']}"
                     + (" rslora" if a["use_rslora"] else "") + f", {a['merged_tensors']} tensors merged")
    return "\n".join(lines)
