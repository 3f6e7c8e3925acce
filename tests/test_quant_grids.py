"""quant grids against the reference implementations, on real weights of edgekit-tiny and SmolLM2:
GGUF legacy blocks vs gguf.quants, NF4 vs bitsandbytes, MatMulNBits vs onnxruntime's quantizer, Core ML
per-block linear vs coremltools; and each grid's dequantization against the stored arrays."""

from __future__ import annotations

import logging

import gguf
import numpy as np
import pytest
from safetensors import safe_open

import quant
from quant import grids

TINY = ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"]
SMOL = ["model.layers.0.self_attn.k_proj.weight", "model.layers.29.mlp.up_proj.weight"]


@pytest.fixture(scope="module")
def weights(tiny_dir, smollm2_dir) -> dict[str, np.ndarray]:
    out = {}
    for directory, names in ((tiny_dir, TINY), (smollm2_dir, SMOL)):
        with safe_open(str(directory / "model.safetensors"), "np") as f:
            for name in names:
                out[f"{directory.name}:{name}"] = f.get_tensor(name).astype(np.float32)
    return out


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_gguf_blocks_equal_gguf_quants(weights, qtype):
    ggml = gguf.GGMLQuantizationType[qtype.upper()]
    for name, w in weights.items():
        qt = quant.quantize("rtn", w, f"gguf:{qtype}")
        ref = gguf.quants.quantize(w, ggml)
        assert qt.arrays["data"].tobytes() == ref.tobytes(), name
        np.testing.assert_array_equal(grids.dequantize(qt), gguf.quants.dequantize(ref, ggml))
        assert qt.attrs["ggml_type"] == ggml.name


@pytest.mark.parametrize("block", [32, 64])
def test_nf4_equals_bitsandbytes(weights, block):
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes.functional")
    for name, w in weights.items():
        packed, state = bnb.quantize_4bit(torch.from_numpy(w), blocksize=block, quant_type="nf4",
                                          compress_statistics=False)
        qt = quant.quantize("nf4", w, "onnx:nf4", block_size=block)
        np.testing.assert_array_equal(qt.arrays["B"], packed.numpy().reshape(-1), err_msg=name)
        np.testing.assert_array_equal(qt.arrays["absmax"], state.absmax.numpy(), err_msg=name)
        np.testing.assert_array_equal(grids.dequantize(qt), bnb.dequantize_4bit(packed, state).numpy())
        # the same codes and absmax as a Core ML palette: the table is codebook x absmax in fp16
        pal = quant.quantize("nf4", w, "coreml:palette4", block_size=block)
        np.testing.assert_array_equal(pal.arrays["indices"].reshape(-1)[0::2], packed.numpy().reshape(-1) >> 4)
        ref = bnb.dequantize_4bit(packed, state).numpy()
        np.testing.assert_allclose(grids.dequantize(pal), ref, rtol=2 ** -10, atol=0)


def test_nf4_double_quant_matches_bitsandbytes(weights):
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes.functional")
    w = weights[f"SmolLM2-135M-Instruct:{SMOL[1]}"]
    packed, state = bnb.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4", compress_statistics=True)
    qt = quant.quantize("nf4", w, "onnx:nf4", block_size=64, double_quant=True)
    np.testing.assert_array_equal(qt.arrays["B"], packed.numpy().reshape(-1))
    ref_absmax = (bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset).numpy()
    true_absmax = quant.quantize("nf4", w, "onnx:nf4", block_size=64).arrays["absmax"]
    # bitsandbytes' CPU blockwise 8-bit quantizer does not always pick the nearest of two dynamic-map entries
    # (measured: 31 of 13824 absmax, each within 2e-5 of the midpoint); ours does, so where the two differ
    # (< 0.5% of blocks) ours is the closer one to the true absmax
    same = np.isclose(qt.arrays["absmax"], ref_absmax, rtol=2 ** -22, atol=0)
    assert same.mean() > 0.995
    assert np.all(np.abs(qt.arrays["absmax"] - true_absmax)[~same] <= np.abs(ref_absmax - true_absmax)[~same])
    assert not np.array_equal(qt.arrays["absmax"], quant.quantize("nf4", w, "onnx:nf4").arrays["absmax"])


def _matmul_model(w: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bits,block,sym", [(4, 32, True), (4, 32, False), (4, 64, True), (4, 16, False),
                                            (8, 64, True), (8, 16, False)])
