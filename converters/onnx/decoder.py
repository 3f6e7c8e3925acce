"""The decoder graph: embeddings, N transformer blocks with a KV cache, final norm, LM head.

Written node by node with standard ONNX ops (opset 17), in the spirit of onnxruntime-genai's model
builder, but without its contrib ops (GroupQueryAttention, RotaryEmbedding, SimplifiedLayerNorm): the
same graph then runs in plain onnxruntime, in onnxruntime-genai, and in the NNAPI / CoreML execution
providers, whose supported-operator lists hold none of those contrib ops. onnxruntime's graph
optimizer fuses the standard patterns back (LayerNorm, Gelu, attention) on the CPU provider.

GQA without repeating K/V: the query heads of one KV group are laid out contiguously, so
``q (B, heads, S, D)`` reshapes to ``(B, kv_heads, groups*S, D)`` and one batched MatMul against
``K (B, kv_heads, T, D)`` scores all of them; the KV cache keeps its ``(batch, kv_heads, seq,
head_dim)`` shape and no Expand/Tile (unsupported by NNAPI) is needed.

RoPE uses cos/sin tables (:func:`edgekit.rope.tables`: transformers' formula or its rotary class, one
table per distinct rope, e.g. gemma3's local and global layers), gathered by ``position_ids`` in the
graph; NNAPI has Sin but not Cos, so a table is also the portable choice. What the architecture is
(layout, norms, scales, which layers slide) comes from the family description (:mod:`edgekit.archs`).

The tensor seam (:mod:`converters.seam`): every weight reaches the graph through :meth:`DecoderBuilder.param`
(floats: embeddings, norms, biases, the head) or :meth:`DecoderBuilder.linear` (the linear layers), which
emits ``MatMul`` for a float weight and com.microsoft ``MatMulNBits`` / ``MatMulBnb4`` (onnxruntime's
CPU kernels) for a QuantizedTensor on an ``onnx:`` grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto

from converters import seam as tseam
from converters.onnx.graph import MS_DOMAIN, Graph
from edgekit.checkpoint import NUMPY_DTYPES
from edgekit.errors import EdgekitError
from edgekit.spec import ModelSpec

MASK_NEG = 1e9  # added to masked scores in fp32: exp underflows to exactly 0, and no -inf arithmetic

# per-architecture tensor names inside a layer (llama layout unless overridden)
LLAMA_NAMES = dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
                   gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj", ln_attn="input_layernorm",
                   ln_mlp="post_attention_layernorm", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
                   post_attn="post_attention_layernorm", pre_ff="pre_feedforward_layernorm",
                   post_ff="post_feedforward_layernorm")


@dataclass(frozen=True)
class Variant:
    """What kind of graph to write: dtype, and for the static form its fixed token count and context."""

    dtype: np.dtype
    static: bool = False
    tokens: int = 0  # static: tokens per call (prefill chunk, or 1 for the decode graph)
    context: int = 0  # static: KV buffer length

    @property
    def onnx_dtype(self) -> int:
        return TensorProto.FLOAT16 if self.dtype == np.float16 else TensorProto.FLOAT

    @property
    def index_type(self) -> int:
        # NNAPI's Gather only takes non-constant indices as int32, and it has no int64 tensors at all
        return TensorProto.INT32 if self.static else TensorProto.INT64


class Weights:
    """Tensors of the checkpoint as numpy arrays (LoRA merged by the Checkpoint), read once on demand.

    float16 and float32 stay as stored, memory-mapped rather than read: the writer's chunk tasks read
    their rows straight from the page cache on every core and cast them to the graph's dtype (the same
    values as widening first: both casts are exact or the one rounding), and a whole tensor already in
    the graph's dtype is copied by the kernel (:class:`converters.onnx.graph.WeightFile`). Other types
    (BF16 widened by the Checkpoint, F64) and tensors a LoRA adapter changes come read, as float32."""

    def __init__(self, ckpt: Any) -> None:
        self.ckpt = ckpt
        names = set(ckpt.names())
        self.names = names

    def get(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise EdgekitError(f"checkpoint {self.ckpt.path} has no tensor {name}",
                               "the weights do not match config.json; restore the checkpoint")
        info, where = self.ckpt.tensors[name], self.ckpt.byte_range(name)
        if where is not None and info.dtype in ("F16", "F32") and info.shape and where[2] > where[1]:
            return np.memmap(where[0], dtype=NUMPY_DTYPES[info.dtype], mode="r", offset=where[1],
                             shape=tuple(info.shape))
        a = self.ckpt.array(name)
        return a if a.dtype in (np.float16, np.float32) else a.astype(np.float32)

    def has(self, name: str) -> bool:
        return name in self.names

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.ckpt.tensors[name].shape)


def check_supported(spec: ModelSpec) -> None:
    if spec.moe is not None:  # what ONNX cannot do yet: routed experts
        raise EdgekitError(f"{spec.architecture} is a mixture-of-experts model, which the ONNX converter does not "
                           "export yet", "convert it with --to gguf, or pick a dense model")
    if spec.head_dim % 2:
        raise EdgekitError(f"head_dim {spec.head_dim} is odd", "RoPE needs an even head dimension")


def sliding_window(spec: ModelSpec) -> int | None:
    """The window of the sliding layers, if any layer slides."""
    return spec.sliding_window if "sliding" in spec.layer_types else None


def check_static_window(spec: ModelSpec, context: int, chunk: int) -> None:
    """The static graph has no position-dependent window: refuse a context the sliding window would cut."""
    w = sliding_window(spec)
    if w and context + chunk > w:
        raise EdgekitError(f"--static --context {context} plus --prefill-chunk {chunk} exceeds this model's sliding "
                           f"window of {w} tokens, which the static graph cannot apply",
                           f"pass --context and --prefill-chunk that sum to at most {w}, or export without --static")


class DecoderBuilder:
    """Writes one decoder graph for ``spec`` from ``weights`` into ``graph``."""

    def __init__(self, graph: Graph, spec: ModelSpec, config: dict[str, Any], weights: Weights, variant: Variant,
                 rope: dict[str, tuple[np.ndarray, np.ndarray]] | None, progress: Callable[[int], None] | None = None,
                 seam: tseam.Seam = tseam.NONE) -> None:
        self.g, self.spec, self.config, self.w, self.v = graph, spec, config, weights, variant
        self.seam = seam
        self.rope = rope
        self.progress = progress
        self.dt = variant.dtype
        self.arch = spec.architecture
        self.fam = spec.family
        self.types = spec.layer_types
        self.window = sliding_window(spec)
        self.prefix = self._prefix()

    # ---------------------------------------------------------------- weights
    def _prefix(self) -> str:
        if self.fam.conv1d:
            return "transformer." if self.w.has("transformer.wte.weight") else ""
        return "model."

    def _layer(self, i: int) -> str:
        return f"{self.prefix}h.{i}." if self.fam.conv1d else f"{self.prefix}layers.{i}."

    def tensor(self, name: str, array: np.ndarray, *, dtype: Any = None) -> str:
        return self.g.weight(name, array, dtype or self.dt)

    def _seam(self, name: str, hf_name: str, array: np.ndarray, dtype: Any = None, role: str | None = None):
        """The seam point: the stored value of one weight (float array or QuantizedTensor)."""
        t = tseam.info("onnx", name, hf_name, array.shape, self.w.ckpt.tensors[hf_name].dtype, self.arch, role)
        default = np.dtype(dtype or self.dt).name
        want = self.seam.storage_for(t, default)
        out = tseam.run(t, self.seam.transform_for(t), array)
        if want != default and (isinstance(out, np.ndarray) or want != out.grid):
            raise EdgekitError(f"onnx stores {name} as {default} or as the QuantizedTensor its transform returns, "
                               f"not {want}", f"return a {want} QuantizedTensor for it, or keep {default}")
        return t, out

    def param(self, name: str, hf_name: str, array: np.ndarray, *, dtype: Any = None) -> str:
        """A weight stored as floats (embeddings, norms, biases, head), through the seam."""
        t, out = self._seam(name, hf_name, array, dtype)
        if not isinstance(out, np.ndarray):
            raise tseam.refuse(t, out, "onnx stores only linear layers' weights as codes")
        return self.tensor(name, out, dtype=dtype)

    def linear(self, x: str, name: str, hf_name: str, w: np.ndarray, bias: tuple[str, np.ndarray] | None) -> str:
        """``x @ w.T + bias`` for an (out, in) weight: MatMul for floats, MatMulNBits / MatMulBnb4 for codes."""
        # the projection key ("layers.3.attn.q" -> "q") is the role, also for a split fused tensor
        t, out = self._seam(name + ".weight", hf_name, w, role=name.rsplit(".", 1)[-1])
        if isinstance(out, np.ndarray):
            y = self.g.op("MatMul", x, self.tensor(name + ".weight", out.T))
        else:
            y = self.quantized_matmul(x, name, t, out)
        if bias is not None:
            y = self.g.op("Add", y, self.param(name + ".bias", *bias))
        return y

    def quantized_matmul(self, x: str, name: str, t: tseam.TensorInfo, q: Any) -> str:
        n, k = t.shape
        if q.grid in ("onnx:int4", "onnx:int8"):
            bits, block = int(q.attrs["bits"]), int(q.attrs["block_size"])
            if (q.grid == "onnx:int4") != (bits == 4):
                raise tseam.refuse(t, q, f"bits={bits} does not match the grid")
            inputs = [x, self.g.weight(name + ".qweight", q.arrays["B"]),
                      self.g.weight(name + ".scales", self._exact(t, q, q.arrays["scales"]))]
            if "zero_points" in q.arrays:
                zp = q.arrays["zero_points"]
                zp = zp if zp.dtype == np.uint8 else self._exact(t, q, zp)
                inputs.append(self.g.weight(name + ".zero_points", zp))
            return self.g.op("MatMulNBits", *inputs, domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=block)
        if q.grid == "onnx:nf4":
            absmax = self.g.weight(name + ".absmax", self._exact(t, q, q.arrays["absmax"]))
            return self.g.op("MatMulBnb4", x, self.g.weight(name + ".qweight", q.arrays["B"]), absmax,
                             domain=MS_DOMAIN, K=k, N=n, block_size=int(q.attrs["block_size"]), quant_type=1)
        raise tseam.refuse(t, q, "not an onnx grid")

    def _exact(self, t: tseam.TensorInfo, q: Any, a: np.ndarray) -> np.ndarray:
        """Scales in the graph's dtype (the contrib ops take them in the activations' type), refusing a rounding."""
        out = np.asarray(a).astype(self.dt)
        if not np.array_equal(out.astype(np.float64), np.asarray(a, dtype=np.float64)):
            raise tseam.refuse(t, q, f"its scales are not exact in the graph's {np.dtype(self.dt).name}")
        return out

    def c(self, value: Any) -> str:
        """A scalar constant in the compute dtype."""
        return self.g.const(value, self.dt)

    def c32(self, value: Any) -> str:
        return self.g.const(value, np.float32)

    # ---------------------------------------------------------------- building blocks
    def to32(self, x: str) -> str:
        return x if self.dt == np.float32 else self.g.op("Cast", x, to=TensorProto.FLOAT)

    def from32(self, x: str) -> str:
        return x if self.dt == np.float32 else self.g.op("Cast", x, to=self.v.onnx_dtype)

    def rms_norm(self, x: str, weight_name: str, offset: bool = False) -> str:
        """x / sqrt(mean(x^2) + eps) * w, computed in fp32 as transformers does; gemma stores w - 1."""
        g = self.g
        array = self.w.get(weight_name).astype(np.float32, copy=False)  # the offset is added in float32
        x32 = self.to32(x)
        var = g.op("ReduceMean", g.op("Mul", x32, x32), axes=[-1], keepdims=1)
        normed = g.op("Div", x32, g.op("Sqrt", g.op("Add", var, self.c32(self.spec.norm_eps))))
        if offset:  # gemma: (1 + w) folded at export, multiplied in fp32 before the cast, as transformers does
            return self.from32(g.op("Mul", normed, self.param(weight_name, weight_name, array + 1.0,
                                                              dtype=np.float32)))
        return g.op("Mul", self.from32(normed), self.param(weight_name, weight_name, array))

    def layer_norm(self, x: str, prefix: str) -> str:
        # decomposed: LayerNormalization is not in NNAPI's operator list; onnxruntime fuses it back on CPU
        g = self.g
        w = self.param(prefix + ".weight", prefix + ".weight", self.w.get(prefix + ".weight"))
        b = self.param(prefix + ".bias", prefix + ".bias", self.w.get(prefix + ".bias"))
        x32 = self.to32(x)
        mean = g.op("ReduceMean", x32, axes=[-1], keepdims=1)
        d = g.op("Sub", x32, mean)
        var = g.op("ReduceMean", g.op("Mul", d, d), axes=[-1], keepdims=1)
        normed = self.from32(g.op("Div", d, g.op("Sqrt", g.op("Add", var, self.c32(self.spec.norm_eps)))))
        return g.op("Add", g.op("Mul", normed, w), b)

    def norm(self, x: str, name: str) -> str:
        if self.spec.norm == "layer":
            return self.layer_norm(x, name)
        return self.rms_norm(x, name + ".weight", offset=self.spec.family.norm_offset)

    def act(self, x: str) -> str:
        g, a = self.g, self.spec.activation
        if a in ("silu", "swish"):
            return g.op("Mul", x, g.op("Sigmoid", x))
        if a in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_python_tanh"):
            x3 = g.op("Mul", g.op("Mul", x, x), x)
            inner = g.op("Mul", g.op("Add", x, g.op("Mul", x3, self.c(0.044715))), self.c(math.sqrt(2 / math.pi)))
            return g.op("Mul", g.op("Mul", x, self.c(0.5)), g.op("Add", g.op("Tanh", inner), self.c(1.0)))
        if a == "gelu":
            erf = g.op("Erf", g.op("Div", x, self.c(math.sqrt(2.0))))
            return g.op("Mul", g.op("Mul", x, self.c(0.5)), g.op("Add", erf, self.c(1.0)))
        if a == "relu":
            return g.op("Relu", x)
        raise EdgekitError(f"activation {a!r} is not supported by the ONNX converter",
                           "supported: silu, gelu, gelu_pytorch_tanh / gelu_new, relu")

    # ---------------------------------------------------------------- inputs, masks, rope
    def make_inputs(self) -> None:
        g, v, s = self.g, self.v, self.spec
        it = v.index_type
        if v.static:
            c, n = v.tokens, v.context
            self.input_ids = g.input("input_ids", it, [1, c])
            self.attention_mask = g.input("attention_mask", it, [1, n + c])
            self.position_ids = g.input("position_ids", it, [1, c])
            past_shape, self.present_shape = [1, s.num_kv_heads, n, s.head_dim], [1, s.num_kv_heads, c, s.head_dim]
            self.logits_shape = [1, c, self.vocab]
        else:
            self.input_ids = g.input("input_ids", it, ["batch_size", "sequence_length"])
            self.attention_mask = g.input("attention_mask", it, ["batch_size", "total_sequence_length"])
            self.position_ids = g.input("position_ids", it, ["batch_size", "sequence_length"])
            past_shape = ["batch_size", s.num_kv_heads, "past_sequence_length", s.head_dim]
            self.present_shape = ["batch_size", s.num_kv_heads, "total_sequence_length", s.head_dim]
            self.logits_shape = ["batch_size", "sequence_length", self.vocab]
        self.past = [(g.input(f"past_key_values.{i}.key", v.onnx_dtype, past_shape),
                      g.input(f"past_key_values.{i}.value", v.onnx_dtype, past_shape)) for i in range(s.num_layers)]

    def make_masks(self) -> dict[str, str]:
        """Additive fp32 masks (B, 1, S, T) per layer kind: 0 where a query may attend, -1e9 elsewhere."""
        g, v = self.g, self.v
        kinds = sorted(set(self.types))
        if v.static:
            c, n = v.tokens, v.context
            check_static_window(self.spec, n, c)
            # past slots: allowed when attention_mask says so; chunk: causal among its own tokens
            allowed = np.concatenate([np.ones((c, n), np.float32), np.tril(np.ones((c, c), np.float32))], axis=1)
            pad = g.op("Unsqueeze", g.op("Cast", self.attention_mask, to=TensorProto.FLOAT), g.const([1, 2]))
            both = g.op("Mul", g.const(allowed[None, None], np.float32), pad)
            mask = g.op("Mul", g.op("Sub", both, self.c32(1.0)), self.c32(MASK_NEG))
            return {k: mask for k in kinds}
        total = g.op("Gather", g.op("Shape", self.attention_mask), g.const(1))
        seq = g.op("Gather", g.op("Shape", self.input_ids), g.const(1))
        q_idx = g.op("Range", g.op("Sub", total, seq), total, g.const(1))
        k_idx = g.op("Range", g.const(0), total, g.const(1))
        q_col, k_row = g.op("Unsqueeze", q_idx, g.const([1])), g.op("Unsqueeze", k_idx, g.const([0]))
        causal = g.op("LessOrEqual", k_row, q_col)  # (S, T)
        pad = g.op("Unsqueeze", g.op("Cast", self.attention_mask, to=TensorProto.BOOL), g.const([1, 2]))
        masks = {}
        for kind in kinds:
            ok = causal
            if kind == "sliding":  # transformers: kv_idx > q_idx - window
                ok = g.op("And", ok, g.op("Greater", k_row, g.op("Sub", q_col, g.const(self.window))))
            allowed = g.op("And", ok, pad)  # (B, 1, S, T)
            masks[kind] = g.op("Where", allowed, self.c32(0.0), self.c32(-MASK_NEG))
        return masks

    def make_rope(self) -> dict[str, tuple[str, str]] | None:
        """Per layer kind, cos and sin gathered at the positions: (B, 1, S, rot), one lookup per distinct table."""
        if self.rope is None:
            return None
        g = self.g
        out: dict[str, tuple[str, str]] = {}
        made: dict[int, tuple[str, str]] = {}
        for kind, (cos, sin) in sorted(self.rope.items()):
            if id(cos) not in made:
                prefix = "rope." if not made else f"rope.{kind}."
                cos_t, sin_t = self.tensor(prefix + "cos_cache", cos), self.tensor(prefix + "sin_cache", sin)
                made[id(cos)] = (g.op("Unsqueeze", g.op("Gather", cos_t, self.position_ids), g.const([1])),
                                 g.op("Unsqueeze", g.op("Gather", sin_t, self.position_ids), g.const([1])))
            out[kind] = made[id(cos)]
        return out

    def apply_rope(self, x: str, rope: tuple[str, str]) -> str:
        """x * cos + rotate_half(x) * sin on the first rotary_dim channels of (B, H, S, D)."""
        g = self.g
        cos, sin = rope
        assert self.rope is not None
        d, rot = self.spec.head_dim, next(iter(self.rope.values()))[0].shape[-1]
        x_rot, x_pass = (x, None) if rot == d else (g.op("Slice", x, g.const([0]), g.const([rot]), g.const([3])),
                                                     g.op("Slice", x, g.const([rot]), g.const([d]), g.const([3])))
        half = rot // 2
        x1 = g.op("Slice", x_rot, g.const([0]), g.const([half]), g.const([3]))
        x2 = g.op("Slice", x_rot, g.const([half]), g.const([rot]), g.const([3]))
        rotated = g.op("Concat", g.op("Mul", x2, self.c(-1.0)), x1, axis=3)  # not Neg: CoreML MLProgram lacks it
        out = g.op("Add", g.op("Mul", x_rot, cos), g.op("Mul", rotated, sin))
        return out if x_pass is None else g.op("Concat", out, x_pass, axis=3)

    # ---------------------------------------------------------------- layer weights (per-arch tables)
    # each maps a projection key to (checkpoint name, (out, in) weight), and key + "_b" to (name, bias)
    def attention_weights(self, i: int) -> dict[str, tuple[str, np.ndarray]]:
        s, p = self.spec, self._layer(i)
        q_out, kv_out = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        if self.fam.conv1d:
            qkv, qkv_b = p + "attn.c_attn.weight", p + "attn.c_attn.bias"
            cuts = [q_out, q_out + kv_out]
            q, k, v = np.split(self.w.get(qkv), cuts, axis=1)  # Conv1D: (in, out)
            qb, kb, vb = np.split(self.w.get(qkv_b), cuts)
            o, o_b = p + "attn.c_proj.weight", p + "attn.c_proj.bias"
            return dict(q=(qkv, q.T), k=(qkv, k.T), v=(qkv, v.T), q_b=(qkv_b, qb), k_b=(qkv_b, kb), v_b=(qkv_b, vb),
                        o=(o, self.w.get(o).T), o_b=(o_b, self.w.get(o_b)))
        if self.fam.fused_qkv:
            qkv_name, o = p + "self_attn.qkv_proj.weight", p + "self_attn.o_proj.weight"
            q, k, v = np.split(self.w.get(qkv_name), [q_out, q_out + kv_out], axis=0)
            out = dict(q=(qkv_name, q), k=(qkv_name, k), v=(qkv_name, v), o=(o, self.w.get(o)))
            b_name = p + "self_attn.qkv_proj.bias"
            if self.w.has(b_name):
                qb, kb, vb = np.split(self.w.get(b_name), [q_out, q_out + kv_out])
                out.update(q_b=(b_name, qb), k_b=(b_name, kb), v_b=(b_name, vb))
            return out
        return self._named(p, ("q", "k", "v", "o"))

    def mlp_weights(self, i: int) -> dict[str, tuple[str, np.ndarray]]:
        p = self._layer(i)
        if self.fam.conv1d:
            fc, proj = p + "mlp.c_fc.", p + "mlp.c_proj."
            return dict(up=(fc + "weight", self.w.get(fc + "weight").T), up_b=(fc + "bias", self.w.get(fc + "bias")),
                        down=(proj + "weight", self.w.get(proj + "weight").T),
                        down_b=(proj + "bias", self.w.get(proj + "bias")))
        if self.fam.fused_qkv:
            gu, down = p + "mlp.gate_up_proj.weight", p + "mlp.down_proj.weight"
            gate, up = np.split(self.w.get(gu), 2, axis=0)  # Phi3MLP: gate first
            return dict(gate=(gu, gate), up=(gu, up), down=(down, self.w.get(down)))
        return self._named(p, ("gate", "up", "down"))

    def _named(self, p: str, keys: tuple[str, ...]) -> dict[str, tuple[str, np.ndarray]]:
        out = {}
        for key in keys:
            name = p + LLAMA_NAMES[key]
            out[key] = (name + ".weight", self.w.get(name + ".weight"))
            if self.w.has(name + ".bias"):
                out[key + "_b"] = (name + ".bias", self.w.get(name + ".bias"))
        return out

    # ---------------------------------------------------------------- blocks
    def attention(self, i: int, x: str, rope: tuple[str, str] | None, mask: str) -> str:
        g, s = self.g, self.spec
        h, kvh, d = s.num_heads, s.num_kv_heads, s.head_dim
        ws = self.attention_weights(i)
        name = f"layers.{i}.attn."

        def proj(key: str, x_in: str) -> str:
            return self.linear(x_in, name + key, *ws[key], ws.get(key + "_b"))

        def heads(t: str, n: int, key: str) -> str:
            t = g.op("Reshape", t, g.const([0, 0, n, d]))  # (B, S, n, D)
            if s.qk_norm and key != "v":
                norm = f"{self._layer(i)}{LLAMA_NAMES[key + '_norm']}.weight"
                t = self.rms_norm(t, norm, offset=self.fam.norm_offset)
            return g.op("Transpose", t, perm=[0, 2, 1, 3])  # (B, n, S, D)

        q, k, v = heads(proj("q", x), h, "q"), heads(proj("k", x), kvh, "k"), heads(proj("v", x), kvh, "v")
        if rope is not None:
            q, k = self.apply_rope(q, rope), self.apply_rope(k, rope)
        past_k, past_v = self.past[i]
        if self.v.static:
            # the host writes the chunk's new K/V into its buffers; attention sees buffer + chunk
            present_k, present_v = k, v
            k_all, v_all = g.op("Concat", past_k, k, axis=2), g.op("Concat", past_v, v, axis=2)
        else:
            k_all, v_all = g.op("Concat", past_k, k, axis=2), g.op("Concat", past_v, v, axis=2)
            present_k, present_v = k_all, v_all
        g.output(present_k, f"present.{i}.key", self.v.onnx_dtype, self.present_shape)
        g.output(present_v, f"present.{i}.value", self.v.onnx_dtype, self.present_shape)

        q_grouped = g.op("Reshape", q, g.const([0, kvh, -1, d]))  # (B, kvh, groups*S, D)
        scores = g.op("MatMul", q_grouped, g.op("Transpose", k_all, perm=[0, 1, 3, 2]))  # (B, kvh, groups*S, T)
        scores = g.op("Reshape", self.to32(scores), g.const([0, h, -1, 0]))  # (B, H, S, T)
        scores = g.op("Mul", scores, self.c32(self.attn_scale(i)))
        cap = s.extra.get("attn_logit_softcapping")
        if cap:
            scores = g.op("Mul", g.op("Tanh", g.op("Div", scores, self.c32(cap))), self.c32(cap))
        probs = g.op("Softmax", g.op("Add", scores, mask), axis=-1)
        probs = g.op("Reshape", self.from32(probs), g.const([0, kvh, -1, 0]))  # (B, kvh, groups*S, T)
        ctx = g.op("MatMul", probs, v_all)  # (B, kvh, groups*S, D)
        ctx = g.op("Transpose", g.op("Reshape", ctx, g.const([0, h, -1, d])), perm=[0, 2, 1, 3])  # (B, S, H, D)
        ctx = g.op("Reshape", ctx, g.const([0, 0, h * d]))
        return proj("o", ctx)

    def attn_scale(self, i: int) -> float:
        return self.fam.attn_scale(self.spec, self.config, i)

    def mlp(self, i: int, x: str) -> str:
        ws = self.mlp_weights(i)
        name = f"layers.{i}.mlp."

        def lin(key: str, x_in: str) -> str:
            return self.linear(x_in, name + key, *ws[key], ws.get(key + "_b"))

        if "gate" in ws:
            return lin("down", self.g.op("Mul", self.act(lin("gate", x)), lin("up", x)))
        return lin("down", self.act(lin("up", x)))

    def block(self, i: int, x: str, ropes: dict[str, tuple[str, str]] | None, masks: dict[str, str]) -> str:
        g = self.g
        p = self._layer(i)
        mask = masks[self.types[i]]
        rope = ropes[self.types[i]] if ropes is not None else None
        if self.fam.conv1d:
            x = g.op("Add", x, self.attention(i, self.norm(x, p + "ln_1"), rope, mask))
            return g.op("Add", x, self.mlp(i, self.norm(x, p + "ln_2")))
        a = self.attention(i, self.norm(x, p + LLAMA_NAMES["ln_attn"]), rope, mask)
        if self.fam.sandwich_norms:
            a = self.norm(a, p + LLAMA_NAMES["post_attn"])
            x = g.op("Add", x, a)
            m = self.norm(self.mlp(i, self.norm(x, p + LLAMA_NAMES["pre_ff"])), p + LLAMA_NAMES["post_ff"])
            return g.op("Add", x, m)
        x = g.op("Add", x, a)
        return g.op("Add", x, self.mlp(i, self.norm(x, p + LLAMA_NAMES["ln_mlp"])))

    def build(self) -> None:
        g, s = self.g, self.spec
        embed_name = f"{self.prefix}wte.weight" if self.fam.conv1d else f"{self.prefix}embed_tokens.weight"
        head = embed_name if s.tied_embeddings or not self.w.has("lm_head.weight") else "lm_head.weight"
        if not self.w.has(head):
            raise EdgekitError(f"checkpoint {self.w.ckpt.path} has no tensor {head}",
                               "the weights do not match config.json; restore the checkpoint")
        self.vocab = self.w.shape(head)[0]  # the head's rows: some checkpoints pad the vocabulary past config's
        self.make_inputs()
        embed = self.param(embed_name, embed_name, self.w.get(embed_name))
        x = g.op("Gather", embed, self.input_ids)  # (B, S, H)
        if self.fam.embed_scale:
            x = g.op("Mul", x, self.c(s.hidden_size ** 0.5))
        if self.fam.learned_positions:
            wpe = f"{self.prefix}wpe.weight"
            x = g.op("Add", x, g.op("Gather", self.param(wpe, wpe, self.w.get(wpe)), self.position_ids))
        masks = self.make_masks()
        rope = self.make_rope()
        for i in range(s.num_layers):
            x = self.block(i, x, rope, masks)
            if self.progress:
                self.progress(1)
        final = f"{self.prefix}ln_f" if self.fam.conv1d else f"{self.prefix}norm"
        x = self.norm(x, final)
        # LM head as Gemm(transB=1) on the (vocab, hidden) matrix: a tied head reuses the embedding table
        # (no transposed copy on disk or in RAM), and NNAPI maps it to its fully-connected layer
        head_w = embed if head == embed_name else self.param(head, head, self.w.get(head))
        flat = g.op("Reshape", x, g.const([-1, s.hidden_size]))
        logits2d = g.op("Gemm", flat, head_w, transB=1)
        if self.v.static:
            logits = g.op("Reshape", logits2d, g.const([1, self.v.tokens, self.vocab]))
        else:
            lead = g.op("Slice", g.op("Shape", self.input_ids), g.const([0]), g.const([2]))
            logits = g.op("Reshape", logits2d, g.op("Concat", lead, g.const([self.vocab]), axis=0))
        cap = s.extra.get("final_logit_softcapping")
        if cap:
            logits = g.op("Mul", g.op("Tanh", g.op("Div", logits, self.c(cap))), self.c(cap))
        g.output(logits, "logits", self.v.onnx_dtype, self.logits_shape)
