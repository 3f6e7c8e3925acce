"""Corrupt weights never give silent output: manifests checked on load, `edgekit verify`, non-finite weights
refused at convert time, non-finite logits stopping generation. All through the CLI."""

import json
import os
import shutil

import numpy as np
import pytest

from helpers import assert_one_line_error, converted, run_cli


def _garble(path, at_fraction=0.5, n=200_000):
    """Overwrite ``n`` bytes in the middle of ``path`` with random bytes (same size: only hashes see it)."""
    size = path.stat().st_size
    rng = np.random.default_rng(0)
    with path.open("r+b") as fh:
        fh.seek(int(size * at_fraction))
        fh.write(rng.integers(0, 256, min(n, size // 4), dtype=np.uint8).tobytes())
    assert path.stat().st_size == size


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, tiny_dir):
    return converted(tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf", "--to", "gguf")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, tiny_dir):
    return converted(tiny_dir, tmp_path_factory.mktemp("onnx") / "tiny-onnx", "--to", "onnx")


def test_verify_intact_gguf_and_run_verify(gguf_file):
    proc = run_cli("verify", str(gguf_file))
    assert proc.returncode == 0 and proc.stdout.startswith("ok:"), proc.stderr
    info = json.loads(run_cli("verify", str(gguf_file), "--json").stdout)
    assert info["ok"] and info["checked"] == "blake3" and info["format"] == "gguf"
    run = run_cli("run", str(gguf_file), "-p", "It is a truth", "-n", "4", "--verify", "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["eval_count"] >= 1, run.stderr


def test_garbage_in_gguf_tensor_data(gguf_file, tmp_path):
    bad = tmp_path / "bad.gguf"
    shutil.copy(gguf_file, bad)
    _garble(bad)
    proc = run_cli("run", str(bad), "-p", "It is a truth", "-n", "20")
    assert_one_line_error(proc, "non-finite logits", "edgekit verify")
    assert proc.stdout.strip() == ""
    sampled = run_cli("run", str(bad), "-p", "It is a truth", "-n", "20", "--temperature", "0.7")
    assert_one_line_error(sampled, "non-finite logits")
    assert_one_line_error(run_cli("verify", str(bad)), "damaged", "blake3")
    assert_one_line_error(run_cli("run", str(bad), "-p", "x", "--verify"), "damaged")


def test_data_digest_is_blake3_and_older_sha256_files_still_verify(gguf_file, tmp_path):
    import hashlib

    import blake3

    from edgekit.integrity import gguf_layout

    data = gguf_file.read_bytes()
    layout = gguf_layout(gguf_file)
    assert layout.strings["edgekit.data_blake3"] == blake3.blake3(data[layout.kv_end:]).hexdigest()
    assert "edgekit.data_sha256" not in layout.strings
    # what edgekit wrote before the BLAKE3 record: the same file with the sha256 key and value (equal lengths)
    old = tmp_path / "old.gguf"
    recorded = layout.strings["edgekit.data_blake3"].encode()
    sha256 = hashlib.sha256(data[layout.kv_end:]).hexdigest().encode()
    head = data[:layout.kv_end].replace(b"edgekit.data_blake3", b"edgekit.data_sha256")
    old.write_bytes(head.replace(recorded, sha256) + data[layout.kv_end:])
    info = json.loads(run_cli("verify", str(old), "--json").stdout)
    assert info["ok"] and info["checked"] == "sha256", info
    _garble(old)
    assert_one_line_error(run_cli("verify", str(old)), "damaged", "sha256")


def test_truncated_gguf_fails_the_cheap_check(gguf_file, tmp_path):
    bad = tmp_path / "short.gguf"
    bad.write_bytes(gguf_file.read_bytes()[:-5000])
    assert_one_line_error(run_cli("run", str(bad), "-p", "x"), "truncated")
    assert_one_line_error(run_cli("verify", str(bad)), "truncated")


def test_foreign_gguf_without_hash_cannot_be_verified(gguf_file, tmp_path):
    import gguf

    # the same tensors and metadata minus edgekit's hash key, as another tool would write them
    src = gguf.GGUFReader(gguf_file)
    out = tmp_path / "foreign.gguf"
    w = gguf.GGUFWriter(out, "llama")
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "edgekit.data_blake3"):
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(name, value, vtype)
    for t in src.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=tuple(int(d) for d in reversed(t.shape)),
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_one_line_error(run_cli("verify", str(out)), "records no edgekit.data_blake3 or edgekit.data_sha256")
    ok = run_cli("run", str(out), "-p", "It is a truth", "-n", "3")
    assert ok.returncode == 0, ok.stderr


def test_verify_intact_and_tampered_onnx(onnx_dir, tmp_path):
    proc = run_cli("verify", str(onnx_dir), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["checked"] == "sha256", proc.stderr
    bad = tmp_path / "bad-onnx"
    shutil.copytree(onnx_dir, bad)
    _garble(bad / "model.onnx.data")
    proc = run_cli("run", str(bad), "-p", "It is a truth", "-n", "20")
    assert_one_line_error(proc, "non-finite logits")  # never 20 x token 0 with exit 0
    assert proc.stdout.strip() == ""
    assert_one_line_error(run_cli("verify", str(bad)), "model.onnx.data", "sha256")
    as_json = run_cli("verify", str(bad), "--json")
    assert as_json.returncode == 2 and "damaged" in json.loads(as_json.stdout)["error"]


def test_onnx_size_and_header_checked_on_every_load(onnx_dir, tmp_path):
    short = tmp_path / "short"
    shutil.copytree(onnx_dir, short)
    with (short / "model.onnx.data").open("r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 4096)
    assert_one_line_error(run_cli("run", str(short), "-p", "x"), "model.onnx.data", "bytes")
    header = tmp_path / "header"
    shutil.copytree(onnx_dir, header)
    data = bytearray((header / "model.onnx").read_bytes())
    data[0] = 0x42
    (header / "model.onnx").write_bytes(bytes(data))
    assert_one_line_error(run_cli("run", str(header), "-p", "x"), "does not start like an ONNX model")
    missing = tmp_path / "missing"
    shutil.copytree(onnx_dir, missing)
    (missing / "tokenizer.json").unlink()
    assert_one_line_error(run_cli("run", str(missing), "-p", "x"), "tokenizer.json is missing")


def _with_nan(src, dst, dtype=None):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    name = sorted(n for n in tensors if "layers.1.mlp" in n)[0]
    t = tensors[name].astype(dtype or tensors[name].dtype)
    t.flat[7] = np.nan
    tensors[name] = t
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_nan_weights_refused_at_convert(fmt, random_model, tmp_path):
    bad = tmp_path / "nan"
    name = _with_nan(random_model("llama"), bad)
    out = tmp_path / ("out.gguf" if fmt == "gguf" else "out")
    proc = run_cli("convert", str(bad), "--to", fmt, "-o", str(out))
    assert_one_line_error(proc, name, "NaN or infinite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


def test_inf_weights_refused_in_float16_gguf_copy_path(random_model, tmp_path):
    """float16 stored, F16 output: the tensor bytes go file to file by the kernel; still refused."""
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "inf16"
    shutil.copytree(random_model("llama"), bad)
    tensors = {k: v.astype(np.float16) for k, v in load_file(bad / "model.safetensors").items()}
    tensors["model.norm.weight"][3] = np.inf
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    proc = run_cli("convert", str(bad), "--to", "gguf", "-o", str(tmp_path / "o.gguf"), "--outtype", "f16")
    assert_one_line_error(proc, "model.norm.weight", "NaN or infinite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf16"]


def test_sampler_refuses_non_finite_logits():
    from edgekit.errors import EdgekitError
    from runtimes.sampling import Sampler, SamplingParams

    ok = np.array([0.0, 1.0, -np.inf], dtype=np.float32)
    assert Sampler()(ok) == 1
    for bad in ([np.nan, 1.0], [1.0, np.nan], [np.inf, 0.0], [0.0, np.inf, np.nan], [-np.inf, -np.inf]):
        for params in (SamplingParams(), SamplingParams(temperature=0.7, seed=1)):
            with pytest.raises(EdgekitError, match="non-finite"):
                Sampler(params)(np.array(bad, dtype=np.float32))


def test_scan_checks_bf16(tmp_path):
    """BF16 has no numpy type: its NaN/inf are found from the exponent bits."""
    import torch
    from safetensors.torch import save_file

    from edgekit.checkpoint import _float_ranges, _SafetensorsFiles, _scan
    from edgekit.errors import EdgekitError

    t = torch.ones(4, 8, dtype=torch.bfloat16)
    save_file({"a": t, "b": t.clone()}, tmp_path / "ok.safetensors")
    store = _SafetensorsFiles([tmp_path / "ok.safetensors"])
    _scan(tmp_path / "ok.safetensors", _float_ranges(store.index, store.offsets, tmp_path / "ok.safetensors"), None)
    t[2, 5] = float("-inf")
    save_file({"a": torch.ones(4, 8, dtype=torch.bfloat16), "b": t}, tmp_path / "bad.safetensors")
    store = _SafetensorsFiles([tmp_path / "bad.safetensors"])
    with pytest.raises(EdgekitError, match="tensor b "):
        _scan(tmp_path / "bad.safetensors", _float_ranges(store.index, store.offsets, tmp_path / "bad.safetensors"),
              None)


def test_manifest_sizes_checked_for_coreml_layout(tmp_path):
    """The same manifest check reads any artifact directory: a Core ML package file with the wrong size."""
    from edgekit import integrity
    from edgekit.errors import EdgekitError
    from edgekit.manifest import file_sha256

    art = tmp_path / "art"
    (art / "model.mlpackage" / "Data").mkdir(parents=True)
    weight = art / "model.mlpackage" / "Data" / "weight.bin"
    weight.write_bytes(os.urandom(1000))
    files = {"model.mlpackage/Data/weight.bin": {"sha256": file_sha256(weight), "bytes": 1000}}
    (art / "edgekit.json").write_text(json.dumps({"format": "coreml", "files": files}))
    assert integrity.check(art, full=True)["checked"] == "sha256"
    weight.write_bytes(os.urandom(1000))
    assert integrity.check(art)["checked"] == "size+header"
    with pytest.raises(EdgekitError, match="does not match its sha256"):
        integrity.check(art, full=True)
    weight.write_bytes(os.urandom(999))
    with pytest.raises(EdgekitError, match="999 bytes"):
        integrity.check(art)
