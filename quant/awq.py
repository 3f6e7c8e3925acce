"""AWQ (Lin et al. 2023): activation-aware per-input-channel scales, folded so the fp model is unchanged.

Per decoder layer and per *group* (linears that read the same input, and the operation that produces it):
``s = mean|x| ** alpha`` per input channel (normalised so max*min = 1), ``alpha`` searched on a grid
against the group's output error on calibration data, ``|| X Wᵀ - (X/s) Q(W·s)ᵀ ||²`` with ``Q`` the
target grid's own round trip (:func:`quant.grids.get`), so the error searched is the error the device
sees. The chosen ``s`` is folded: the producer (RMSNorm / LayerNorm weight and bias, gemma's ``1 + w``,
or the rows of the preceding linear: v -> o, up -> down) is divided by ``s`` and the consumers' input
columns multiplied by it, so before quantization the model computes the same function. The fold rules
follow AutoAWQ's: v -> o only when v's outputs are o's inputs one to one (no GQA), no fold across a
non-linear activation (gpt2's c_fc -> c_proj), a MoE router reads the scaled norm too and is scaled with
the experts, every expert's up -> down with the tokens routed to it. Optional clip search (AutoAWQ's
auto_clip): per block, the clamp ``±max`` (shrinking by 1/20 steps down to half) whose grid round trip
gives the least output error on sampled tokens; not for q/k (their errors pass through q·kᵀ).

AWQ's output is an equivalent fp checkpoint (scaled, clipped) whose round to nearest on the grid is AWQ's
codes; it can also precede llama.cpp's k-quants or NF4. Written by hand: no maintained CPU AWQ library
(AutoAWQ is deprecated and GPU-first) writes into these grids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgekit.errors import EdgekitError

ALPHAS = tuple(i / 20 for i in range(20))  # AutoAWQ's grid: 0, 0.05, ..., 0.95
CLIP_STEPS, CLIP_MAX_SHRINK = 20, 0.5


class Mat:
    """One weight matrix as the formats see it, [out, in] (rows = output features, blocks run along inputs),
    over a parameter that may be stored (in, out) (gpt2's Conv1D) or be one expert of a 3-D stack."""

    def __init__(self, name: str, role: str, param: torch.Tensor, index: int | None = None, conv1d: bool = False,
                 bias: torch.Tensor | None = None) -> None:
        self.name, self.role, self.param, self.index, self.conv1d, self.bias = name, role, param, index, conv1d, bias

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


@dataclass
class LayerPlan:
    groups: list[Group]
    captures: dict[str, torch.nn.Module]  # capture key -> module whose input it is (pre-hook)
    derived: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]] = field(default_factory=dict)
    quantized: list[Mat] = field(default_factory=list)  # every linear the grid quantizes, in order


