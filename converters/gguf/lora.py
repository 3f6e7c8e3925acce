"""``--adapter-only``: a PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp applies at load time.

Layout as llama.cpp's convert_lora_to_gguf.py writes it: for each adapted base tensor ``X`` (its GGUF
name), ``X.lora_a`` = A (r x in) and ``X.lora_b`` = B (out x r), ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``. llama.cpp scales by alpha / r with r read from the
tensor, so per-module ranks/alphas (rank_pattern, alpha_pattern, rsLoRA) are folded into B. The
family's transform of the base tensor is applied to B (Q/K rope permutation permutes rows of
B @ A, which is permuting B's rows); families whose transform LoRA cannot follow are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from converters.gguf.base import general_metadata
from converters.gguf.model import Job, Model
from converters.gguf.stream import plan, write_gguf
from converters.gguf.types import Q
from edgekit import manifest as mf
from edgekit.checkpoint import Checkpoint
from edgekit.errors import EdgekitError


class _AdapterTensors:
    """Looks like a Checkpoint to write_gguf, serving the adapter's tensors instead of the base's."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.adapter = ckpt.adapter
        self.tensors = self.adapter.files.index
        self.path = ckpt.path

    def array(self, name: str):
        return self.adapter.files.array(name)

    def byte_range(self, name: str):
        return self.adapter.files.byte_range(name)


def write_adapter(ckpt: Checkpoint, fam: Model, adapter_ref: str, dest: Path, *, force: bool, outtype: Q,
                  progress: bool, allow_pickle: bool) -> dict[str, Any]:
    lora = ckpt.adapter
    assert lora is not None
    if lora.replaced:
        first = next(iter(lora.replaced))
        raise EdgekitError(f"adapter {lora.path} replaces whole tensors ({first}, modules_to_save), which a GGUF "
                           "LoRA adapter cannot hold", "convert with --adapter (merged) instead of --adapter-only")
    by_input = {job.inputs[0]: job for job in fam.jobs() if len(job.inputs) == 1}
    alpha = float(lora.config.get("lora_alpha", lora.config.get("r", 8)))
    jobs: list[Job] = []
    for base_name, (a_name, b_name, kind) in lora.pairs.items():
        job = by_input.get(base_name)
        if kind != "linear" or job is None or job.lora_b is None:
            raise EdgekitError(f"adapter {lora.path} adapts {base_name}, which a GGUF LoRA adapter for "
                               f"{fam.arch_name} cannot express", "convert with --adapter (merged) instead")
        rank = lora.files.index[a_name].shape[0]
        # llama.cpp applies alpha / rank; peft applies lora.scale(base_name)
        fold = lora.scale(base_name) / (alpha / rank)
        transpose = bool(lora.config.get("fan_in_fan_out")) and not fam.arch_name == "gpt2"
        if transpose:
            raise EdgekitError(f"adapter {lora.path} is fan_in_fan_out on a {fam.arch_name} model",
                               "convert with --adapter (merged) instead")
        jobs.append(Job(job.name + ".lora_a", (a_name,), lambda a: a))
        jobs.append(Job(job.name + ".lora_b", (b_name,),
                        lambda b, f=fold, tb=job.lora_b: tb(b.astype(np.float32) * f if f != 1.0 else b)))
    # small tensors: keep them exact unless a 16-bit type was asked for explicitly
    qtype = outtype if outtype in (Q.F32, Q.F16, Q.BF16) else Q.F32

    def metadata(w: gguf.GGUFWriter) -> None:
        general_metadata(w, ckpt, "adapter")
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        mf.write_gguf(w, mf.build(format="gguf", source=str(ckpt.path), source_sha256=None,
                                  quant={"method": "none", "outtype": qtype.name.lower()}, tokenizer=None,
                                  chat_template=None, context_length=None, files=[], root=None,
                                  adapter=str(lora.path), gguf_type="adapter"))

    tensors = _AdapterTensors(ckpt)
    result = write_gguf(dest, force, fam.arch_name, plan(jobs, tensors, qtype), tensors, metadata, progress)
    result["lora_pairs"] = len(lora.pairs)
    return result
