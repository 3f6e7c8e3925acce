"""AWQ (Lin et al. 2023): activation-aware per-input-channel scales, folded so the fp model is unchanged.

Per decoder layer and per *group* (linears that read the same input, and the operation that produces it):
``s = mean|x| ** alpha`` per input channel (normalised so max*min = 1), ``alpha`` searched on a grid
against the error on calibration data with ``Q(W·s)/s`` in place of ``W``, ``Q`` the target grid's own round
trip (:func:`quant.grids.get`, or llama.cpp's k-quant in :mod:`quant.awq_kgrid`), so the error searched is the
error the device sees: for a norm-fed group (q/k/v, gate/up) the error of the whole attention / MLP block's
output (AutoAWQ's ``module2inspect``), for v -> o and up -> down that of the linear's own output
``|| X Wᵀ - (X/s) Q(W·s)ᵀ ||²``, which is the block's. The chosen ``s`` is folded: the producer (RMSNorm / LayerNorm
weight and bias, gemma's ``1 + w``, or the rows of the preceding linear: v -> o, up -> down) is divided by
``s`` and the consumers' input columns multiplied by it, so before quantization the model computes the same
function. The fold rules follow AutoAWQ's, but v -> o folds under GQA too (o's columns that read one v row share
its scale; AutoAWQ folds it only when v's outputs are o's inputs one to one): no fold across a non-linear
activation (gpt2's c_fc -> c_proj), a MoE router reads the scaled norm too and is scaled with the experts, every
expert's up -> down with the tokens routed to it. Optional clip search (AutoAWQ's
auto_clip, then Gauss-Seidel passes over each row's blocks): per block, the clamp ``±max`` whose grid round trip
gives the least output error of the linear on sampled tokens, counting the other blocks' residuals through the
inputs' correlations; for every quantized linear, q and k included.

AWQ's output is an equivalent fp checkpoint (scaled, clipped) whose round to nearest on the grid is AWQ's
codes; it can also precede llama.cpp's k-quants or NF4. Written by hand: no maintained CPU AWQ library
(AutoAWQ is deprecated and GPU-first) writes into these grids.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.errors import EdgekitError

ALPHAS = tuple(i / 20 for i in range(20))  # AutoAWQ's grid: 0, 0.05, ..., 0.95
CLIP_STEPS = 20  # the clip's coarse step: 1/20 of the block's max
CLIP_COARSE = 10  # shrinks 0 .. 9/20, down to 55% of the block's max
CLIP_REFINE = (-3, -2, -1, 1, 2, 3)  # quarter steps around the best shrink: tiny q4_0 40 windows 0.000979 -> 0.000953
# Gauss-Seidel passes of the clip over a row's blocks (search_clip), stopping early when none moves. edgekit-tiny,
# 40 windows, mean KLD q4_0 / int4 b32 / b128: 0 passes (own block's error only) 0.000953 / 0.000943 / 0.001304;
# 1: 0.000860 / 0.000835 / 0.001299; 2: 0.000830 / 0.000827 / 0.001297; 3: 0.000822 / 0.000817 / 0.001262
CLIP_SWEEPS = 3
# memory per slab: the clip's candidate residuals (the 1B's down_proj: 128 rows a slab), the final round trip's rows,
# a scaled-checkpoint shard (the 1B's peak sat at a layer's end: 2127 MiB against 2106 MiB of fp16 checkpoint)
SLAB_BYTES = 64 << 20
PER_BLOCK_MAX = 32  # widest run of input columns that takes one alpha (AWQ.per_block)
# passes of the per-block alpha search (search_scale); 2: tiny q4_0 0.001011 vs 0.001053, twice the trials
BLOCK_SWEEPS = 1
# calibration tokens the block-output search runs the attention / MLP on, per trial (the first samples of the first
# batch; mean|x| and the Gram still come from every batch). Measured, edgekit-tiny q4_0 mean KLD (12 windows):
# 2048 (one whole batch, before) -> 0.001073, 1024 -> 0.000965, 512 -> 0.001053, 256 -> 0.001053; int4 b32: 2048 ->
# 0.00099 (README), 1024 -> 0.000949, 512 -> 0.001061. SmolLM2 128 x 512, quiet: ~9.5 s per layer at 512.
BLOCK_TOKENS = 1024
# How many alphas the norm-fed groups score on their attention / MLP output; the rest are ranked out by their linears'
# own output error (Gram form). Per block the scored trials are most of AWQ's time (SmolLM2: 47% with all 19). Before
# the clip's Gauss-Seidel passes a shortlist cost quality (tiny q4_0, 12 windows: block shortlist 5 0.001111 vs
# 0.001073); with them, 40 windows, mean KLD q4_0 / int4 b32 / b128: all scored 0.000575 / 0.000557 / 0.001080;
# block 10 0.000615 / 0.000619 / 0.00108; block 5 0.000641 / 0.000651 / 0.00108; block 5 and group 10 0.000649 /
# 0.000656 / 0.001065 (-50% / -48% / -44% vs RTN); block 5 and group 6 0.000652 / 0.000685 / 0.001058.
GROUP_SHORTLIST = 10  # of the group's alphas
BLOCK_SHORTLIST = 5  # per block of columns (scored incrementally: Block.incremental)


class Mat:
    """One weight matrix as the formats see it, [out, in] (rows = output features, blocks run along inputs),
    over a parameter that may be stored (in, out) (gpt2's Conv1D) or be one expert of a 3-D stack."""

    def __init__(self, name: str, role: str, param: torch.Tensor, index: int | None = None, conv1d: bool = False,
                 bias: torch.Tensor | None = None, module: torch.nn.Module | None = None) -> None:
        self.name, self.role, self.param, self.index, self.conv1d, self.bias = name, role, param, index, conv1d, bias
        self.module = module  # the module computing x -> x Wᵀ + b with it (Block.incremental), when one does

    def view(self) -> torch.Tensor:
        """A view of the stored data as [out, in]: writes through to the model."""
        p = self.param.data if self.index is None else self.param.data[self.index]
        return p.t() if self.conv1d else p

    def weight(self) -> torch.Tensor:
        return self.view().float()

    def assign(self, w: torch.Tensor) -> None:
        self.view().copy_(w)

    def scale_inputs(self, s: torch.Tensor) -> None:
        self.view().mul_(s[None, :])

    def scale_outputs(self, s: torch.Tensor, rows: slice) -> None:
        self.view()[rows].div_(s[:, None])
        if self.bias is not None:
            b = self.bias.data if self.index is None else self.bias.data[self.index]
            b[rows].div_(s)


@dataclass
class Norm:
    """A norm producing a group's input: weight (and LayerNorm bias) divided by s; gemma applies 1 + w."""

    name: str
    module: torch.nn.Module
    offset: bool = False

    def scale_outputs(self, s: torch.Tensor) -> None:
        w = self.module.weight.data
        if self.offset:
            w.copy_((1.0 + w) / s - 1.0)
        else:
            w.div_(s)
        if getattr(self.module, "bias", None) is not None:
            self.module.bias.data.div_(s)


@dataclass
class Group:
    """Linears reading one input (``key``, the capture point), and what produces that input."""

    key: str
    prev: Norm | tuple[Mat, slice]
    mats: list[Mat]  # consumers whose input columns take s (all are folded)
    quantized: list[Mat] = field(default_factory=list)  # the consumers the grid quantizes (error measured on)
    tokens: Callable[[torch.Tensor], torch.Tensor] | None = None  # rows of the capture this group sees
    tie: Tie | None = None  # v -> o under GQA: each v row feeds several o columns, which share its scale


@dataclass
class Tie:
    """GQA's v -> o: o's input columns [kv head, query head of its group, dim] all read v's row [kv head, dim], so
    they take one scale, v's: the fold stays exact (AutoAWQ folds v -> o only without GQA)."""

    kv_heads: int
    rep: int
    head_dim: int

    def reduce(self, x: torch.Tensor) -> torch.Tensor:  # o's columns -> v's rows
        return x.view(self.kv_heads, self.rep, self.head_dim).mean(1).reshape(-1)

    def expand(self, s: torch.Tensor) -> torch.Tensor:  # v's rows -> o's columns
        return s.view(self.kv_heads, 1, self.head_dim).expand(self.kv_heads, self.rep, self.head_dim).reshape(-1)


@dataclass
class LayerPlan:
    groups: list[Group]
    observers: dict[str, list[Mat]]  # group key -> the linears whose inputs are the group's input
    quantized: list[Mat] = field(default_factory=list)  # every linear the grid quantizes, in order


def _get(module: torch.nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _lin(layer: torch.nn.Module, path: str, role: str) -> Mat:
    m = _get(layer, path)
    return Mat(path, role, m.weight, bias=m.bias, module=m)


def plan(layer: torch.nn.Module, family: Any, spec: Any, layer_index: int) -> LayerPlan:
    """The fold groups of one HF decoder layer, by family; EdgekitError for a layout with no mapping."""
    groups: list[Group] = []
    observers: dict[str, list[Mat]] = {}
    quantized: list[Mat] = []
    kv_rows = spec.num_kv_heads * spec.head_dim
    rep = spec.num_heads // spec.num_kv_heads
    tie = Tie(spec.num_kv_heads, rep, spec.head_dim) if rep > 1 else None
    arch = family.model_type

    def missing() -> EdgekitError:
        return EdgekitError(f"AWQ has no mapping for {arch}'s decoder layer {layer_index}",
                            "use --method rtn or gptq for this architecture")

    # ---- attention
    if family.conv1d:  # gpt2: ln_1 -> c_attn (q|k|v columns), v -> c_proj
        c_attn, c_proj = _get(layer, "attn.c_attn"), _get(layer, "attn.c_proj")
        if c_attn is None:
            raise missing()
        qkv = Mat("attn.c_attn", "qkv", c_attn.weight, conv1d=True, bias=c_attn.bias, module=c_attn)
        o = Mat("attn.c_proj", "o", c_proj.weight, conv1d=True, bias=c_proj.bias, module=c_proj)
        observers.update({"attn_in": [qkv], "o_in": [o]})
        groups.append(Group("attn_in", Norm("ln_1", layer.ln_1), [qkv], [qkv]))
        h = spec.hidden_size
        groups.append(Group("o_in", (qkv, slice(2 * h, 3 * h)), [o], [o]))
        quantized += [qkv, o]
    elif _get(layer, "self_attn.qkv_proj") is not None:  # phi3: fused, v rows last
        qkv, o = _lin(layer, "self_attn.qkv_proj", "qkv"), _lin(layer, "self_attn.o_proj", "o")
        observers.update({"attn_in": [qkv], "o_in": [o]})
        groups.append(Group("attn_in", Norm("input_layernorm", layer.input_layernorm, family.norm_offset),
                            [qkv], [qkv]))
        n = qkv.view().shape[0]
        groups.append(Group("o_in", (qkv, slice(n - kv_rows, n)), [o], [o], tie=tie))
        quantized += [qkv, o]
    elif _get(layer, "self_attn.q_proj") is not None:
        q, k, v = (_lin(layer, f"self_attn.{r}_proj", r) for r in "qkv")
        o = _lin(layer, "self_attn.o_proj", "o")
        observers.update({"attn_in": [q], "o_in": [o]})
        groups.append(Group("attn_in", Norm("input_layernorm", layer.input_layernorm, family.norm_offset),
                            [q, k, v], [q, k, v]))
        groups.append(Group("o_in", (v, slice(0, kv_rows)), [o], [o], tie=tie))
        quantized += [q, k, v, o]
    else:
        raise missing()

    # ---- MLP
    ffn_norm_name = "pre_feedforward_layernorm" if family.sandwich_norms else (
        "ln_2" if family.conv1d else "post_attention_layernorm")
    ffn_norm = Norm(ffn_norm_name, _get(layer, ffn_norm_name), family.norm_offset)
    mlp = layer.mlp
    if family.conv1d:  # gelu between c_fc and c_proj: no fold there
        fc = Mat("mlp.c_fc", "up", mlp.c_fc.weight, conv1d=True, bias=mlp.c_fc.bias, module=mlp.c_fc)
        proj = Mat("mlp.c_proj", "down", mlp.c_proj.weight, conv1d=True, bias=mlp.c_proj.bias, module=mlp.c_proj)
        observers["ffn_in"] = [fc]
        groups.append(Group("ffn_in", ffn_norm, [fc], [fc]))
        quantized += [fc, proj]
    elif getattr(mlp, "experts", None) is not None:  # the driver's split experts: one nn.Linear each
        experts = list(mlp.experts.experts)
        gates = [Mat(f"mlp.experts.{e}.gate", "expert_gate", x.gate.weight) for e, x in enumerate(experts)]
        ups = [Mat(f"mlp.experts.{e}.up", "expert_up", x.up.weight) for e, x in enumerate(experts)]
        downs = [Mat(f"mlp.experts.{e}.down", "expert_down", x.down.weight) for e, x in enumerate(experts)]
        router = Mat("mlp.gate", "router", mlp.gate.weight)
        ffn_mats, ffn_q = [router, *gates, *ups], [*gates, *ups]
        shared = getattr(mlp, "shared_expert", None)
        if shared is not None:
            sg, su = _lin(layer, "mlp.shared_expert.gate_proj", "shared_gate"), _lin(layer, "mlp.shared_expert.up_proj",
                                                                                     "shared_up")
            sd = _lin(layer, "mlp.shared_expert.down_proj", "shared_down")
            ffn_mats += [sg, su, _lin(layer, "mlp.shared_expert_gate", "shared_router")]
            ffn_q += [sg, su]
        # every token reaches top-k experts, so the experts' gate inputs together are the norm's output k times
        # over (the same mean|x| and XᵀX/n); the shared expert alone sees each token once
        observers["ffn_in"] = [sg] if shared is not None else gates
        groups.append(Group("ffn_in", ffn_norm, ffn_mats, ffn_q))
        if shared is not None:
            groups.append(Group("shared_down_in", (su, slice(None)), [sd], [sd]))
            observers["shared_down_in"] = [sd]
        for e in range(len(experts)):
            groups.append(Group(f"expert{e}_down_in", (ups[e], slice(None)), [downs[e]], [downs[e]]))
            observers[f"expert{e}_down_in"] = [downs[e]]
        quantized += [*gates, *ups, *downs] + ([sg, su, sd] if shared is not None else [])
    elif _get(mlp, "gate_up_proj") is not None:  # phi3: gate rows first, up rows second
        gu, down = _lin(layer, "mlp.gate_up_proj", "gate_up"), _lin(layer, "mlp.down_proj", "down")
        observers.update({"ffn_in": [gu], "down_in": [down]})
        n = gu.view().shape[0]
        groups.append(Group("ffn_in", ffn_norm, [gu], [gu]))
        groups.append(Group("down_in", (gu, slice(n // 2, n)), [down], [down]))
        quantized += [gu, down]
    elif _get(mlp, "gate_proj") is not None:
        gate, up, down = (_lin(layer, f"mlp.{r}_proj", r) for r in ("gate", "up", "down"))
        observers.update({"ffn_in": [gate], "down_in": [down]})
        groups.append(Group("ffn_in", ffn_norm, [gate, up], [gate, up]))
        groups.append(Group("down_in", (up, slice(None)), [down], [down]))
        quantized += [gate, up, down]
    else:
        raise missing()
    if ffn_norm.module is None:
        raise missing()
    return LayerPlan(groups, observers, quantized)


# ---- the grid's round trip ------------------------------------------------------------------------------

def round_trip(grid: Any) -> Callable[..., torch.Tensor]:
    """(w [out, in], importance [in] or None) -> the weight the runtime computes after the grid's quantize and
    dequantize; the importance (mean x² per input column) reaches only a grid that weighs by it, as llama.cpp's
    k-quants do with an importance matrix."""
    weighted = getattr(grid, "weighted", False)

    def rt(w: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        a = w.detach().float().numpy()
        if weighted and importance is not None:
            q = grid.quantize(a, importance.detach().float().numpy())
        else:
            q = grid.quantize(a)
        return torch.from_numpy(np.ascontiguousarray(grid.dequantize(q), dtype=np.float32))

    return rt


# ---- search ---------------------------------------------------------------------------------------------

def search_scale(x_mean: torch.Tensor, gram: torch.Tensor, mats: list[Mat], rt: Callable, alphas=ALPHAS,
                 block: Callable[[list[torch.Tensor]], float] | None = None, tie: Tie | None = None,
                 per_block: int = 0, inc: Callable[[list[torch.Tensor]], Incremental | None] | None = None
                 ) -> tuple[float, torch.Tensor, list[float], list[float]]:
    """(best alpha, its scales per input column, error per alpha, alpha per block of ``per_block`` columns) for a
    group with input statistics ``x_mean`` = mean|x| per channel and ``gram`` = XᵀX / n of sampled input rows,
    ``s = x_mean^a``. With ``block`` (AutoAWQ's ``module2inspect``): the error is ``block(the group's weights as the
    grid leaves them, Q(W·s)/s)``, the squared error of the whole attention or MLP output; without: the group's own
    output error ``||X Wᵀ - (X/s) Q(W·s)ᵀ||² / n`` as ``Σ (ΔW G) ⊙ ΔW`` with ``ΔW = W - Q(W·s)/s``, which costs
    out·in² instead of n·out·in. With ``tie`` the scales are one per producer row, repeated over the columns that
    read it.

    With ``per_block`` (the grid's block size): after the one alpha of the group, each block of input columns
    in turn takes the alpha of the grid that errs least with the other blocks' fixed (:data:`BLOCK_SWEEPS`
    passes). A block's columns share one grid scale per output row, so only their scales relative to each other
    change its codes: one alpha per block fits each block's outliers. Measured on edgekit-tiny (q4_0, in-process
    KLD on held-out Persuasion): AWQ -13% vs RTN with one alpha per group, -22% with one per block."""
    ws = [m.weight() for m in mats]
    diag = torch.diagonal(gram)
    xm = x_mean if tie is None else tie.reduce(x_mean)

    def effective(s: torch.Tensor) -> list[torch.Tensor]:  # the weights as the grid leaves them, Q(W·s)/s
        s = s if tie is None else tie.expand(s)
        return [rt(w * s, diag / s ** 2) / s for w in ws]

    def own(qs: list[torch.Tensor]) -> float:  # the group's linears' own output error, Σ (ΔW G) ⊙ ΔW
        return float(sum(((w - q) @ gram * (w - q)).sum() for w, q in zip(ws, qs, strict=True)))

    def error(s: torch.Tensor) -> float:
        qs = effective(s)
        return block(qs) if block is not None else own(qs)

    cands = []  # per alpha, the scales normalised over all columns, so equal alphas per block = the group's alpha
    for a in alphas:
        s = xm.clamp(min=1e-4).pow(a)  # AutoAWQ's floor keeps dead channels from blowing up
        cands.append(s / (s.max() * s.min()).sqrt())
    if block is not None and GROUP_SHORTLIST < len(cands):
        # the block output (a forward of the attention / MLP per alpha) only for the alphas whose linears' own
        # output error is among the least; the others are recorded as inf (not evaluated)
        # one candidate's weights at a time: all 20 of the 1B's gate / up together are 2.7 GB
        short = set(np.argsort([own(effective(c)) for c in cands])[:GROUP_SHORTLIST].tolist())
        errors = [block(effective(c)) if i in short else float("inf") for i, c in enumerate(cands)]
    else:
        errors = [error(c) for c in cands]
    best = int(np.argmin(errors))
    n = xm.numel()
    width = min(per_block, n) if per_block else n
    spans = [(lo, min(n, lo + width)) for lo in range(0, n, width)]
    pick = [best] * len(spans)
    s, best_err = cands[best].clone(), errors[best]
    if tie is None and len(spans) > 1 and _blockwise(rt, ws[0], width):
        if block is None:
            return alphas[best], _per_block_gram(ws, gram, rt, cands, spans, pick, s), errors, [alphas[i] for i in pick]
        ev = inc(effective(s)) if inc is not None else None
        if ev is not None:
            s = _per_block_gram(ws, gram, rt, cands, spans, pick, s, ev)
            return alphas[best], s, errors, [alphas[i] for i in pick]
    for _ in range(BLOCK_SWEEPS if len(spans) > 1 else 0):
        for b, (lo, hi) in enumerate(spans):
            for i, c in enumerate(cands):
                if i == pick[b]:
                    continue
                t = s.clone()
                t[lo:hi] = c[lo:hi]
                e = error(t)
                if e < best_err:
                    best_err, s, pick[b] = e, t, i
    return alphas[best], (s if tie is None else tie.expand(s)), errors, [alphas[i] for i in pick]


def _blockwise(rt: Callable, w: torch.Tensor, width: int) -> bool:
    """Whether the grid rounds each block of ``width`` input columns on its own (no super-block, no shared
    statistics), so a block's round trip can be computed from its columns alone."""
    if width >= w.shape[1]:
        return False
    try:
        return torch.equal(rt(w)[:, :width], rt(w[:, :width].contiguous()))
    except (EdgekitError, ValueError):  # a grid that takes no slice this wide
        return False


def _per_block_gram(ws: list[torch.Tensor], gram: torch.Tensor, rt: Callable, cands: list[torch.Tensor],
                    spans: list[tuple[int, int]], pick: list[int], s: torch.Tensor, ev: Incremental | None = None
                    ) -> torch.Tensor:
    """search_scale's per-block pass in the Gram form, block by block: with ``ΔW`` changed by ``E`` on block B's
    columns only, the error ``Σ (ΔW G) ⊙ ΔW`` changes by ``Σ (2 ΔW G + E G) ⊙ E`` on B's columns, so each candidate
    costs one block's round trip and out·b² (not out·in²). With ``ev`` (a norm-fed group: the loss is its attention
    / MLP block's output) that change ranks the candidates and the :data:`BLOCK_SHORTLIST` first are scored on the
    block's output (``ev``, incrementally), which decides. ``pick`` is updated in place."""
    diag = torch.diagonal(gram)
    ds = [w - rt(w * s, diag / s ** 2) / s for w in ws]
    ps = [d @ gram for d in ds]  # ΔW G, kept current
    s = s.clone()
    for _ in range(BLOCK_SWEEPS):
        for b, (lo, hi) in enumerate(spans):
            g_bb = gram[lo:hi, lo:hi]
            idx = [i for i in range(len(cands)) if i != pick[b]]
            if not idx:
                continue
            cb = torch.stack([cands[i][lo:hi] for i in idx])[:, None, :]  # [candidates, 1, block]
            deltas = torch.zeros(len(idx), dtype=torch.float64)
            ess = []
            for w, d, p in zip(ws, ds, ps, strict=True):
                wb = w[None, :, lo:hi] * cb  # every candidate's block in one round trip (rows are independent)
                e = w[None, :, lo:hi] - rt(wb.reshape(-1, hi - lo)).reshape(wb.shape) / cb - d[None, :, lo:hi]
                deltas += ((2 * p[None, :, lo:hi] + e @ g_bb) * e).sum((1, 2), dtype=torch.float64)
                ess.append(e)
            scored = [(float(deltas[j]), i, [e[j] for e in ess]) for j, i in enumerate(idx)]
            best = (0.0, None)
            if ev is None:
                best = min(((d, (i, es)) for d, i, es in scored if d < 0), key=lambda t: t[0], default=best)
            else:  # the weights move by -E (ΔW = W - Q)
                best = (ev.error, None)
                for _, i, es in sorted(scored, key=lambda t: t[0])[:BLOCK_SHORTLIST]:
                    e = ev.trial(lo, hi, [-x for x in es])
                    if e < best[0]:
                        best = (e, (i, es))
            if best[1] is not None:
                i, es = best[1]
                pick[b], s[lo:hi] = i, cands[i][lo:hi]
                if ev is not None:
                    ev.accept(lo, hi, [-x for x in es], best[0])
                for d, p, e in zip(ds, ps, es, strict=True):
                    d[:, lo:hi] += e
                    p += e @ gram[lo:hi]
    return s


class Block:
    """A sub-module of the decoder layer (attention or MLP) and the calls it received on calibration batches,
    up to ``cap`` tokens: ``error(mats, weights)`` is the squared error of its output with ``weights`` in place
    of ``mats``' against its output with the current weights (AutoAWQ's loss on the block's output)."""

    def __init__(self, module: torch.nn.Module, cap: int) -> None:
        self.module, self.cap, self.calls, self.tokens = module, cap, [], 0
        self.handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)
        self.ref: list[torch.Tensor] | None = None

    def _pre(self, _module: Any, args: tuple, kwargs: dict) -> None:
        if self.tokens >= self.cap:
            return
        x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        n, per = x.shape[0], int(np.prod(x.shape[1:-1]))
        keep = min(n, -(-(self.cap - self.tokens) // max(1, per)))
        if x.dim() >= 3 and keep < n:  # the samples the cap needs, not the whole batch
            args, kwargs = _first(args, n, keep), _first(kwargs, n, keep)
        self.calls.append((args, kwargs))
        self.tokens += keep * per if x.dim() >= 3 else int(np.prod(x.shape[:-1]))

    def reset(self) -> None:
        self.calls, self.tokens, self.ref = [], 0, None

    def _outputs(self) -> list[torch.Tensor]:
        outs = []
        with torch.inference_mode():
            for args, kwargs in self.calls:
                o = self.module(*args, **kwargs)
                outs.append((o[0] if isinstance(o, tuple) else o).float())
        return outs

    def _outputs_with(self, mats: list[Mat], weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The block's outputs with ``weights`` in ``mats`` for the run; the weights they held are back afterwards."""
        saved = [m.weight().clone() for m in mats]
        try:
            for m, w in zip(mats, weights, strict=True):
                m.assign(w)
            return self._outputs()
        finally:
            for m, w in zip(mats, saved, strict=True):
                m.assign(w)

    def _squared_error(self, outs: list[torch.Tensor]) -> float:  # against ref, made at the recorded weights
        return float(sum(((o - r) ** 2).sum() for o, r in zip(outs, self.ref, strict=True)))

    def error(self, mats: list[Mat], weights: list[torch.Tensor]) -> float:
        if self.ref is None:
            self.ref = self._outputs()
        return self._squared_error(self._outputs_with(mats, weights))

    def incremental(self, mats: list[Mat], weights: list[torch.Tensor]) -> Incremental | None:
        """An :class:`Incremental` for ``mats`` at ``weights``, or None when one of them has no module of its own or
        does not run exactly once per recorded call (a MoE expert)."""
        mods = [m.module for m in mats]
        if any(mod is None for mod in mods) or len({id(mod) for mod in mods}) != len(mods):
            return None
        if self.ref is None:
            self.ref = self._outputs()
        seen: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in mats]
        hooks = [mod.register_forward_hook(lambda _m, args, out, k=k: seen[k].append((args[0], out)))
                 for k, mod in enumerate(mods)]
        try:
            outs = self._outputs_with(mats, weights)
        finally:
            for h in hooks:
                h.remove()
        if any(len(x) != len(self.calls) for x in seen):
            return None
        return Incremental(self, mods, seen, self._squared_error(outs))

    def close(self) -> None:
        self.handle.remove()
        self.reset()


def _first(v: Any, n: int, k: int) -> Any:
    """``v`` (a call's args or kwargs) with every tensor of batch dimension ``n`` cut to its first ``k`` samples."""
    if isinstance(v, torch.Tensor):
        return v[:k] if v.dim() >= 1 and v.shape[0] == n else v
    if isinstance(v, tuple):
        return tuple(_first(x, n, k) for x in v)
    if isinstance(v, list):
        return [_first(x, n, k) for x in v]
    if isinstance(v, dict):
        return {key: _first(x, n, k) for key, x in v.items()}
    return v


class Incremental:
    """The block's output error when only columns ``lo:hi`` of its linears' weights change by ``E``: each linear's
    output is its recorded output plus ``x[..., lo:hi] Eᵀ`` (its forward is replaced for the run), so a candidate
    costs the rest of the block (attention core and o, or the activation and down), not the linears' full
    products. ``error`` is the block's squared output error at the recorded weights."""

    def __init__(self, block: Block, mods: list[torch.nn.Module], seen: list, error: float) -> None:
        self.block, self.mods, self.seen, self.error = block, mods, seen, error

    def trial(self, lo: int, hi: int, deltas: list[torch.Tensor]) -> float:
        """The block's output error with the linears' weights changed by ``deltas`` [out, hi - lo] on lo:hi."""
        total = 0.0
        try:
            with torch.inference_mode():
                for c, ((args, kwargs), ref) in enumerate(zip(self.block.calls, self.block.ref, strict=True)):
                    for mod, rec, e in zip(self.mods, self.seen, deltas, strict=True):
                        x, y = rec[c]
                        mod.forward = lambda *_a, _x=x, _y=y, _e=e, **_k: torch.addmm(
                            _y.reshape(-1, _y.shape[-1]), _x.reshape(-1, _x.shape[-1])[:, lo:hi], _e.t()
                        ).reshape(_y.shape)
                    o = self.block.module(*args, **kwargs)
                    total += float((((o[0] if isinstance(o, tuple) else o).float() - ref) ** 2).sum())
        finally:
            for mod in self.mods:
                mod.__dict__.pop("forward", None)
        return total

    def accept(self, lo: int, hi: int, deltas: list[torch.Tensor], error: float) -> None:
        with torch.inference_mode():
            for rec, e in zip(self.seen, deltas, strict=True):
                for c, (x, y) in enumerate(rec):
                    rec[c] = (x, torch.addmm(y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])[:, lo:hi],
                                             e.t()).reshape(y.shape))
        self.error = error


def search_clip(w: torch.Tensor, gram: torch.Tensor, grid: Any, rt: Callable) -> torch.Tensor:
    """w [out, in] clamped per block to the ±max whose round trip errs least on the linear's output
    ``Σ (ΔW G) ⊙ ΔW``, ``G`` = ``gram`` = XᵀX / n. Candidates per block: :data:`CLIP_COARSE` shrinks, then quarter
    steps around the shrink whose error on the block's own share ``d G_bb dᵀ`` is least (AutoAWQ's auto_clip
    stops there). From that pick, :data:`CLIP_SWEEPS` Gauss-Seidel passes over the blocks give each block the
    candidate that minimises the whole row's error with the other blocks' residuals as they stand: ``d G_bb dᵀ +
    2 d · Σ_c≠b G_bc d_c``, so a block's clip can offset its neighbours' rounding through the inputs'
    correlations (a pass never raises the error). Rows are independent: done in slabs of rows so the candidates'
    residuals stay within :data:`SLAB_BYTES`."""
    n_out, n_in = w.shape
    rows = _row_slab(rt, w, 4 * n_in * (CLIP_COARSE + len(CLIP_REFINE)))
    out = torch.empty_like(w)
    for r in range(0, n_out, rows):
        out[r:r + rows] = _clip_rows(w[r:r + rows], gram, grid.block_size, rt)
    return out


def _clip_rows(w: torch.Tensor, gram: torch.Tensor, block: int, rt: Callable) -> torch.Tensor:
    n_out, n_in = w.shape
    nb = n_in // block
    wb = w.reshape(n_out, nb, block)
    gb = torch.stack([gram[i * block:(i + 1) * block, i * block:(i + 1) * block] for i in range(nb)])
    diag = torch.diagonal(gram)
    top = wb.abs().amax(dim=-1, keepdim=True)  # [out, nb, 1]

    res = torch.empty(CLIP_COARSE + len(CLIP_REFINE), n_out, nb, block)  # each candidate's residual
    own = torch.empty(res.shape[:3])  # and its error on its own block, d G_bb dᵀ

    def residual(k: int, m: torch.Tensor) -> None:
        torch.sub(rt(torch.max(torch.min(wb, m), -m).reshape(n_out, n_in), diag).reshape(n_out, nb, block), wb,
                  out=res[k])
        own[k] = torch.einsum("ogb,gbc,ogc->og", res[k], gb, res[k])

    maxes = [top * (1 - i / CLIP_STEPS) for i in range(CLIP_COARSE)]
    for k, m in enumerate(maxes):
        residual(k, m)
    centre = torch.gather(torch.cat(maxes, -1), -1, own[:CLIP_COARSE].argmin(0)[..., None])
    maxes += [(centre + top * (k / (4 * CLIP_STEPS))).clamp(max=top) for k in CLIP_REFINE]
    for k in range(CLIP_COARSE, len(maxes)):
        residual(k, maxes[k])
    pick = own.argmin(0)  # [out, nb]: the block-diagonal search's choice
    ks = torch.arange(n_out)
    cur = res[pick, ks[:, None], torch.arange(nb)[None, :]]  # [out, nb, block]
    p = cur.reshape(n_out, n_in) @ gram  # ΔW G, kept current
    for _ in range(CLIP_SWEEPS):
        moved = False
        for b in range(nb):
            lo, hi = b * block, (b + 1) * block
            cross = p[:, lo:hi] - cur[:, b] @ gb[b]  # Σ_c≠b G_bc d_c, per row
            err = own[:, :, b] + 2 * (res[:, :, b] * cross).sum(-1)  # [k, out]
            new = err.argmin(0)
            if torch.equal(new, pick[:, b]):
                continue
            d = res[new, ks, b]
            p += (d - cur[:, b]) @ gram[lo:hi]
            cur[:, b], pick[:, b], moved = d, new, True
        if not moved:
            break
    best = torch.gather(torch.cat(maxes, -1), -1, pick[..., None])
    return torch.max(torch.min(wb, best), -best).reshape(n_out, n_in)


def _row_slab(rt: Callable, w: torch.Tensor, row_bytes: int) -> int:
    """Rows of ``w`` per slab of :data:`SLAB_BYTES` at ``row_bytes`` a row, or all of them when the grid does not
    round each row on its own (NF4's double quantization shares statistics across rows): checked once per grid and
    width, two random rows against the whole."""
    n_out, n_in = w.shape
    rows = max(1, SLAB_BYTES // row_bytes)
    if rows >= n_out:
        return n_out
    apart = rt.__dict__.setdefault("rows_apart", {})  # on the round trip itself: an id() could be a dead one's
    if n_in not in apart:
        probe = torch.randn(min(n_out, 512), n_in, generator=torch.Generator().manual_seed(0)) * w.std()
        apart[n_in] = torch.equal(rt(probe)[:2], rt(probe[:2].contiguous()))
    return rows if apart[n_in] else n_out


def sample_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most ``n`` rows of ``x``, evenly spaced (deterministic)."""
    if x.shape[0] <= n:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, n).long()]


def fold_group(g: Group, x_mean: torch.Tensor, gram: torch.Tensor, rt: Callable, alphas=ALPHAS,
               block: Block | None = None, per_block: int = 0
               ) -> tuple[float, torch.Tensor, list[float], list[float]]:
    """Search the group's alpha (on ``block``'s output when given) and fold its scales: the producer's
    outputs / s, the consumers' inputs * s."""
    loss = (lambda ws: block.error(g.quantized, ws)) if block is not None and block.calls else None
    inc = (lambda ws: block.incremental(g.quantized, ws)) if loss is not None else None
    a, s, errs, per = search_scale(x_mean, gram, g.quantized, rt, alphas, loss, g.tie, per_block, inc)
    own = s if g.tie is None else s.view(g.tie.kv_heads, g.tie.rep, g.tie.head_dim)[:, 0].reshape(-1)
    if isinstance(g.prev, Norm):
        g.prev.scale_outputs(own)
    else:
        g.prev[0].scale_outputs(own, g.prev[1])
    for m in g.mats:
        m.scale_inputs(s)
    return a, s, errs, per


def clip_group(g: Group, gram: torch.Tensor, s: torch.Tensor, grid: Any, rt: Callable) -> list[str]:
    """Clip search for the group's quantized linears, q and k included (AutoAWQ skips them, their errors passing
    through q·kᵀ: with the clip's block-diagonal error alone, a clip of q/k measured worse on edgekit-tiny, -7.4%
    vs -13% for the scales; with search_clip's Gauss-Seidel passes it measured far better: 40 windows, mean KLD
    q4_0 0.000822 -> 0.000575, int4 b32 0.000817 -> 0.000557, b128 0.001262 -> 0.00108). ``gram`` is of the
    unscaled input, the linears now read X / s: it is scaled in place (the 1B's down_proj: a 256 MiB Gram, not two
    more), so the caller's is spent."""
    done = []
    scaled = gram.div_(s[:, None]).div_(s[None, :])
    for m in g.quantized:
        m.assign(search_clip(m.weight(), scaled, grid, rt))
        done.append(m.name)
    return done


# ---- layer by layer, on quant.layerwise's driver ---------------------------------------------------------

class _Observed:
    """mean|x| over every calibration token and up to ``cap`` evenly spaced rows per batch, for one group."""

    def __init__(self, cap: int) -> None:
        self.cap, self.sum, self.count, self.rows = cap, None, 0, []

    def add(self, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        a = x.abs().sum(dim=0)
        self.sum = a if self.sum is None else self.sum + a
        self.count += x.shape[0]
        self.rows.append(sample_rows(x, self.cap))

    def stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean|x|, XᵀX / n); once: the rows are let go as soon as they are joined (the 1B's down_proj: 128 MiB)."""
        if not self.count:
            return None  # an expert no calibration token reached: left unscaled
        x = torch.cat(self.rows)
        self.rows = []
        gram = x.t() @ x
        return self.sum / self.count, gram.div_(x.shape[0])


class AWQ:
    """The :class:`quant.layerwise.Callback` of AWQ: per stage, search and fold the groups whose linears the
    stage holds (the layer then computes the same function, so later stages observe unchanged activations);
    at the layer's end clip, hand the scaled float weights to ``keep`` (the scaled checkpoint), and put the
    grid's round trip in place so the next layer's inputs come from this layer quantized."""

    one_pass = True  # the folds are exact and the rounding waits for end_layer: one observing pass per layer

    def __init__(self, family: Any, spec: Any, grid: Any, *, clip: bool = True, alphas=ALPHAS,
                 search_rows: int = 4096, block_tokens: int = BLOCK_TOKENS, per_block: bool = True,
                 keep: Callable[[Any], None] | None = None) -> None:
        self.family, self.spec, self.grid, self.clip, self.alphas = family, spec, grid, clip, alphas
        self.search_rows, self.block_tokens, self.keep = search_rows, block_tokens, keep
        self.blocks: dict[str, Block] = {}
        self.rt = round_trip(grid)
        self.alpha: list[dict[str, float]] = []
        self.alpha_blocks: list[dict[str, list[float]]] = []  # per layer: group key -> alpha per block of columns
        # alpha per 32 columns at most: inside a wider block (int4 b128) their relative scales still move the codes
        # (tiny, int4 b128, in-process KLD: -17.6% vs RTN with one alpha per 128 columns, -26.0% per 32)
        self.per_block = min(PER_BLOCK_MAX, int(getattr(grid, "block_size", 0) or 0)) if per_block else 0
        self.clipped = 0

    def begin_layer(self, ctx: Any) -> None:
        self.plan = plan(ctx.module, self.family, self.spec, ctx.index)
        cap = max(1, self.search_rows // max(1, ctx.batches))
        self.seen = {k: _Observed(cap) for k in self.plan.observers}
        self.key_of = {id(m.param): k for k, ms in self.plan.observers.items() for m in ms}
        self.done: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}  # key -> (gram, s)
        self.alpha.append({})
        self.alpha_blocks.append({})
        # the norm-fed groups are searched on their block's output (attention, MLP), as AutoAWQ; v -> o and
        # up -> down have their linear's output as the block output already (the Gram form computes it exactly)
        self.blocks = {}
        if self.block_tokens:
            for g in self.plan.groups:
                if isinstance(g.prev, Norm):
                    self.blocks[g.key] = Block(ctx.module.get_submodule(g.quantized[0].name.split(".")[0]),
                                               self.block_tokens)

    def observe(self, lin: Any, x: torch.Tensor) -> None:
        key = self.key_of.get(id(lin.module.weight))
        seen = self.seen.get(key) if key is not None else None
        if seen is not None:
            seen.add(x)

    def quantize(self, ctx: Any, stage: Any) -> None:
        from quant import layerwise

        in_stage = {id(lin.module.weight) for lin in stage.linears}
        # the previous stage's search freed hundreds of MB that glibc keeps unless trimmed, and a group's join holds
        # its rows and its Gram together (the 1B's down_proj: 384 MiB): the layer's peak sat there (2117 MiB).
        # Once per stage: a MoE stage's experts each free a few MB, not worth a collection each.
        layerwise.release_memory()
        for g in self.plan.groups:
            if g.key in self.done or not all(id(m.param) in in_stage for m in g.quantized):
                continue
            seen = self.seen.pop(g.key, None)  # searched once: its rows are not needed after
            st = seen.stats() if seen is not None else None
            if st is None:
                continue
            block = self.blocks.pop(g.key, None)
            try:
                a, s, _, per = fold_group(g, st[0], st[1], self.rt, self.alphas, block, self.per_block)
            finally:
                if block is not None:
                    block.close()
            self.done[g.key] = (st[1] if self.clip else None, s)  # the Gram again only for the clip search
            self.alpha[-1][g.key] = a
            self.alpha_blocks[-1][g.key] = per

    def end_layer(self, ctx: Any) -> None:
        for block in self.blocks.values():  # a group no token reached
            block.close()
        self.blocks = {}
        if self.clip:
            for g in self.plan.groups:
                if g.key in self.done:  # each Gram let go once used (the 1B's down_proj: 256 MiB)
                    self.clipped += len(clip_group(g, *self.done.pop(g.key), self.grid, self.rt))
        self.done.clear()  # the Grams, before the scaled layer is serialised
        if self.keep is not None:
            self.keep(ctx)
        for m in self.plan.quantized:
            w = m.weight()
            rows = _row_slab(self.rt, w, 4 * w.shape[1])
            for r in range(0, w.shape[0], rows):  # the round trip's numpy temporaries: a slab's, not the matrix's
                m.view()[r:r + rows].copy_(self.rt(w[r:r + rows]))
        self.seen = {}


class ScaledCheckpoint:
    """The scaled float32 checkpoint, written one safetensors shard per decoder layer as the driver finishes
    it, plus one shard of everything outside the layers copied from the source; names as the source spells
    them (its index then maps every source tensor, checked)."""

    def __init__(self, ckpt: Any, out: Path) -> None:
        self.ckpt, self.out = ckpt, out
        out.mkdir(parents=True)
        self.weight_map: dict[str, str] = {}

    def layer(self, ctx: Any) -> None:
        from safetensors.torch import save_file

        from quant.layerwise import _spellings

        names = self.ckpt.tensors
        tensors: dict[str, torch.Tensor] = {}
        done: set[int] = set()
        for lin in ctx.linears:
            for part in ("weight", "bias"):
                p = getattr(lin.module, part, None)
                if p is not None:
                    tensors[f"{lin.name}.{part}"] = p
                    done.add(id(p))
        prefix = re.match(r"^(.*?)\.\d+\.", ctx.linears[0].name).group(1)
        for k, p in ctx.module.state_dict(keep_vars=True).items():
            if id(p) in done or ".experts.experts." in k:
                continue
            name = next((f"{prefix}.{ctx.index}.{sp}" for sp in _spellings(k) if f"{prefix}.{ctx.index}.{sp}" in names),
                        None)
            if name is not None:  # buffers such as rotary frequencies are not checkpoint tensors
                tensors[name] = p
        # shards of at most SLAB_BYTES (one tensor may pass it): save_file copies a shard's bytes in memory first,
        # and a whole 1B layer is 243 MB
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for n, t in tensors.items():
            if shards[-1] and size + t.numel() * 4 > SLAB_BYTES:
                shards.append({})
                size = 0
            shards[-1][n] = t.detach().float().contiguous()
            size += t.numel() * 4
        for k, shard in enumerate(shards):
            file = f"model-layer-{ctx.index:05d}-{k:03d}.safetensors"
            save_file(shard, str(self.out / file))
            self.weight_map.update(dict.fromkeys(shard, file))

    def finish(self) -> None:
        from safetensors.torch import save_file

        rest = {n: self.ckpt.get(n).contiguous() for n in self.ckpt.names() if n not in self.weight_map}
        save_file(rest, str(self.out / "model-rest.safetensors"))
        self.weight_map.update(dict.fromkeys(rest, "model-rest.safetensors"))
        extra = set(self.weight_map) - set(self.ckpt.names())
        if extra:
            raise RuntimeError(f"AWQ wrote tensors the source does not have: {sorted(extra)[:5]}")
        (self.out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"format": "pt"}, "weight_map": dict(sorted(self.weight_map.items()))}, indent=1))
        for f in self.ckpt.path.iterdir():  # config, tokenizer, chat template: unchanged
            if f.is_file() and not (f.suffix in (".safetensors", ".bin", ".pt", ".pth")
                                    or f.name.endswith(".index.json")):
                shutil.copy2(f, self.out / f.name)


@dataclass
class Result:
    alphas: list[dict[str, float]]  # per layer: group key -> alpha
    alpha_blocks: list[dict[str, list[float]]]  # per layer: group key -> alpha per block of the grid
    clipped: int
    tokens: int
    seconds: float
    search: dict[str, Any] = field(default_factory=dict)  # how alpha was searched (the manifest's awq_search)


def run(model_dir: str | Path, tokens: np.ndarray, grid: Any, out: Path | None = None, *, clip: bool = True,
        alphas=ALPHAS, search_rows: int = 4096, block_tokens: int = BLOCK_TOKENS, per_block: bool = True,
        batch_size: int = 4, progress: bool = True) -> Result:
    """AWQ over ``model_dir`` one decoder layer at a time (:func:`quant.layerwise.run`); the scaled float32
    checkpoint goes to ``out`` when given."""
    import time

    from edgekit.archs import get as family_of
    from edgekit.checkpoint import open_checkpoint
    from edgekit.spec import from_config
    from quant import layerwise

    started = time.perf_counter()
    ckpt = open_checkpoint(str(model_dir))
    writer = ScaledCheckpoint(ckpt, out) if out is not None else None
    cb = AWQ(family_of(ckpt.config.get("model_type")), from_config(ckpt.config), grid, clip=clip, alphas=alphas,
             search_rows=search_rows, block_tokens=block_tokens, per_block=per_block,
             keep=writer.layer if writer else None)
    layerwise.run(str(model_dir), tokens, cb, batch_size=batch_size, progress=progress)
    if writer is not None:
        writer.finish()
    seqlen = int(tokens.shape[1]) if tokens.ndim == 2 else int(tokens.size)
    # Block records the first samples of the calls (batches) until it holds block_tokens tokens
    block_samples = min(len(tokens), -(-block_tokens // seqlen)) if block_tokens else 0
    search = {"alphas": list(alphas), "stats": "mean|x| over every calibration token",
              "gram_rows": f"up to {search_rows} input rows per group, evenly spaced in every batch",
              "block_loss_samples": [0, block_samples],  # calibration samples the attention / MLP output loss runs on
              "group_shortlist": min(GROUP_SHORTLIST, len(alphas)), "per_block": cb.per_block,
              "block_shortlist": min(BLOCK_SHORTLIST, max(0, len(alphas) - 1)), "block_sweeps": BLOCK_SWEEPS}
    return Result(cb.alpha, cb.alpha_blocks, cb.clipped, int(tokens.size), round(time.perf_counter() - started, 3),
                  search)
