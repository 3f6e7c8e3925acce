"""AWQ: the fold is exact in fp32 on every architecture; the codes in GGUF and ONNX are AWQ's own; quality on
edgekit-tiny against RTN on the same grid; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_quantize import EVAL, _initializers, cli, ok

import quant
from edgekit.models.random import ARCHITECTURES
from helpers import assert_one_line_error
from quant import awq
from quant.grids import get as grid

CALIB = ["--samples", "4", "--seqlen", "128"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fold_is_exact_before_quantization(random_model, arch, tmp_path):
    from quant.imatrix import load_hf

    d = random_model(arch)
    cfg = json.loads((d / "config.json").read_text())
    tokens = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(3, 24))
    # alpha 1 (s = mean|x|, normalised): every group's scales far from 1, so every fold rule is exercised
    res = awq.run(d, tokens, grid("gguf:q4_0"), tmp_path / "scaled", clip=False, alphas=(1.0,), progress=False)
    with torch.inference_mode():
        ref = load_hf(d)(input_ids=torch.from_numpy(tokens)).logits
        scaled = load_hf(tmp_path / "scaled")
        out = scaled(input_ids=torch.from_numpy(tokens)).logits
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-5
    original = dict(load_hf(d).named_parameters())
    changed = [n for n, p in scaled.named_parameters() if not torch.equal(p, original[n])]
    norms = [n for n in changed if "norm" in n or "ln_" in n]
    assert len(norms) >= 2 * cfg.get("num_hidden_layers", cfg.get("n_layer")), changed  # both norms of every layer
    assert all(set(a.values()) == {1.0} for a in res.alphas)
    # v -> o folds under GQA too (these models have 4 query heads on 2 kv heads): o's columns share v's row scales
    assert all("o_in" in a for a in res.alphas)
    assert any(n.endswith(("o_proj.weight", "c_proj.weight")) and "mlp" not in n for n in changed), changed
    if arch in ("mixtral", "qwen2_moe"):  # the router and every expert's up -> down fold too
        assert any(n.endswith("gate.weight") and "experts" not in n for n in changed)
        assert any("experts.down_proj" in n for n in changed)
        assert sum(k.startswith("expert") for k in res.alphas[0]) >= 2


@pytest.mark.parametrize("target", ["gguf:q4_0", "nf4"])
def test_slabs_change_nothing(random_model, tmp_path, monkeypatch, target):
    """Slabs of a few rows (clip, the final round trip) and one tensor per shard give the same scaled checkpoint,
    clip and next layer's inputs included, as whole matrices; NF4's double quantization shares statistics across
    rows, so its round trip stays whole."""
    from edgekit.checkpoint import open_checkpoint

    d = random_model("llama")
    cfg = json.loads((d / "config.json").read_text())
    tokens = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(3, 24))
    g = grid("gguf:q4_0") if target == "gguf:q4_0" else grid("onnx:nf4", double_quant=True)
    awq.run(d, tokens, g, tmp_path / "whole", alphas=(0.0, 0.5), progress=False)
    monkeypatch.setattr(awq, "SLAB_BYTES", 4 * 64 * 5)  # 5 rows of 64 columns
    awq.run(d, tokens, g, tmp_path / "slabs", alphas=(0.0, 0.5), progress=False)
    whole, slabs = open_checkpoint(str(tmp_path / "whole")), open_checkpoint(str(tmp_path / "slabs"))
    assert len(set(json.loads((tmp_path / "slabs" / "model.safetensors.index.json").read_text())["weight_map"]
                   .values())) > len(set(json.loads((tmp_path / "whole" / "model.safetensors.index.json").read_text())
                                         ["weight_map"].values()))
    assert sorted(whole.names()) == sorted(slabs.names())
    for n in whole.names():
        assert np.array_equal(np.asarray(whole.array(n)), np.asarray(slabs.array(n))), n


def _scaled(directory: Path, name: str) -> np.ndarray:
    from edgekit.checkpoint import open_checkpoint

    return np.asarray(open_checkpoint(str(directory)).array(name), dtype=np.float32)


@pytest.fixture(scope="module")
def awq_q4_0(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("awq")
    out, scaled = d / "tiny-awq-q4_0.gguf", d / "scaled"
    r = ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "awq", "--type", "q4_0", *CALIB,
           "--save-scaled", str(scaled), "-o", str(out))
    return out, scaled, r


def test_gguf_codes_are_awqs_own(awq_q4_0, tiny_dir):
    out, scaled, r = awq_q4_0
    reader = gguf.GGUFReader(str(out))
    t = {x.name: x for x in reader.tensors}
    # named as llama.cpp's converter names the source (its directory), not after AWQ's work directory
    name = reader.fields["general.name"]
    assert bytes(name.parts[name.data[0]]).decode() == gguf.Metadata.load(None, tiny_dir, None, 0).name
    assert not [p.name for p in out.parent.iterdir() if ".awq-" in p.name]  # the work directory is gone
    for blk, hf_name, gguf_name in ((1, "self_attn.v_proj", "attn_v"), (2, "mlp.down_proj", "ffn_down"),
                                    (3, "mlp.up_proj", "ffn_up")):
        w = _scaled(scaled, f"model.layers.{blk}.{hf_name}.weight")
        stored = t[f"blk.{blk}.{gguf_name}.weight"]
        assert stored.tensor_type == gguf.GGMLQuantizationType.Q4_0
        assert np.asarray(stored.data).tobytes() == quant.quantize("rtn", w, "gguf:q4_0").arrays["data"].tobytes()
    # the scales really moved the weights, and the manifest says what AWQ did
    orig = _scaled(tiny_dir, "model.layers.2.mlp.down_proj.weight")
    assert not np.allclose(orig, _scaled(scaled, "model.layers.2.mlp.down_proj.weight"))
    m = json.loads(out.with_name(out.name + ".edgekit.json").read_text())["quant"]
    assert m["method"] == "awq" and m["grid"] == "gguf:q4_0" and m["calibration"]["samples"] == 4
    assert len(m["calibration"]["sha256"]) == 64 and m["calibration"]["source"] == "edgekit-default-calibration"
    assert len(m["alpha"]) == 4 and set(m["alpha"][0]) == {"attn_in", "o_in", "ffn_in", "down_in"}  # GQA: v -> o tied
    assert r["quant"]["alpha"] == m["alpha"]
    # one alpha per block of 32 input columns: hidden 256 -> 8, v's 2 x 32 rows -> 2, intermediate 768 -> 24
    assert [len(m["alpha_blocks"][0][k]) for k in ("attn_in", "o_in", "ffn_in", "down_in")] == [8, 2, 8, 24]


def test_per_block_alpha_fits_each_blocks_outliers():
    """Block 0's columns carry one outlier channel (large |x|), block 1's none: the one alpha of the group is a
    compromise: one alpha per block errs less on the layer output, with a larger alpha for block 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 64, generator=g)
    x[:, 5] *= 30.0
    w = torch.randn(48, 64, generator=g)
    lin = awq.Mat("l", "up", torch.nn.Parameter(w.clone()))
    x_mean, gram = x.abs().mean(0), x.t() @ x / x.shape[0]
    rt = awq.round_trip(grid("gguf:q4_0"))

    def err(s: torch.Tensor) -> float:
        d = w - rt(w * s) / s
        return float(((d @ gram) * d).sum())

    a, s, errors, _ = awq.search_scale(x_mean, gram, [lin], rt)
    a_b, s_b, errors_b, per = awq.search_scale(x_mean, gram, [lin], rt, per_block=32)
    assert errors_b == errors and a_b == a  # the group's alpha first, as before
    assert abs(err(s) - min(errors)) <= 1e-6 * min(errors)
    assert err(s_b) < err(s), (err(s_b), err(s), per)
    assert len(per) == 2 and per[0] > per[1], per


