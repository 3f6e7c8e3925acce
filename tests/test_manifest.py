"""Every artifact carries its manifest, and ``edgekit.manifest.load`` reads it back from any of them:
a GGUF file's ``edgekit.*`` keys and the directories' ``edgekit.json`` give the same object."""

from __future__ import annotations

import pytest

import converters
from edgekit import manifest
from edgekit.checkpoint import open_checkpoint
from edgekit.errors import EdgekitError
from edgekit.tokenizer import chat_template, describe


@pytest.fixture(scope="module")
def artifacts(random_model, tmp_path_factory):
    src = random_model("qwen2")
    base = tmp_path_factory.mktemp("manifests")
    out = {"gguf": base / "m.gguf", "onnx": base / "onnx", "coreml": base / "coreml"}
    for fmt, dest in out.items():
        kw = {"context": 16} if fmt == "coreml" else {}
        converters.get(fmt).convert(str(src), str(dest), progress=False, **kw)
    return src, out


def test_every_artifact_manifest_reads_back(artifacts):
    src, out = artifacts
    sha = open_checkpoint(src).sha256()
    loaded = {fmt: manifest.load(path) for fmt, path in out.items()}
    for fmt, m in loaded.items():
        assert set(manifest.FIELDS) <= m.keys(), fmt
        assert m["format"] == fmt and m["source"] == str(src) and m["source_sha256"] == sha
        assert m["tokenizer"] == describe(src) and m["chat_template"] == chat_template(src)
        assert m["architecture"] == "qwen2" and m["adapter"] is None and m["edgekit_version"]
    # the same fields, whatever the carrier
    common = ("edgekit_version", "source", "source_sha256", "tokenizer", "chat_template", "architecture")
    assert {k: loaded["gguf"][k] for k in common} == {k: loaded["onnx"][k] for k in common}
    assert loaded["gguf"]["context_length"] == 256 and loaded["gguf"]["quant"] == {"method": "none",
                                                                                     "outtype": "f16"}
    assert loaded["gguf"]["files"] == {}  # a file cannot hold its own hash
    assert "model.onnx" in loaded["onnx"]["files"]


def test_gguf_manifest_round_trips_types(tmp_path):
    import gguf

    m = manifest.build(format="gguf", source="s", source_sha256="0" * 64, quant={"method": "rtn", "bits": 4},
                       tokenizer={"kind": "BPE", "files": ["a", "b"]}, chat_template=None, context_length=4096,
                       files=[], root=None, ratio=0.5, flag=True)
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    manifest.write_gguf(w, m)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert manifest.load(path) == m


def test_load_refuses_what_is_not_an_artifact(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(EdgekitError, match="neither"):
        manifest.load(tmp_path / "x.txt")
    with pytest.raises(EdgekitError, match="no edgekit.json"):
        manifest.load(tmp_path)
