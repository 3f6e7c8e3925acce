"""The tensor seam (converters/seam.py): one point per converter where a quantizer plugs in.

A test-only transform rounds one chosen tensor to a coarse grid; the rounded values show up exactly
in the GGUF file (gguf's reader), the ONNX initializers and the Core ML program's weights, and every
other tensor is byte-identical to a plain conversion. QuantizedTensor codes: Q8_0 blocks from gguf's
own quantizer are stored as they are; MatMulNBits int4 and MatMulBnb4 NF4 codes built here run in
onnxruntime and match transformers with the dequantized weight put into its model.
"""

from __future__ import annotations

import numpy as np
import pytest

import converters
from converters.seam import Seam, TensorInfo
from quant.tensor import QuantizedTensor

TARGET = "model.layers.1.mlp.down_proj.weight"
STEP = 1 / 8  # multiples of 1/8 below 2048 are exact in fp16, so every storage type keeps them exactly


def coarse(a: np.ndarray) -> np.ndarray:
    return (np.round(a / STEP) * STEP).astype(np.float32)


def rounding(seen: list[TensorInfo] | None = None) -> Seam:
    def transform(info: TensorInfo):
        if seen is not None:
            seen.append(info)
        return coarse if info.hf_name == TARGET else None

    return Seam(transform=transform)


def _convert(fmt: str, src, out, **kw) -> dict:
    return converters.get(fmt).convert(str(src), str(out), progress=False, **kw)


def _gguf_tensors(path) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def test_rounding_shows_up_exactly_in_gguf(random_model, tmp_path):
    src = random_model("llama")
    seen: list[TensorInfo] = []
    _convert("gguf", src, tmp_path / "plain.gguf", outtype="f32")
    _convert("gguf", src, tmp_path / "seam.gguf", outtype="f32", seam=rounding(seen))
    plain, got = _gguf_tensors(tmp_path / "plain.gguf"), _gguf_tensors(tmp_path / "seam.gguf")
    assert plain.keys() == got.keys()
    target = "blk.1.ffn_down.weight"
    assert not np.array_equal(plain[target], coarse(plain[target]))  # the rounding changes something
    np.testing.assert_array_equal(got[target], coarse(plain[target]))
    for name in plain.keys() - {target}:
        np.testing.assert_array_equal(got[name], plain[name], err_msg=name)
    # every tensor passed the seam once, with its role and layer from the architecture
    infos = {i.name: i for i in seen}
    assert infos.keys() == plain.keys()
    assert (infos[target].role, infos[target].layer, infos[target].linear) == ("down", 1, True)
    assert infos["blk.0.attn_norm.weight"].role == "attn_norm" and not infos["blk.0.attn_norm.weight"].linear
    assert infos["token_embd.weight"].role == "embed" and infos["output.weight"].role == "head"


def test_rounding_shows_up_exactly_in_onnx(random_model, tmp_path):
    import onnx
    from onnx import numpy_helper

    src = random_model("llama")
    _convert("onnx", src, tmp_path / "plain")
    _convert("onnx", src, tmp_path / "seam", seam=rounding())

    def initializers(d):
        model = onnx.load(str(d / "model.onnx"), load_external_data=True)
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    plain, got = initializers(tmp_path / "plain"), initializers(tmp_path / "seam")
    target = "layers.1.mlp.down.weight"  # stored (in, out) for MatMul
    assert plain.keys() == got.keys() and target in plain
    np.testing.assert_array_equal(got[target], coarse(plain[target]))
    assert not np.array_equal(got[target], plain[target])
    for name in plain.keys() - {target}:
        np.testing.assert_array_equal(got[name], plain[name], err_msg=name)