def test_clip_passes_offset_neighbouring_blocks(monkeypatch):
    """Correlated inputs: the Gauss-Seidel passes (each block's clip against the others' residuals) err less on the
    linear's output than the block-diagonal search alone, which errs less than no clip; slabs of rows change
    nothing (rows are independent)."""
    g = torch.Generator().manual_seed(0)
    n_in = 128
    x = torch.randn(2048, n_in, generator=g) @ (torch.randn(n_in, n_in, generator=g) / 6 + torch.eye(n_in))
    gram = x.t() @ x / x.shape[0]
    w = torch.randn(40, n_in, generator=g) * 0.02
    q4_0 = grid("gguf:q4_0")
    rt = awq.round_trip(q4_0)

    def err(clipped: torch.Tensor) -> float:
        d = rt(clipped) - w
        return float(((d @ gram) * d).sum())

    monkeypatch.setattr(awq, "CLIP_SWEEPS", 0)
    diagonal = awq.search_clip(w, gram, q4_0, rt)
    monkeypatch.setattr(awq, "CLIP_SWEEPS", 3)
    passes = awq.search_clip(w, gram, q4_0, rt)
    assert err(passes) < 0.9 * err(diagonal) < 0.9 * err(w), (err(passes), err(diagonal), err(w))
    assert bool((passes.abs() <= w.abs()).all())
    monkeypatch.setattr(awq, "SLAB_BYTES", 4 * n_in * 16 * 7)  # 7 rows a slab: 6 slabs, the last of 5 rows
    assert torch.equal(awq.search_clip(w, gram, q4_0, rt), passes)


