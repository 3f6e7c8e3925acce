"""Run a Hugging Face causal LM decoder layer by decoder layer on calibration tokens (GPTQ, AWQ).

Only one decoder layer's weights and the calibration activations between two layers are in memory at a
time: the model is built on torch's ``meta`` device, the embeddings (and rotary tables) are materialised
once, each decoder layer is loaded from the checkpoint when its turn comes and dropped after it. Inside a
layer the linear layers are visited in true-sequential stages (:data:`STAGES`, by role from
:mod:`edgekit.roles`: the attention inputs q/k/v, then o, then the MLP inputs gate/up, then down): for
each stage the layer runs on every calibration batch with forward pre-hooks on that stage's linears, the
callback sees their inputs (:meth:`Callback.observe`), then quantizes them (:meth:`Callback.quantize`),
and the next stage sees the outputs of the already-quantized earlier ones. The layer's outputs with all
its stages quantized are the next layer's inputs.

API (stable; the AWQ quantizer builds on it)::

    from quant.layerwise import Callback, run, calibration_tokens

    class MyQuantizer(Callback):
        def observe(self, lin, x):      # lin: Linear; x: float32 [tokens, in_features], one batch
            ...
        def quantize(self, ctx, stage): # ctx: LayerContext; stage: Stage, after every batch was observed
            for lin in stage.linears:
                lin.set_weight(new_weight_out_by_in)

    tokens, calib_info = calibration_tokens(model_dir, calib=None, samples=128, seqlen=512)
    summary = run(model_dir, tokens, MyQuantizer(), batch_size=4)

``Callback.begin_layer(ctx)`` / ``end_layer(ctx)`` bracket each decoder layer (``ctx.module`` is the
decoder layer, ``ctx.norms`` its norms by role, ``ctx.forward(b)`` the layer's output on batch ``b`` with
its current weights, so a search can score the layer output; the callback may change norm weights too).
Weights are float32 ``[out, in]`` whatever the module stores (GPT-2's Conv1D is transposed for you).
Mixture-of-experts layers are split into one linear per expert (roles ``expert_gate``/``expert_up``/
``expert_down``), and each expert observes only the tokens routed to it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.roles import LINEAR, NORM_FEEDS, NORMS, role_of

# true-sequential order inside a decoder layer: each stage's inputs come from the quantized earlier stages
STAGES: tuple[frozenset[str], ...] = (
    frozenset(NORM_FEEDS["attn_norm"]) & LINEAR,  # q k v qkv
    frozenset({"o"}),
    frozenset(NORM_FEEDS["ffn_norm"]) & LINEAR,  # gate up gate_up, shared/expert gate and up
    frozenset({"down", "shared_down", "expert_down"}),
)


@dataclass
class Linear:
    """One linear layer of the current decoder layer."""

    name: str  # module path as the checkpoint spells it, e.g. "model.layers.3.self_attn.q_proj"
    role: str  # edgekit.roles role (q, k, v, o, qkv, gate, up, down, gate_up, expert_*, shared_*)
    layer: int
    module: Any  # torch.nn.Linear, transformers' Conv1D (GPT-2) or an expert's nn.Linear
    transposed: bool = False  # the module stores [in, out] (Conv1D)

    @property
    def in_features(self) -> int:
        return int(self.module.weight.shape[0 if self.transposed else 1])

    @property
    def out_features(self) -> int:
        return int(self.module.weight.shape[1 if self.transposed else 0])

    def weight(self) -> Any:
        """A float32 copy of the weight, [out, in]."""
        w = self.module.weight.detach()
        return (w.t() if self.transposed else w).float().clone()

    def set_weight(self, w: Any) -> None:
        """Replace the weight by ``w`` [out, in] (e.g. the dequantized codes), in place."""
        import torch

        w = torch.as_tensor(w, dtype=self.module.weight.dtype)
        with torch.no_grad():
            self.module.weight.copy_(w.t() if self.transposed else w)


@dataclass
class Stage:
    roles: frozenset[str]
    linears: list[Linear]


@dataclass
class LayerContext:
    """The decoder layer being quantized and its calibration inputs."""

    index: int
    module: Any  # the decoder layer (torch.nn.Module), weights loaded
    linears: list[Linear]
    norms: dict[str, Any]  # role (attn_norm, ffn_norm, ...) -> norm module of this layer
    inputs: list[Any]  # hidden states [batch, seqlen, hidden] per calibration batch
    _calls: list[tuple[tuple, dict]] = field(default_factory=list)  # the layer's other arguments per batch

    @property
    def batches(self) -> int:
        return len(self.inputs)

    def forward(self, b: int) -> Any:
        """The layer's output on calibration batch ``b`` with its current weights."""
        import torch

        args, kwargs = self._calls[b]
        with torch.inference_mode():
            out = self.module(self.inputs[b], *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


class Callback:
    """What a layer-by-layer quantizer implements; every method has a no-op default."""

    # True when quantize() leaves a stage's linears as the next layer will see them and end_layer() changes
    # nothing the layer computes (GPTQ): the driver then runs the attention once more after the o stage and
    # reuses its output for the later stages and the layer's outputs instead of recomputing it (AWQ folds per
    # stage but rounds at the layer's end, so it keeps False)
    stages_final: bool = False
    # True when quantize() leaves what the layer computes unchanged until end_layer() (AWQ: exact folds, rounding at
    # the layer's end): every stage then sees the inputs of one forward pass, so the driver observes all the stages'
    # linears in one pass per batch instead of one pass per stage
    one_pass: bool = False

    def begin_layer(self, ctx: LayerContext) -> None:
        pass

    def observe(self, lin: Linear, x: Any) -> None:
        """``x``: float32 [tokens, in_features], the inputs of ``lin`` on one calibration batch (for an expert:
        only the tokens routed to it; possibly zero rows)."""

    def quantize(self, ctx: LayerContext, stage: Stage) -> None:
        """Called once per stage after every batch was observed; set the stage's weights here."""

    def end_layer(self, ctx: LayerContext) -> None:
        pass


def calibration_tokens(model_dir: str | Path, calib: str | None = None, samples: int = 128, seqlen: int = 512
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """(tokens int64 [n, seqlen], info for the manifest: source, sha256 of the text, samples, seqlen, tokens)."""
    from quant import calibration
    from quant.imatrix import tokenizer_for

    text, name = calibration.load_text(calib)
    encode, bos = tokenizer_for(Path(model_dir))
    tokens = calibration.samples(encode, text, samples, seqlen, bos=bos,
                                 source=f"calibration file {calib}" if calib else "the default calibration text")
    info = {"source": name, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "samples": int(tokens.shape[0]), "seqlen": int(tokens.shape[1]), "tokens": int(tokens.size)}
    return tokens, info


@contextmanager
def _params_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device and buffers (rotary tables, embedding scales) computed
    for real on the CPU; hand-written like accelerate's init_empty_weights, which is not a dependency here."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


class _Stop(Exception):
    """Raised from a hook once every linear of the stage has seen its input: the rest of the layer is not needed."""


class _Recorder:
    """Stands in for a decoder layer while the embeddings run: records the arguments the model passes it."""

    def __new__(cls, layer: Any, calls: list, keep_input: Any = None):
        import torch

        class Recorder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.attention_type = getattr(layer, "attention_type", None)

            def forward(self, hidden_states, *args, **kwargs):
                kwargs = {k: v for k, v in kwargs.items() if k not in ("output_attentions",)}
                if keep_input is not None:
                    keep_input(hidden_states)
                calls.append((None, args, kwargs))
                return hidden_states

        return Recorder()


def _layer_list(model: Any, n_layers: int) -> tuple[Any, Any]:
    """(base model, its ModuleList of decoder layers)."""
    import torch

    for _, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n_layers and child_name in ("layers", "h"):
                return module, child
    raise EdgekitError("cannot find the decoder layers of this model", "layer-by-layer quantization supports "
                       "llama, mistral, qwen2, qwen3, phi3, gemma2, gpt2, mixtral, qwen2_moe")


# transformers 5 module paths that checkpoints spell the transformers 4 way
_ALIASES = (("mlp.gate.", "block_sparse_moe.gate."), ("mlp.experts.", "block_sparse_moe.experts."))


def _spellings(key: str) -> list[str]:
    return [key] + [key.replace(new, old, 1) for new, old in _ALIASES if key.startswith(new)]


def _checkpoint_index(ckpt: Any) -> tuple[dict[tuple[int, str], str], dict[str, str]]:
    """((layer, path inside the layer incl. .weight) -> checkpoint name, global names)."""
    per_layer: dict[tuple[int, str], str] = {}
    pattern = re.compile(r"^(?:.*?\.)?(?:layers|h)\.(\d+)\.(.+)$")
    others = {}
    for name in ckpt.names():
        m = pattern.match(name)
        if m:
            per_layer[(int(m.group(1)), m.group(2))] = name
        else:
            others[name] = name
    return per_layer, others


def _split_experts(experts: Any, layer: int, prefix: str, per_layer: dict[tuple[int, str], str], ckpt: Any) -> Any:
    """transformers 5 stores a MoE layer's experts as 3-D tensors applied with F.linear; replace them by one
    nn.Linear per expert (the checkpoint keeps them per expert anyway) so hooks see each expert's routed tokens."""
    import torch

    n = experts.num_experts
    names = {"gate": ("w1", "gate_proj"), "up": ("w3", "up_proj"), "down": ("w2", "down_proj")}

    def load(e: int, part: str) -> torch.Tensor:
        for spelled in names[part]:
            for key in _spellings(f"{prefix}.experts.{e}.{spelled}.weight"):
                if (layer, key) in per_layer:
                    return ckpt.get(per_layer[(layer, key)]).float()
        raise EdgekitError(f"layer {layer} expert {e}: no {part} weight in the checkpoint",
                           "the checkpoint does not match its config.json")

    class Expert(torch.nn.Module):
        def __init__(self, e: int) -> None:
            super().__init__()
            g, u, d = load(e, "gate"), load(e, "up"), load(e, "down")
            self.spelled = next(s for s in names["gate"] for k in _spellings(f"{prefix}.experts.{e}.{s}.weight")
                                if (layer, k) in per_layer)
            self.ckpt_prefix = next(k for s in names["gate"] for k in _spellings(f"{prefix}.experts.{e}.{s}.weight")
                                    if (layer, k) in per_layer).rsplit(".", 2)[0]
            self.gate = torch.nn.Linear(g.shape[1], g.shape[0], bias=False)
            self.up = torch.nn.Linear(u.shape[1], u.shape[0], bias=False)
            self.down = torch.nn.Linear(d.shape[1], d.shape[0], bias=False)
            with torch.no_grad():
                self.gate.weight.copy_(g)
                self.up.weight.copy_(u)
                self.down.weight.copy_(d)

    class SplitExperts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_experts = n
            self.act_fn = experts.act_fn
            self.experts = torch.nn.ModuleList(Expert(e) for e in range(n))

        def forward(self, hidden_states, top_k_index, top_k_weights):
            # the same routing as transformers' MixtralExperts / Qwen2MoeExperts forward
            out = torch.zeros_like(hidden_states)
            for e, expert in enumerate(self.experts):
                token_idx, k_pos = torch.where(top_k_index == e)
                x = hidden_states[token_idx]
                y = expert.down(self.act_fn(expert.gate(x)) * expert.up(x))
                out.index_add_(0, token_idx, (y * top_k_weights[token_idx, k_pos, None]).to(out.dtype))
            return out

    return SplitExperts()


def _linears(layer_module: Any, index: int, model_type: str, prefix: str) -> tuple[list[Linear], dict[str, Any]]:
    import torch

    linears, norms = [], {}
    for rel, m in layer_module.named_modules():
        if not rel:
            continue
        ckpt_rel = rel
        e = re.match(r"^(.*)\.experts\.experts\.(\d+)\.(gate|up|down)$", rel)
        if e:  # a split expert: name it as the checkpoint does
            parent = layer_module.get_submodule(f"{e.group(1)}.experts.experts.{e.group(2)}")
            part = {"gate": 0, "up": 1, "down": 2}[e.group(3)]
            spelled = (("w1", "w3", "w2") if parent.spelled == "w1" else ("gate_proj", "up_proj", "down_proj"))[part]
            ckpt_rel = f"{parent.ckpt_prefix}.{spelled}"
        role, _ = role_of(f"{prefix}.{index}.{ckpt_rel}", model_type)
        if role in LINEAR and hasattr(m, "weight") and getattr(m.weight, "ndim", 0) == 2:
            conv1d = type(m).__name__ == "Conv1D"
            if not (conv1d or isinstance(m, torch.nn.Linear)):
                continue
            linears.append(Linear(f"{prefix}.{index}.{ckpt_rel}", role, index, m, transposed=conv1d))
        elif role in NORMS:
            norms[role] = m
    return linears, norms


BATCH_BYTES = 32 << 20  # batch_size=None: samples per forward so the widest activation stays under this (4 at most)


SPOOL_BYTES = 256 << 20  # spool=None: activations larger than this go to a temporary file


class _Copies(list):
    """The activations between layers in memory: a list that keeps its own copy of what it is given."""

    def append(self, t: Any) -> None:
        super().append(t.detach().clone())


class Spool:
    """The calibration activations between two layers, one float32 tensor per batch, in an unlinked temporary
    file: a batch is read back when a forward needs it and its replacement written over it, so only the batches
    in use are in the process's memory (the rest is in the OS's page cache, which it may write out). A 1B model
    with 128 x 512 tokens: 0.54 GB less peak RSS, for ~1 GB of page-cache reads per layer."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="edgekit-activations-")
        self.slots: list[tuple[int, tuple[int, ...], Any]] = []  # (offset, shape, dtype) per batch
        self.end = 0

    def __len__(self) -> int:
        return len(self.slots)

    def append(self, t: Any) -> None:
        self.slots.append((self.end, tuple(t.shape), t.dtype))
        self._write(self.end, t)
        self.end += t.numel() * t.element_size()

    def _write(self, offset: int, t: Any) -> None:
        self.file.seek(offset)
        self.file.write(t.detach().contiguous().numpy().data)

    def __getitem__(self, b: int) -> Any:
        import torch

        offset, shape, dtype = self.slots[b]
        buf = bytearray(int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size())
        self.file.seek(offset)
        if self.file.readinto(buf) != len(buf):
            raise OSError("the activation spool file is shorter than written")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def __setitem__(self, b: int, t: Any) -> None:
        offset, shape, dtype = self.slots[b]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"batch {b}: {tuple(t.shape)} {t.dtype} does not replace {shape} {dtype}")
        self._write(offset, t)


def release_memory() -> None:
    """Give freed heap memory back to the OS: glibc keeps large freed blocks in its arenas otherwise, and the
    layer-by-layer pass frees hundreds of MB at every layer (peak RSS is what it promises to bound). Reference
    cycles go first: a search's hooks and closures can hold a layer's activations in one, and Python's cyclic
    collector counts objects, not bytes, so it would free them layers later."""
    import ctypes
    import gc

    gc.collect()

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def run(model_dir: str | Path, tokens: np.ndarray, callback: Callback, *, batch_size: int | None = 4,
        progress: bool = True, threads: int | None = None, spool: bool | None = None) -> dict[str, Any]:
    """Run ``model_dir``'s decoder layers one at a time on ``tokens`` [n, seqlen], calling ``callback`` per
    stage; returns {"layers", "linears", "model_type"}. The callback's weight changes stay in the layer that
    produces the next layer's inputs; nothing is written to disk here. ``batch_size`` None: as many samples
    per forward (up to 4) as keep the widest activation of one forward under :data:`BATCH_BYTES`. ``spool``:
    the activations between layers in a temporary file (:class:`Spool`) instead of memory; None: when they
    pass :data:`SPOOL_BYTES`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgekit import archs
    from edgekit.checkpoint import open_checkpoint

    torch.set_num_threads(threads or os.cpu_count() or 1)
    ckpt = open_checkpoint(str(model_dir))
    model_type = ckpt.config.get("model_type")
    archs.get(model_type)  # an architecture without a description fails here, with the supported list
    config = AutoConfig.from_pretrained(str(ckpt.path))
    if hasattr(config, "use_cache"):
        config.use_cache = False
    with _params_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    n_layers = int(getattr(config, "num_hidden_layers", None) or config.n_layer)
    base, layers = _layer_list(model, n_layers)
    per_layer, others = _checkpoint_index(ckpt)
    if not per_layer:
        raise EdgekitError(f"{ckpt.path}: no decoder layer tensors in the checkpoint", "check the model directory")
    first = next(iter(per_layer.values()))
    layer_prefix = re.match(r"^((?:.*?\.)?(?:layers|h))\.\d+\.", first).group(1)  # "model.layers" / "h"

    # everything but the decoder layers (embeddings, final norm), from the checkpoint
    for name, child in list(base.named_children()):
        if child is layers:
            continue
        own = {k: ckpt.get(g) for k in child.state_dict() for g in others
               if g == f"{name}.{k}" or g.endswith(f".{name}.{k}")}
        _materialize(child, own, set(), name)

    calls: list[list[tuple]] = [[] for _ in range(n_layers)]
    width = int(getattr(config, "hidden_size", None) or config.n_embd)
    if spool is None:
        spool = tokens.size * width * 4 > SPOOL_BYTES
    hidden: Any = Spool() if spool else _Copies()
    originals = list(layers)
    for i in range(n_layers):
        layers[i] = _Recorder(originals[i], calls[i], keep_input=hidden.append if i == 0 else None)
    if batch_size is None:
        widest = max(int(getattr(config, k, None) or 0) for k in ("hidden_size", "intermediate_size", "n_embd",
                                                                    "n_inner", "moe_intermediate_size"))
        widest = max(widest, 4 * int(getattr(config, "n_embd", 0) or 0))  # gpt2's MLP when n_inner is unset
        batch_size = max(1, min(4, BATCH_BYTES // max(1, tokens.shape[1] * widest * 4)))
    batches = [torch.as_tensor(tokens[s:s + batch_size]) for s in range(0, len(tokens), batch_size)]
    with torch.inference_mode():
        for ids in batches:
            base(input_ids=ids, use_cache=False)
    for child in base.children():  # embeddings, final norm: not needed again (1B: 0.26 GB)
        if child is not layers:
            child.to("meta")
    del batches
    release_memory()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_layers, desc="layers", unit="layer", leave=False)
    n_linears = 0
    for i in range(n_layers):
        layer = originals[i]
        # load this layer's weights (experts split first: they are not nn.Linear in transformers 5)
        own = {k: ckpt.get(g) for (li, k), g in per_layer.items() if li == i}
        for rel, m in list(layer.named_modules()):
            if hasattr(m, "gate_up_proj") and hasattr(m, "down_proj") and getattr(m.gate_up_proj, "ndim", 0) == 3:
                owner, _, attr = rel.rpartition(".")
                split = _split_experts(m, i, owner, per_layer, ckpt)
                setattr(layer.get_submodule(owner) if owner else layer, attr, split)
        skip = {k for k in layer.state_dict() if ".experts.experts." in k}
        _materialize(layer, own, skip, f"layer {i}")
        del own
        linears, norms = _linears(layer, i, model_type, layer_prefix)
        ctx = LayerContext(i, layer, linears, norms, hidden, [(c[1], c[2]) for c in calls[i]])
        callback.begin_layer(ctx)
        attention, undo = None, None  # the attention module once it is final and skippable; its restore
        final = getattr(callback, "stages_final", False)  # GPTQ's and AWQ's callbacks are duck-typed
        stages = [st for st in (Stage(roles, [lin for lin in linears if lin.role in roles]) for roles in STAGES)
                  if st.linears]
        if getattr(callback, "one_pass", False):
            _observe_stage(ctx, Stage(frozenset().union(*(st.roles for st in stages)),
                                      [lin for st in stages for lin in st.linears]), callback)
        for stage in stages:
            if getattr(callback, "one_pass", False):
                callback.quantize(ctx, stage)
                n_linears += len(stage.linears)
                continue
            to_mid = attention is not None and undo is None
            _observe_stage(ctx, stage, callback, to_mid=to_mid)
            if to_mid:
                undo = _zero(attention)
            callback.quantize(ctx, stage)
            n_linears += len(stage.linears)
            if final and "o" in stage.roles and attention is None:
                attention = _attention_skippable(ctx)
        callback.end_layer(ctx)
        try:
            for b in range(ctx.batches):  # in place: one batch's input is freed as its output arrives, so the
                hidden[b] = ctx.forward(b)  # calibration activations are held once, not twice (1B: 0.5 GB less)
        finally:
            if undo is not None:
                undo()
        ctx.inputs = []
        layers[i] = torch.nn.Identity()  # this layer's weights are freed; its outputs carry on
        originals[i] = None
        del ctx, layer, linears, norms
        release_memory()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"layers": n_layers, "linears": n_linears, "model_type": model_type}


def _materialize(layer: Any, tensors: dict[str, Any], skip: set[str], what: str) -> None:
    """Give the meta-device parameters and buffers of ``layer`` the checkpoint's values (float32); a missing
    tensor is an error, never silently zero."""
    import torch

    meta = [(n, p) for n, p in list(layer.named_parameters()) + list(layer.named_buffers()) if p.is_meta]
    for name, p in meta:
        if name in skip:
            continue
        found = next((k for k in _spellings(name) if k in tensors), None)
        if found is None:
            raise EdgekitError(f"{what}: the checkpoint has no tensor for {name}",
                               "the checkpoint does not match its config.json")
        owner, _, attr = name.rpartition(".")
        mod = layer.get_submodule(owner) if owner else layer
        src = tensors[found]
        value = src.to(torch.float32).reshape(p.shape)
        if value.data_ptr() == src.data_ptr():  # already float32: a copy of our own, not a view of the read
            value = value.clone()
        if isinstance(p, torch.nn.Parameter):
            setattr(mod, attr, torch.nn.Parameter(value, requires_grad=False))
        else:
            mod._buffers[attr] = value


# linears that read one and the same tensor (the attention / MLP norm's output): one hook sees it for all
SHARED_INPUT = (frozenset({"q", "k", "v", "qkv"}), frozenset({"gate", "up", "gate_up"}))


def _observe_stage(ctx: LayerContext, stage: Stage, callback: Callback, to_mid: bool = False) -> None:
    """Run the layer on every batch with pre-hooks on the stage's linears; stop each batch once all have been
    seen (experts can stay unseen on a batch, so a stage with experts runs the whole layer). Linears of one
    norm's output (q/k/v, gate/up) are all handed its output at the first of them, before any of them runs.
    With ``to_mid`` each batch's input is replaced by the residual stream after the attention (the MLP norm's
    input) once the batch has run (see :func:`_attention_skippable`)."""
    seen: set[int] = set()
    can_stop = not any(lin.role.startswith("expert_") for lin in stage.linears)
    shared = any({lin.role for lin in stage.linears} <= s for s in SHARED_INPUT)
    mid: list = []

    def hook(lin: Linear, k: int):
        def pre(_module, args):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            for j, other in (enumerate(stage.linears) if shared else [(k, lin)]):
                callback.observe(other, x)
                seen.add(j)
            if can_stop and len(seen) == len(stage.linears):
                raise _Stop

        return pre

    handles = [lin.module.register_forward_pre_hook(hook(lin, k)) for k, lin in enumerate(stage.linears)]
    if to_mid:
        handles.append(ctx.norms["ffn_norm"].register_forward_pre_hook(lambda _m, args: mid.append(args[0].detach())))
    try:
        for b in range(ctx.batches):
            seen.clear()
            try:
                ctx.forward(b)
            except _Stop:
                pass
            if to_mid:
                if len(mid) != 1:
                    raise RuntimeError(f"layer {ctx.index}: the MLP norm ran {len(mid)} times on batch {b}")
                ctx.inputs[b] = mid.pop()
    finally:
        for h in handles:
            h.remove()


def _zero(attention: Any) -> Any:
    """Make ``attention`` return zeros (its output shape) without computing anything; returns the undo."""
    import torch

    def zeros(*args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        return torch.zeros_like(x), None

    attention.forward = zeros
    return lambda: attention.__dict__.pop("forward", None)


def _attention_skippable(ctx: LayerContext) -> Any:
    """The layer's attention module when, its q/k/v/o being final, the rest of the layer can run from the
    residual stream after it (the MLP norm's input) with the attention returning zeros: then the later stages
    and the layer's outputs need not compute it again. Checked on batch 0 (the layer's output both ways must be
    equal, as it is for every pre-norm residual layer); None when it is not so."""
    import torch

    norm = ctx.norms.get("ffn_norm")
    o = next((lin for lin in ctx.linears if lin.role == "o"), None)
    if norm is None or o is None:
        return None
    attention = ctx.module.get_submodule(o.name.split(f".{ctx.index}.", 1)[1].split(".")[0])
    if attention is o.module:
        return None
    mid: list = []
    handle = norm.register_forward_pre_hook(lambda _m, args: mid.append(args[0].detach()))
    try:
        want = ctx.forward(0)
    finally:
        handle.remove()
    if len(mid) != 1:
        return None
    x0, ctx.inputs[0] = ctx.inputs[0], mid[0]
    undo = _zero(attention)
    try:
        same = torch.equal(ctx.forward(0), want)
    except Exception:  # an attention whose callers want more than (output, weights): not skipped
        same = False
    finally:
        undo()
        ctx.inputs[0] = x0
    return attention if same else None


def iter_linears(ctx: LayerContext, roles: frozenset[str]) -> Iterator[Linear]:
    """The layer's linears whose role is in ``roles``."""
    return (lin for lin in ctx.linears if lin.role in roles)
