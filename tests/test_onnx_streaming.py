"""The ONNX external data, streamed (tensors read once, cast and transposed in chunks on every core,
hashed inline), holds exactly what the whole-tensor writer held: checked initializer by initializer
against a reference built through onnx.numpy_helper the way the converter wrote it before (every
weight widened to float32 by the reader, then cast whole), and the graphs must be the same protos."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import load_file, save_file

from helpers import run_cli


class ReferenceWeights:
    """The previous writer's values: float16 widened to float32 first, then the whole tensor cast."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, array: np.ndarray, dtype=None) -> onnx.TensorProto:
        a = np.asarray(array)
        if a.dtype == np.float16:
            a = a.astype(np.float32)
        a = np.ascontiguousarray(a.astype(dtype or a.dtype))
        self.arrays.setdefault(name, a)
        return numpy_helper.from_array(a, name)


def _stored_as(src: Path, out: Path, dtype: str) -> Path:
    """``src`` with its weights re-saved as ``dtype`` (float16 / bfloat16 bits)."""
    shutil.copytree(src, out)
    tensors = load_file(str(src / "model.safetensors"))
    if dtype == "float16":
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:  # bfloat16: safetensors' numpy API has no bf16 type, so the file goes through torch
        import torch
        from safetensors.torch import save_file as save_torch

        save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()},
                   str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = dtype
    (out / "config.json").write_text(json.dumps(config))
    return out


def _reference(model: Path, dtype: str) -> tuple[dict[str, np.ndarray], onnx.GraphProto]:
    from converters.onnx.decoder import DecoderBuilder, Variant, Weights
    from converters.onnx.graph import Graph
    from edgekit.checkpoint import open_checkpoint
    from edgekit.rope import tables
    from edgekit.spec import from_config

    ckpt = open_checkpoint(str(model))
    spec = from_config(ckpt.config)
    ref = ReferenceWeights()
    graph = Graph(ref)  # type: ignore[arg-type]
    rope = tables(ckpt.config, spec, spec.context_length) if spec.rope is not None else None
    DecoderBuilder(graph, spec, ckpt.config, Weights(ckpt), Variant(np.dtype(dtype)), rope).build()
    return ref.arrays, graph


@pytest.mark.parametrize(("arch", "stored", "dtype"), [
    ("llama", "float16", "float32"), ("llama", "float16", "float16"), ("gpt2", "float32", "float16"),
    ("gemma3_text", "bfloat16", "float16")])
def test_streamed_initializers_are_bit_identical(arch, stored, dtype, random_model, tmp_path):
    src = random_model(arch)
    model = src if stored == "float32" else _stored_as(src, tmp_path / "src", stored)
    out = tmp_path / "onnx"
    proc = run_cli("convert", str(model), "--to", "onnx", "--dtype", "fp16" if dtype == "float16" else "fp32",
                   "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    want, graph = _reference(model, dtype)
    stored_outside = {t.name for t in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.initializer
                      if t.data_location == onnx.TensorProto.EXTERNAL}
    got_model = onnx.load(str(out / "model.onnx"), load_external_data=True)
    external = {t.name: t for t in got_model.graph.initializer if t.name in stored_outside}
    assert set(external) == set(want)
    for name, t in external.items():
        got = numpy_helper.to_array(t)
        assert got.dtype == want[name].dtype and got.shape == want[name].shape, name
        assert got.tobytes() == want[name].tobytes(), f"{name} differs from the reference"
    # the same graph around them: same nodes, same inline constants
    assert [n.SerializeToString() for n in got_model.graph.node] == [n.SerializeToString() for n in graph.nodes]
    inline = [t.SerializeToString() for t in got_model.graph.initializer if t.name not in external]
    assert inline == [t.SerializeToString() for t in graph.initializers if t.name not in want]
    # the manifest's hash of the data file (computed inline, as it was written) is the file's
    from edgekit.manifest import file_sha256

    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["files"]["model.onnx.data"]["sha256"] == file_sha256(out / "model.onnx.data")


@pytest.mark.parametrize("stored", ["float16", "float32"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunk_casts_of_transposed_weights_are_numpys(stored, dtype):
    from converters.onnx.graph import _cast

    rng = np.random.default_rng(0)
    for shape, rows in (((1000, 600), 300), ((300, 520), 520), ((64, 9), 9)):
        w = rng.standard_normal(shape).astype(stored) * 300  # past fp16's range too: inf where it overflows
        for chunk in (w.T[:rows], w.T[rows // 3:rows], w):
            got = _cast(chunk, np.dtype(dtype))
            assert got.flags.c_contiguous and got.dtype == dtype
            assert got.tobytes() == np.ascontiguousarray(chunk, dtype=dtype).tobytes()


def test_tokenizer_check_in_a_child_process_gives_the_same_record(tiny_dir, tmp_path):
    from edgekit import tokenizer_check

    records = []
    for child in (True, False):
        out = tmp_path / f"child-{child}"
        out.mkdir()
        shutil.copy(tiny_dir / "tokenizer.json", out)
        records.append(tokenizer_check.start_hf_directory(tiny_dir, out, child=child).result())
    assert records[0] == records[1] and records[0]["ok"] is True and records[0]["tokens"] > 0
