"""Experts as llama.cpp wants them: one (experts, out, in) tensor per projection and layer.

Checkpoints hold them either per expert (``...experts.{e}.{proj}.weight``, what transformers saves)
or already fused (``...experts.gate_up_proj`` of shape (experts, 2*ff, hidden) and
``...experts.down_proj``, the transformers 5 in-memory layout). Both become stacked jobs that read
one layer's experts for one projection at a time.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from converters.gguf.model import Job, Model, stack
from edgekit.errors import EdgekitError


def stacked_expert_jobs(model: Model, marker: str, projections: tuple[str, ...]) -> tuple[list[Job], set[str]]:
    """(jobs, checkpoint names they consume) for the experts under ``marker`` (e.g. ".mlp.experts.")."""
    per_expert = re.compile(rf"^(?P<prefix>.*\.(?P<layer>\d+){re.escape(marker)})(?P<e>\d+)\.(?P<proj>\w+)\.weight$")
    groups: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    jobs: list[Job] = []
    used: set[str] = set()
    n_experts = model.spec.moe.experts if model.spec.moe else 0
    for name in model.names:
        m = per_expert.match(name)
        if m and m["proj"] in projections:
            groups[(m["prefix"], m["proj"])][int(m["e"])] = name
            used.add(name)
        elif re.search(rf"{re.escape(marker)}(gate_up_proj|down_proj)(\.weight)?$", name):
            used.add(name)
            base = re.sub(r"(\.weight)?$", "", name).rsplit(".", 1)[0]
            if name.split(".")[-1].startswith("gate_up") or ".gate_up_proj" in name:
                for half, proj in ((0, "gate_proj"), (1, "up_proj")):
                    jobs.append(Job(model.map_name(f"{base}.{proj}.weight"), (name,),
                                    lambda t, h=half: np.split(t, 2, axis=-2)[h]))
            else:
                jobs.append(Job(model.map_name(f"{base}.down_proj.weight"), (name,), lambda t: t))
    for (prefix, proj), experts in sorted(groups.items()):
        if sorted(experts) != list(range(n_experts)):
            raise EdgekitError(f"{prefix}* holds experts {sorted(experts)} for {proj}, config says {n_experts}",
                               "the checkpoint is incomplete; re-download it")
        inputs = tuple(experts[e] for e in range(n_experts))
        jobs.append(Job(model.map_name(f"{prefix}{proj}.weight"), inputs, lambda *ts: stack(ts)))
    return jobs, used