def test_matmulnbits_equals_onnxruntime_quantizer(weights, bits, block, sym):
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    for name, w in weights.items():
        q = MatMulNBitsQuantizer(_matmul_model(w), algo_config=DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=sym, bits=bits))
        q.process()
        inits = {i.name: numpy_helper.to_array(i) for i in q.model.model.graph.initializer}
        node = next(n for n in q.model.model.graph.node if n.op_type == "MatMulNBits")
        qt = quant.quantize("rtn", w, f"onnx:int{bits}", block_size=block, symmetric=sym)
        np.testing.assert_array_equal(qt.arrays["B"], inits[node.input[1]], err_msg=name)
        np.testing.assert_array_equal(qt.arrays["scales"], inits[node.input[2]].reshape(qt.arrays["scales"].shape))
        if sym:
            assert "zero_points" not in qt.arrays and (len(node.input) < 4 or not node.input[3])
        else:
            np.testing.assert_array_equal(qt.arrays["zero_points"],
                                          inits[node.input[3]].reshape(qt.arrays["zero_points"].shape))
        attrs = {a.name: a.i for a in node.attribute}
        assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (qt.attrs["K"], qt.attrs["N"], bits,
                                                                                 block)


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, True)])
def test_coreml_linear_equals_coremltools(weights, bits, sym):
    from converters.coreml.mlprogram import coremltools

    ct = coremltools()
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil import Builder as mb

    w = next(iter(weights.values()))
    w16 = w.astype(np.float16).astype(np.float32)  # the program holds fp16 weights

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, w.shape[1]))], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.linear(x=x, weight=w16, name="y")

    model = ct.convert(prog, minimum_deployment_target=ct.target.iOS18, convert_to="mlprogram",
                       skip_model_load=True)
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric" if sym else "linear", dtype=f"int{bits}", granularity="per_block", block_size=32,
        weight_threshold=0))
    op = next(op for f in cto.linear_quantize_weights(model, config)._mil_program.functions.values()
              for op in f.operations if op.op_type == "constexpr_blockwise_shift_scale")
    qt = quant.quantize("rtn", w16, f"coreml:int{bits}", block_size=32, symmetric=sym)
    np.testing.assert_array_equal(qt.arrays["data"], op.data.val.astype(np.int8))
    np.testing.assert_array_equal(qt.arrays["scale"], op.scale.val)
    if sym:
        assert op.offset is None and "offset" not in qt.arrays
    else:
        np.testing.assert_array_equal(qt.arrays["offset"], op.offset.val.astype(np.int8))


@pytest.mark.parametrize("grid,params", [("gguf:q4_0", {}), ("gguf:q5_1", {}), ("onnx:int4", {"symmetric": False}),
                                         ("onnx:int8", {"block_size": 128}), ("onnx:nf4", {"double_quant": True}),
                                         ("coreml:int4", {}), ("coreml:int8", {"symmetric": False}),
                                         ("coreml:palette4", {})])
def test_dequantize_is_what_the_arrays_say(grid, params):
    """Dequantization is exact arithmetic on the stored arrays: reconstructing each grid's formula by hand
    from the arrays (independently of the grid code) gives the same floats, and error stays within a step."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((48, 256)) * 0.05).astype(np.float32)
    w[3, :64] = 0.0  # an all-zero block
    method = "nf4" if grid in ("onnx:nf4", "coreml:palette4") else "rtn"
    qt = quant.quantize(method, w, grid, **params)
    deq = grids.dequantize(qt)
    assert deq.shape == w.shape and deq.dtype == np.float32
    assert np.all(deq[3, :64] == 0)
    if grid.startswith("gguf:"):
        ref = gguf.quants.dequantize(qt.arrays["data"], gguf.GGMLQuantizationType[qt.attrs["ggml_type"]])
    elif grid == "onnx:int8":
        ref = (qt.arrays["B"].reshape(48, 256).astype(np.float32) - 128) * np.repeat(qt.arrays["scales"], 128, axis=1)
    elif grid == "onnx:int4":
        b = qt.arrays["B"].reshape(48, -1)
        codes = np.stack([b & 15, b >> 4], axis=-1).reshape(48, 256).astype(np.float32)
        z = qt.arrays["zero_points"]
        zp = np.stack([z & 15, z >> 4], axis=-1).reshape(48, -1)[:, :8].astype(np.float32)
        ref = (codes - np.repeat(zp, 32, axis=1)) * np.repeat(qt.arrays["scales"], 32, axis=1)
    elif grid == "onnx:nf4":
        b = qt.arrays["B"]
        codes = np.stack([b >> 4, b & 15], axis=-1).reshape(-1)
        ref = (quant.codebooks.NF4[codes].reshape(-1, 64) * qt.arrays["absmax"][:, None]).reshape(48, 256)
    elif grid == "coreml:palette4":
        lut = qt.arrays["lut"][..., 0].astype(np.float32)
        idx = qt.arrays["indices"].astype(np.int64)
        ref = np.array([[lut[r, c // 64, idx[r, c]] for c in range(256)] for r in range(48)], dtype=np.float32)
    else:
        off = np.repeat(qt.arrays["offset"].astype(np.float32), 32, axis=1) if "offset" in qt.arrays else 0
        scale = np.repeat(qt.arrays["scale"].astype(np.float32), 32, axis=1)
        ref = (qt.arrays["data"].astype(np.float32) - off) * scale
    np.testing.assert_array_equal(deq, ref)
    assert np.abs(deq - w).max() < 0.25 * np.abs(w).max()


def test_grid_errors_name_the_fix():
    from edgekit.errors import EdgekitError

    w = np.zeros((8, 96), np.float32)
    with pytest.raises(EdgekitError, match="does not divide"):
        quant.quantize("rtn", w, "onnx:int4", block_size=64)
    with pytest.raises(EdgekitError, match="iq4_nl"):
        quant.quantize("nf4", w, "gguf:q4_0")
    with pytest.raises(EdgekitError, match="block size 48"):
        quant.quantize("rtn", w, "onnx:int4", block_size=48)
