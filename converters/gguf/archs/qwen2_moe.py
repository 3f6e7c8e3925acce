"""Qwen2-MoE: routed experts stacked per projection, a shared expert and its sigmoid gate."""

from __future__ import annotations

import gguf

from converters.gguf.archs import register
from converters.gguf.model import Job, Model
from converters.gguf.moe import stacked_expert_jobs


@register("qwen2_moe")
class Qwen2Moe(Model):

    def grouped_jobs(self) -> tuple[list[Job], set[str]]:
        return stacked_expert_jobs(self, ".mlp.experts.", ("gate_proj", "up_proj", "down_proj"))

    def set_params(self, w: gguf.GGUFWriter) -> None:
        super().set_params(w)
        moe = self.spec.moe
        if moe is not None:
            w.add_expert_feed_forward_length(moe.expert_intermediate)
            if moe.shared_expert_intermediate:
                w.add_expert_shared_feed_forward_length(moe.shared_expert_intermediate)
