"""Qwen2: q/k/v biases, rope on the whole head in rotate-half order (llama.cpp's QWEN2 needs no permutation).

The Qwen sliding-window rule, shared by qwen2, qwen3 and qwen2_moe: the config's ``sliding_window`` applies
only when ``use_sliding_window`` is true (and then, in transformers, from layer ``max_window_layers`` on)."""

from __future__ import annotations

from typing import Any

from edgekit.archs import register
from edgekit.archs.base import Family


class QwenWindow(Family):
    def window(self, config: dict[str, Any]) -> int | None:
        if not config.get("use_sliding_window", False):
            return None
        return super().window(config)

    def layer_types(self, config: dict[str, Any], num_layers: int) -> tuple[str, ...]:
        if self.window(config) and not isinstance(config.get("layer_types"), list):
            first_sliding = int(config.get("max_window_layers", 0) or 0)
            return tuple("sliding" if i >= first_sliding else "full" for i in range(num_layers))
        return super().layer_types(config, num_layers)


@register("qwen2")
class Qwen2(QwenWindow):
    qkv_bias = True
    hf_class = "Qwen2ForCausalLM"
    gguf_arch = "QWEN2"
    genai_type = "qwen2"