@pytest.mark.parametrize("block", [32, pytest.param(128, marks=pytest.mark.slow)])
def test_onnx_int4_codes_are_awqs_own(tiny_dir, tmp_path, block):
    out, scaled = tmp_path / "o", tmp_path / "scaled"
    ok("quantize", str(tiny_dir), "--to", "onnx", "--method", "awq", "--type", "int4", "--group-size", str(block),
       *CALIB, "--save-scaled", str(scaled), "-o", str(out))
    inits, nodes = _initializers(out)
    quantized = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert len(quantized) == 4 * 7
    for blk, fmt_name, hf_name in ((1, "attn.v", "self_attn.v_proj"), (2, "mlp.down", "mlp.down_proj")):
        node = next(n for n in quantized if n.input[1] == f"layers.{blk}.{fmt_name}.qweight")
        ours = quant.quantize("rtn", _scaled(scaled, f"model.layers.{blk}.{hf_name}.weight"), "onnx:int4",
                              block_size=block, symmetric=True)
        np.testing.assert_array_equal(inits[node.input[1]].reshape(-1), ours.arrays["B"].reshape(-1))
        np.testing.assert_array_equal(inits[node.input[2]].reshape(-1), ours.arrays["scales"].reshape(-1))


def test_bad_inputs(tiny_dir, tmp_path):
    out = tmp_path / "x.gguf"
    cases = [
        (["--to", "onnx", "--method", "awq", "--then", "q4_k_m"], ["q4_k_m", "int4"]),
        (["--to", "gguf", "--method", "awq", "--then", "bogus"], ["--then bogus"]),
        (["--to", "gguf", "--method", "rtn", "--then", "q4_k_m"], ["--method awq"]),
        (["--to", "gguf", "--method", "awq", "--calib", str(tmp_path / "nope.txt")], ["not found"]),
        (["--to", "gguf", "--method", "awq", "--seqlen", "100000"], ["fewer than one sample"]),
        (["--to", "gguf", "--method", "awq", "--then", "q4_k_m", "--imatrix", str(tmp_path / "a.imatrix")],
         ["--imatrix"]),
    ]
    for args, needles in cases:
        assert_one_line_error(cli("quantize", str(tiny_dir), *args, "-o", str(out)), *needles)
        assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_architecture_without_mapping(random_model):
    from edgekit.archs import get as family
    from edgekit.errors import EdgekitError
    from edgekit.spec import from_config
    from quant.imatrix import load_hf

    d = random_model("llama")
    cfg = json.loads((d / "config.json").read_text())
    layer = load_hf(d).model.layers[0]
    del layer.mlp.gate_proj  # a layout no rule covers
    with pytest.raises(EdgekitError, match="no mapping"):
        awq.plan(layer, family("llama"), from_config(cfg), 0)


@pytest.mark.slow  # two evals; the README's quality table has the full figures
def test_awq_loses_less_than_rtn_on_the_same_grid(awq_q4_0, tiny_dir, tmp_path):
    rtn = tmp_path / "rtn.gguf"
    ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "rtn", "--type", "q4_0", "-o", str(rtn))
    e_awq = ok("eval", str(awq_q4_0[0]), "--reference", str(tiny_dir), *EVAL)
    e_rtn = ok("eval", str(rtn), "--reference", str(tiny_dir), *EVAL)
    assert e_awq["kld_mean"] < e_rtn["kld_mean"], (e_awq, e_rtn)



