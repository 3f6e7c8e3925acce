"""``genai_config.json`` in onnxruntime-genai's schema, so ``onnxruntime_genai.Model(dir)`` loads the export."""

from __future__ import annotations

from typing import Any

from edgekit.spec import ModelSpec


def _first_id(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def config(spec: ModelSpec, context_length: int, filename: str = "model.onnx") -> dict[str, Any]:
    """The decoder section names our I/O; past and present are separate buffers (the graph concatenates)."""
    eos = spec.eos_token_id
    pad = spec.pad_token_id if spec.pad_token_id is not None else _first_id(eos)
    return {
        "model": {
            "bos_token_id": spec.bos_token_id if spec.bos_token_id is not None else _first_id(eos),
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": spec.num_heads,
                "num_hidden_layers": spec.num_layers,
                "num_key_value_heads": spec.num_kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            # a type onnxruntime-genai's model factory knows (the family says); else a generic decoder
            "type": spec.family.genai_type or "decoder",
            "vocab_size": spec.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context_length, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }
