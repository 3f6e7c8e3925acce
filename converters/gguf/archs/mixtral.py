"""Mixtral: Llama attention plus experts stacked into one (experts, out, in) tensor per projection."""

from __future__ import annotations

from converters.gguf.archs import register
from converters.gguf.archs.llama import Llama
from converters.gguf.model import Job
from converters.gguf.moe import stacked_expert_jobs


@register("mixtral")
class Mixtral(Llama):
    def grouped_jobs(self) -> tuple[list[Job], set[str]]:
        return stacked_expert_jobs(self, ".block_sparse_moe.experts.", ("w1", "w2", "w3"))