def test_kquant_search_grid_is_llamacpps_own(tiny_dir, tmp_path):
    """AWQ before --then q4_k_m searches on llama.cpp's own q4_K round trip: the bytes llama.cpp's quantizer writes
    for a tensor (q4_k_m without an importance matrix) equal quant.awq_kgrid's quantize of it."""
    from edgekit.checkpoint import open_checkpoint
    from quant.awq_kgrid import KQuant
    from quant.awq_run import target

    assert target("gguf", "q4_k_m", None, None, None)[1] == "ggml:Q4_K"
    out = tmp_path / "k.gguf"
    ok("quantize", str(tiny_dir), "--to", "gguf", "--method", "q4_k_m", "--no-imatrix", "-o", str(out))
    t = {x.name: x for x in gguf.GGUFReader(str(out)).tensors}
    ckpt = open_checkpoint(str(tiny_dir))
    for blk, hf_name, gguf_name in ((1, "mlp.gate_proj", "ffn_gate"), (2, "mlp.up_proj", "ffn_up")):
        stored = t[f"blk.{blk}.{gguf_name}.weight"]
        assert stored.tensor_type == gguf.GGMLQuantizationType.Q4_K
        qtype, ours = KQuant("Q4_K").quantize(np.asarray(ckpt.array(f"model.layers.{blk}.{hf_name}.weight"),
                                                         dtype=np.float32))
        assert qtype == gguf.GGMLQuantizationType.Q4_K
        assert np.asarray(stored.data).tobytes() == ours.tobytes()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_incremental_block_error_equals_a_fresh_forward(random_model, arch):
    """The per-block search scores a change of one block of input columns from the linears' recorded outputs
    (Block.incremental): its errors equal those of a forward with the changed weights in place."""
    from edgekit.archs import get as family
    from edgekit.spec import from_config
    from quant.imatrix import load_hf

    d = random_model(arch)
    cfg = json.loads((d / "config.json").read_text())
    model = load_hf(d)
    layer = (model.transformer.h if arch == "gpt2" else model.model.layers)[0]
    p = awq.plan(layer, family(cfg["model_type"]), from_config(cfg), 0)
    groups = [g for g in p.groups if isinstance(g.prev, awq.Norm)]
    blocks = [awq.Block(layer.get_submodule(g.quantized[0].name.split(".")[0]), 10_000) for g in groups]
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(2, 16)))
    with torch.inference_mode():
        model(input_ids=tokens, use_cache=False)  # as quant.layerwise runs it
    for block in blocks:  # the blocks' own runs below are not calls to record
        block.handle.remove()
    gen = torch.Generator().manual_seed(0)
    for g, block in zip(groups, blocks, strict=True):
        ws = [m.weight() + 0.01 * torch.randn(m.weight().shape, generator=gen) for m in g.quantized]
        ev = block.incremental(g.quantized, ws)
        assert ev is not None and ev.error == pytest.approx(block.error(g.quantized, ws), rel=1e-5)
        lo, hi = 8, 16
        deltas = [0.05 * torch.randn(w.shape[0], hi - lo, generator=gen) for w in ws]
        moved = [w.clone() for w in ws]
        for w, e in zip(moved, deltas, strict=True):
            w[:, lo:hi] += e
        fresh = block.error(g.quantized, moved)
        assert fresh != pytest.approx(ev.error, rel=1e-3)  # the change matters
        assert ev.trial(lo, hi, deltas) == pytest.approx(fresh, rel=1e-5)
        ev.accept(lo, hi, deltas, fresh)
        assert ev.trial(lo, hi, [torch.zeros_like(e) for e in deltas]) == pytest.approx(fresh, rel=1e-5)
        assert all("forward" not in m.module.__dict__ for m in g.quantized)  # the modules' own forward is back
        block.close()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_loss_runs_on_the_first_samples_of_a_batch(random_model, arch):
    """Block keeps only the samples its token cap needs from a batch (every batched argument cut alike): its error
    equals that of a Block that saw those samples alone."""
    from edgekit.archs import get as family
    from edgekit.spec import from_config
    from quant.imatrix import load_hf

    d = random_model(arch)
    cfg = json.loads((d / "config.json").read_text())
    model = load_hf(d)
    layer = (model.transformer.h if arch == "gpt2" else model.model.layers)[0]
    g = next(g for g in awq.plan(layer, family(cfg["model_type"]), from_config(cfg), 0).groups
             if isinstance(g.prev, awq.Norm))
    module = layer.get_submodule(g.quantized[0].name.split(".")[0])
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(3, 16)))
    cut, alone = awq.Block(module, 16), awq.Block(module, 10_000)
    with torch.inference_mode():
        alone.handle.remove()
        model(input_ids=tokens, use_cache=False)  # as quant.layerwise runs it
        cut.handle.remove()
        alone.handle = module.register_forward_pre_hook(alone._pre, with_kwargs=True)
        model(input_ids=tokens[:1], use_cache=False)
        alone.handle.remove()  # its own runs below are not calls to record
    assert cut.tokens == alone.tokens == 16 and len(cut.calls) == 1
    gen = torch.Generator().manual_seed(0)
    ws = [m.weight() + 0.01 * torch.randn(m.weight().shape, generator=gen) for m in g.quantized]
    assert cut.error(g.quantized, ws) == pytest.approx(alone.error(g.quantized, ws), rel=1e-5)
    cut.close()
    alone.close()