def _get(module: torch.nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _lin(layer: torch.nn.Module, path: str, role: str) -> Mat:
    m = _get(layer, path)
    return Mat(path, role, m.weight, bias=m.bias)


def plan(layer: torch.nn.Module, family: Any, spec: Any, layer_index: int) -> LayerPlan:
    """The fold groups of one HF decoder layer, by family; EdgekitError for a layout with no mapping."""
    groups: list[Group] = []
    captures: dict[str, torch.nn.Module] = {}
    derived: dict[str, Callable] = {}
    quantized: list[Mat] = []
    mha = spec.num_kv_heads == spec.num_heads
    kv_rows = spec.num_kv_heads * spec.head_dim
    arch = family.model_type

    def missing() -> EdgekitError:
        return EdgekitError(f"AWQ has no mapping for {arch}'s decoder layer {layer_index}",
                            "use --method rtn or gptq for this architecture")

    # ---- attention
    if family.conv1d:  # gpt2: ln_1 -> c_attn (q|k|v columns), v -> c_proj
        c_attn, c_proj = _get(layer, "attn.c_attn"), _get(layer, "attn.c_proj")
        if c_attn is None:
            raise missing()
        qkv = Mat("attn.c_attn", "qkv", c_attn.weight, conv1d=True, bias=c_attn.bias)
        o = Mat("attn.c_proj", "o", c_proj.weight, conv1d=True, bias=c_proj.bias)
        captures.update({"attn_in": c_attn, "o_in": c_proj})
        groups.append(Group("attn_in", Norm("ln_1", layer.ln_1), [qkv], [qkv]))
        h = spec.hidden_size
        groups.append(Group("o_in", (qkv, slice(2 * h, 3 * h)), [o], [o]))
        quantized += [qkv, o]
    elif _get(layer, "self_attn.qkv_proj") is not None:  # phi3: fused, v rows last
        qkv, o = _lin(layer, "self_attn.qkv_proj", "qkv"), _lin(layer, "self_attn.o_proj", "o")
        captures.update({"attn_in": _get(layer, "self_attn.qkv_proj"), "o_in": _get(layer, "self_attn.o_proj")})
        groups.append(Group("attn_in", Norm("input_layernorm", layer.input_layernorm, family.norm_offset),
                            [qkv], [qkv]))
        if mha:
            n = qkv.view().shape[0]
            groups.append(Group("o_in", (qkv, slice(n - kv_rows, n)), [o], [o]))
        quantized += [qkv, o]
    elif _get(layer, "self_attn.q_proj") is not None:
        q, k, v = (_lin(layer, f"self_attn.{r}_proj", r) for r in "qkv")
        o = _lin(layer, "self_attn.o_proj", "o")
        captures.update({"attn_in": _get(layer, "self_attn.q_proj"), "o_in": _get(layer, "self_attn.o_proj")})
        groups.append(Group("attn_in", Norm("input_layernorm", layer.input_layernorm, family.norm_offset),
                            [q, k, v], [q, k, v]))
        if mha:
            groups.append(Group("o_in", (v, slice(0, kv_rows)), [o], [o]))
        quantized += [q, k, v, o]
    else:
        raise missing()

    # ---- MLP
    ffn_norm_name = "pre_feedforward_layernorm" if family.sandwich_norms else (
        "ln_2" if family.conv1d else "post_attention_layernorm")
    ffn_norm = Norm(ffn_norm_name, _get(layer, ffn_norm_name), family.norm_offset)
    mlp = layer.mlp
    if family.conv1d:  # gelu between c_fc and c_proj: no fold there
        fc = Mat("mlp.c_fc", "up", mlp.c_fc.weight, conv1d=True, bias=mlp.c_fc.bias)
        proj = Mat("mlp.c_proj", "down", mlp.c_proj.weight, conv1d=True, bias=mlp.c_proj.bias)
        captures.update({"ffn_in": mlp.c_fc})
        groups.append(Group("ffn_in", ffn_norm, [fc], [fc]))
        quantized += [fc, proj]
    elif getattr(mlp, "experts", None) is not None:
        experts = mlp.experts
        n_exp, inter = experts.gate_up_proj.shape[0], experts.gate_up_proj.shape[1] // 2
        gu = [Mat(f"mlp.experts.gate_up_proj[{e}]", "expert_gate_up", experts.gate_up_proj, e) for e in range(n_exp)]
        dn = [Mat(f"mlp.experts.down_proj[{e}]", "expert_down", experts.down_proj, e) for e in range(n_exp)]
        router = Mat("mlp.gate", "router", mlp.gate.weight)
        ffn_mats, ffn_q = [router, *gu], list(gu)
        shared = getattr(mlp, "shared_expert", None)
        if shared is not None:
            sg, su = _lin(layer, "mlp.shared_expert.gate_proj", "shared_gate"), _lin(layer, "mlp.shared_expert.up_proj",
                                                                                     "shared_up")
            sd = _lin(layer, "mlp.shared_expert.down_proj", "shared_down")
            ffn_mats += [sg, su, _lin(layer, "mlp.shared_expert_gate", "shared_router")]
            ffn_q += [sg, su]
            captures["shared_down_in"] = shared.down_proj
        captures["ffn_in"] = mlp
        groups.append(Group("ffn_in", ffn_norm, ffn_mats, ffn_q))
        if shared is not None:
            groups.append(Group("shared_down_in", (su, slice(None)), [sd], [sd]))
        for e in range(n_exp):
            derived[f"expert{e}_down_in"] = _expert_input(mlp, e, inter)
            groups.append(Group(f"expert{e}_down_in", (gu[e], slice(inter, 2 * inter)), [dn[e]], [dn[e]]))
        quantized += [*gu, *dn] + ([sg, su, sd] if shared is not None else [])
    elif _get(mlp, "gate_up_proj") is not None:  # phi3: gate rows first, up rows second
        gu, down = _lin(layer, "mlp.gate_up_proj", "gate_up"), _lin(layer, "mlp.down_proj", "down")
        captures.update({"ffn_in": mlp.gate_up_proj, "down_in": mlp.down_proj})
        n = gu.view().shape[0]
        groups.append(Group("ffn_in", ffn_norm, [gu], [gu]))
        groups.append(Group("down_in", (gu, slice(n // 2, n)), [down], [down]))
        quantized += [gu, down]
    elif _get(mlp, "gate_proj") is not None:
        gate, up, down = (_lin(layer, f"mlp.{r}_proj", r) for r in ("gate", "up", "down"))
        captures.update({"ffn_in": mlp.gate_proj, "down_in": mlp.down_proj})
        groups.append(Group("ffn_in", ffn_norm, [gate, up], [gate, up]))
        groups.append(Group("down_in", (up, slice(None)), [down], [down]))
        quantized += [gate, up, down]
    else:
        raise missing()
    if ffn_norm.module is None:
        raise missing()
    return LayerPlan(groups, captures, derived, quantized)


def _expert_input(moe: torch.nn.Module, e: int, inter: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """The down projection's input of expert ``e``, for the calibration tokens the router sends to it."""

    def compute(caps: dict[str, torch.Tensor]) -> torch.Tensor:
        x = caps["ffn_in"]
        _, _, idx = moe.gate(x)
        rows = (idx == e).any(dim=-1)
        xe = x[rows]
        gate, up = torch.nn.functional.linear(xe, moe.experts.gate_up_proj[e].float()).chunk(2, dim=-1)
        return moe.experts.act_fn(gate) * up

    return compute


# ---- the grid's round trip ------------------------------------------------------------------------------

def round_trip(grid: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """w [out, in] -> the weight the runtime computes after the grid's quantize and dequantize."""

    def rt(w: torch.Tensor) -> torch.Tensor:
        a = w.detach().float().numpy()
        return torch.from_numpy(np.ascontiguousarray(grid.dequantize(grid.quantize(a)), dtype=np.float32))

    return rt


# ---- search ---------------------------------------------------------------------------------------------

def search_scale(x_mean: torch.Tensor, gram: torch.Tensor, mats: list[Mat], rt: Callable, alphas=ALPHAS
                 ) -> tuple[float, torch.Tensor, list[float]]:
    """(best alpha, its scales, error per alpha) for a group with input statistics ``x_mean`` = mean|x| per
    channel and ``gram`` = XᵀX / n of sampled input rows: the output error ``||X Wᵀ - (X/s) Q(W·s)ᵀ||² / n``
    is ``Σ (ΔW G) ⊙ ΔW`` with ``ΔW = W - Q(W·s)/s``, which costs out·in² instead of n·out·in."""
    ws = [m.weight() for m in mats]
    errors, best = [], (float("inf"), 0.0, torch.ones_like(x_mean))
    for a in alphas:
        s = x_mean.clamp(min=1e-4).pow(a)  # AutoAWQ's floor keeps dead channels from blowing up
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for w in ws:
            d = w - rt(w * s) / s
            err += float(((d @ gram) * d).sum())
        errors.append(err)
        if err < best[0]:
            best = (err, a, s)
    return best[1], best[2], errors


def search_clip(w: torch.Tensor, gram: torch.Tensor, grid: Any, rt: Callable) -> torch.Tensor:
    """w [out, in] clamped per block to the ±max (of CLIP_STEPS shrinks) whose round trip errs least on the
    block's share of the output, ``dᵀ G_b d`` with ``G_b`` the block's diagonal block of ``gram`` = XᵀX / n."""
    block = grid.block_size
    n_out, n_in = w.shape
    nb = n_in // block
    wb = w.reshape(n_out, nb, block)
    gb = torch.stack([gram[i * block:(i + 1) * block, i * block:(i + 1) * block] for i in range(nb)])
    top = wb.abs().amax(dim=-1, keepdim=True)  # [out, nb, 1]
    best_err = torch.full((n_out, nb), float("inf"))
    best_max = top.clone()
    for i in range(int(CLIP_MAX_SHRINK * CLIP_STEPS)):
        m = top * (1 - i / CLIP_STEPS)
        cw = torch.max(torch.min(wb, m), -m)
        d = rt(cw.reshape(n_out, n_in)).reshape(n_out, nb, block) - wb
        err = torch.einsum("ogb,gbc,ogc->og", d, gb, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], m, best_max)
    return torch.max(torch.min(wb, best_max), -best_max).reshape(n_out, n_in)


def sample_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most ``n`` rows of ``x``, evenly spaced (deterministic)."""
    if x.shape[0] <= n:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, n).long()]


@dataclass
class LayerResult:
    alphas: dict[str, float]
    errors: dict[str, list[float]]
    clipped: list[str]


def awq_layer(lp: LayerPlan, stats: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], grid: Any,
              clip: bool = True, alphas: tuple[float, ...] = ALPHAS) -> LayerResult:
    """Search, fold and (optionally) clip one layer in place; ``stats`` = mean|x| and ``rows`` = sampled input
    rows per capture key (before any fold of this layer)."""
    rt = round_trip(grid)
    chosen, errors, scale_of = {}, {}, {}
    grams = {k: x.t() @ x / x.shape[0] for k, x in rows.items() if x.shape[0]}
    for g in lp.groups:
        if g.key not in grams or g.key not in stats:  # an expert no calibration token reached
            continue
        a, s, errs = search_scale(stats[g.key], grams[g.key], g.quantized, rt, alphas)
        if isinstance(g.prev, Norm):
            g.prev.scale_outputs(s)
        else:
            g.prev[0].scale_outputs(s, g.prev[1])
        for m in g.mats:
            m.scale_inputs(s)
        chosen[g.key], errors[g.key] = a, errs
        for m in g.quantized:
            scale_of[id(m)] = (g.key, s)
    clipped = []
    if clip:
        for g in lp.groups:
            for m in g.quantized:
                if m.role in ("q", "k", "qkv") or g.key not in grams:
                    continue  # q/k errors pass through q·kᵀ (AutoAWQ skips them too); fused qkv holds q and k
                s = scale_of.get(id(m), (g.key, None))[1]
                gram = grams[g.key] if s is None else grams[g.key] / s[:, None] / s[None, :]  # of X / s
                m.assign(search_clip(m.weight(), gram, grid, rt))
                clipped.append(m.name)
    return LayerResult(chosen, errors, clipped)


# ---- layer by layer over a Hugging Face model ------------------------------------------------------------

def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None) or getattr(model, "transformer", None)
    layers = getattr(inner, "layers", None) or getattr(inner, "h", None)
    if layers is None:
        raise EdgekitError(f"AWQ cannot find the decoder layers of {type(model).__name__}",
                           "use --method rtn for this architecture")
    return layers


class _Stop(Exception):
    pass


def _layer_inputs(model: torch.nn.Module, layers: torch.nn.ModuleList, tokens: np.ndarray
                  ) -> tuple[list[torch.Tensor], list[tuple[tuple, dict]]]:
    """Layer 0's input hidden states per sample, and every layer's other arguments (masks, rope) for one
    sample (the same for all: same length, no padding)."""
    inputs: list[torch.Tensor] = []
    calls: list[tuple[tuple, dict] | None] = [None] * len(layers)

    def keep(i):
        def hook(_m, args, kwargs):
            if i == 0:
                inputs.append((args[0] if args else kwargs["hidden_states"]).detach())
            if calls[i] is None:
                calls[i] = (tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"})
            if i == len(layers) - 1 or (i == 0 and calls[-1] is not None):
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for row in tokens:
            try:
                model(input_ids=torch.from_numpy(np.asarray(row[None, :], dtype=np.int64)), use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    for c in calls:
        c[1].pop("past_key_values", None), c[1].pop("past_key_value", None), c[1].pop("cache", None)
    return inputs, calls  # type: ignore[return-value]


def _run_layer(layer: torch.nn.Module, x: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    out = layer(x, *call[0], **call[1])
    return out[0] if isinstance(out, tuple) else out


def _capture(layer: torch.nn.Module, lp: LayerPlan, inputs: list[torch.Tensor], call: tuple[tuple, dict],
             search_rows: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """mean|x| per channel over every calibration token and up to ``search_rows`` evenly spaced rows, at each
    capture point of the layer (its weights as they are now)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    kept: dict[str, list[torch.Tensor]] = {}
    per_sample = max(1, search_rows // max(1, len(inputs)))

    def hook(key):
        def fn(_m, args, kwargs):
            x = (args[0] if args else next(iter(kwargs.values()))).detach().float()
            x = x.reshape(-1, x.shape[-1])
            sums[key] = sums.get(key, 0) + x.abs().sum(dim=0)
            counts[key] = counts.get(key, 0) + x.shape[0]
            kept.setdefault(key, []).append(sample_rows(x, per_sample))
        return fn

    handles = [m.register_forward_pre_hook(hook(k), with_kwargs=True) for k, m in lp.captures.items()]
    try:
        for x in inputs:
            _run_layer(layer, x, call)
    finally:
        for h in handles:
            h.remove()
    stats = {k: sums[k] / counts[k] for k in sums}
    rows = {k: torch.cat(v) for k, v in kept.items()}
    for key, fn in lp.derived.items():  # expert inputs: from the sampled rows the router sends each expert
        r = fn(rows)
        rows[key] = r
        if r.shape[0]:
            stats[key] = r.abs().mean(dim=0)
    return stats, rows


@dataclass
class Result:
    alphas: list[dict[str, float]]  # per layer: capture key -> alpha
    clipped: int
    tokens: int
    seconds: float


def run(model: torch.nn.Module, family: Any, spec: Any, tokens: np.ndarray, grid: Any, *, clip: bool = True,
        search_rows: int = 4096, alphas: tuple[float, ...] = ALPHAS, progress: bool = True) -> Result:
    """AWQ on ``model`` (a float32 HF causal LM) in place, one decoder layer at a time: capture, search, fold,
    clip, then the next layer's inputs from this layer with its weights on the grid."""
    import time

    from tqdm import tqdm

    started = time.perf_counter()
    layers = decoder_layers(model)
    plans = [plan(layer, family, spec, i) for i, layer in enumerate(layers)]  # a missing mapping fails first
    per_layer, clipped = [], 0
    rt = round_trip(grid)
    with torch.inference_mode():
        inputs, calls = _layer_inputs(model, layers, tokens)
        for i, layer in enumerate(tqdm(layers, desc="awq", unit="layer", disable=not progress)):
            stats, rows = _capture(layer, plans[i], inputs, calls[i], search_rows)
            res = awq_layer(plans[i], stats, rows, grid, clip=clip, alphas=alphas)
            per_layer.append(res.alphas)
            clipped += len(res.clipped)
            if i + 1 < len(layers):  # the next layer sees this one quantized
                saved = [m.weight().clone() for m in plans[i].quantized]
                for m in plans[i].quantized:
                    m.assign(rt(m.weight()))
                inputs = [_run_layer(layer, x, calls[i]) for x in inputs]
                for m, w in zip(plans[i].quantized, saved, strict=True):
                    m.assign(w)
    return Result(per_layer, clipped, int(tokens.size), round(time.perf_counter() - started, 3))