def test_rounding_shows_up_exactly_in_coreml(random_model, tmp_path):
    from coremltools import libmilstoragepython

    from converters.coreml import mlprogram

    src = random_model("llama")
    out = tmp_path / "seam"
    _convert("coreml", src, out, seam=rounding(), context=16)  # fp16 weights
    ct = mlprogram.coremltools()
    spec = ct.models.MLModel(str(out / "model.mlpackage"), skip_model_load=True).get_spec()
    blobs = libmilstoragepython._BlobStorageReader(
        str(out / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"))
    consts = {}
    for op in spec.mlProgram.functions["main"].block_specializations[next(iter(
            spec.mlProgram.functions["main"].block_specializations))].operations:
        if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue":
            consts[op.outputs[0].name] = (op.attributes["val"], op.outputs[0].type.tensorType)
    from safetensors.numpy import load_file

    weights = load_file(str(src / "model.safetensors"))

    def stored(hf_name: str) -> np.ndarray:
        key = next(k for k in consts if hf_name.replace(".", "__") in k)
        val, ttype = consts[key]
        data = np.array(blobs.read_fp16_data(val.blobFileValue.offset)).view(np.float16)
        return data.reshape([d.constant.size for d in ttype.dimensions])

    want = coarse(weights[TARGET])
    assert not np.array_equal(want, weights[TARGET])
    np.testing.assert_array_equal(stored(TARGET), want.astype(np.float16))
    for other in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        np.testing.assert_array_equal(stored(other), weights[other].astype(np.float16))


def test_q8_0_codes_are_stored_as_given_in_gguf(random_model, tmp_path):
    import gguf

    src = random_model("llama")
    _convert("gguf", src, tmp_path / "plain.gguf", outtype="f32")
    plain = _gguf_tensors(tmp_path / "plain.gguf")
    target = "blk.1.ffn_down.weight"
    handed: dict[str, np.ndarray] = {}

    def storage(info: TensorInfo, default: str) -> str:
        return "Q8_0" if info.name == target else default

    def transform(info: TensorInfo):
        if info.name != target:
            return None

        def to_q8_0(a: np.ndarray) -> QuantizedTensor:
            handed["data"] = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            return QuantizedTensor("gguf:q8_0", a.shape, {"data": handed["data"]})

        return to_q8_0

    result = _convert("gguf", src, tmp_path / "q.gguf", outtype="f32", seam=Seam(storage, transform))
    assert result["types"] == {"F32": len(plain) - 1, "Q8_0": 1}
    reader = gguf.GGUFReader(str(tmp_path / "q.gguf"))
    t = next(t for t in reader.tensors if t.name == target)
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    np.testing.assert_array_equal(np.array(t.data).reshape(-1), handed["data"].reshape(-1))
    deq = gguf.quants.dequantize(np.array(t.data), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_allclose(deq, plain[target], atol=np.abs(plain[target]).max() / 127)
    # codes of the wrong type for the planned storage are refused before the file appears
    with pytest.raises(Exception, match="storage type"):
        _convert("gguf", src, tmp_path / "bad.gguf", outtype="f32", seam=Seam(None, transform))
    assert not (tmp_path / "bad.gguf").exists()


def _int4_codes(w: np.ndarray, block: int) -> tuple[QuantizedTensor, np.ndarray]:
    """MatMulNBits' layout, built here by hand: codes u4 with zero point 8, two per byte (low nibble
    first), B (N, K/block, block/2), one scale per block; returns the tensor and its dequantized weight."""
    n, k = w.shape
    blocks = w.reshape(n, k // block, block)
    scales = (np.abs(blocks).max(axis=-1) / 7).astype(np.float32)
    codes = np.clip(np.round(blocks / scales[..., None]) + 8, 0, 15).astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    deq = ((codes.astype(np.float32) - 8) * scales[..., None]).reshape(n, k)
    q = QuantizedTensor("onnx:int4", (n, k), {"B": packed, "scales": scales.reshape(-1)},
                        {"bits": 4, "block_size": block})
    return q, deq


# bitsandbytes' NF4 code book (QLoRA, Dettmers et al. 2023), as onnxruntime's MatMulBnb4 decodes it
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)


def _nf4_codes(w: np.ndarray, block: int) -> tuple[QuantizedTensor, np.ndarray]:
    """MatMulBnb4's layout, built here by hand: the (N, K) weight flattened, one absmax per block of the flat
    array, the nearest NF4 entry per element, two codes per byte (first in the high nibble)."""
    n, k = w.shape
    blocks = w.reshape(-1, block)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    codes = np.abs(blocks[..., None] / absmax[:, None, None] - NF4).argmin(-1).astype(np.uint8).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)
    deq = (NF4[codes].reshape(-1, block) * absmax[:, None]).reshape(n, k)
    return QuantizedTensor("onnx:nf4", (n, k), {"B": packed, "absmax": absmax}, {"block_size": block}), deq


@pytest.mark.parametrize("grid", ["onnx:int4", "onnx:nf4"])
def test_codes_run_in_onnxruntime(grid, random_model, tmp_path):
    """int4 codes as com.microsoft MatMulNBits, NF4 codes as MatMulBnb4: onnxruntime's logits equal
    transformers' with the dequantized weight put into the model."""
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    src = random_model("llama")
    deq: dict[str, np.ndarray] = {}

    def transform(info: TensorInfo):
        if info.hf_name != TARGET:
            return None

        def to_codes(a: np.ndarray) -> QuantizedTensor:
            q, deq["w"] = (_int4_codes if grid == "onnx:int4" else _nf4_codes)(a, 32)
            return q

        return to_codes

    out = tmp_path / "codes"
    _convert("onnx", src, out, seam=Seam(transform=transform))
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    op = "MatMulNBits" if grid == "onnx:int4" else "MatMulBnb4"
    assert [n.domain for n in graph.node if n.op_type in ("MatMulNBits", "MatMulBnb4")] == ["com.microsoft"]
    assert [n.op_type for n in graph.node if n.domain == "com.microsoft"] == [op]
    assert "layers.1.mlp.down.weight" not in {t.name for t in graph.initializer}

    ids = np.random.RandomState(0).randint(3, 500, size=12)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.copy_(torch.from_numpy(deq["w"]))
        want = model(torch.tensor(ids)[None]).logits[0].numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
    cfg = model.config
    kv, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    feeds = {"input_ids": ids[None].astype(np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    for i in range(cfg.num_hidden_layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, kv, 0, hd), np.float32)
    got = sess.run(["logits"], feeds)[0][0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    # and the quantized weight did change the output (the codes are not a no-op)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()(torch.tensor(ids)[None])
    assert np.abs(plain.logits[0].numpy() - want).max() / np.abs(want).max() > 1e-3
