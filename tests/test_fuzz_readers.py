"""Bounded fuzzing of the readers (hypothesis): mutated GGUF headers, safetensors headers and config.json
files give a correct result or a clean EdgekitError, never another exception type. The reader
functions are called directly (fast); a few mutants also go through the CLI."""

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.errors import EdgekitError
from helpers import assert_one_line_error, run_cli

FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON values a hostile or corrupt file may hold where a number, string or list is expected
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for at, value in edits:
        buf[at % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


# ---- GGUF ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory) -> bytes:
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "v.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.context_length", 128)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_string("general.name", "fuzz")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    w.add_tensor("a", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("b", np.ones((4, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _header_len(data: bytes) -> int:
    import tempfile

    from edgekit.integrity import gguf_layout

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return gguf_layout(Path(f.name)).data_start


@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(0, 1200), full=st.booleans())
@FUZZ
def test_gguf_header_mutations(valid_gguf, tmp_path, edits, cut, full):
    from edgekit import integrity

    head = _header_len(valid_gguf)
    path = tmp_path / "m.gguf"
    edits = [(at % head, v) for at, v in edits]  # the header: magic, counts, metadata, tensor infos
    path.write_bytes(_mutate(valid_gguf, edits, cut))
    try:
        layout = integrity.gguf_layout(path)
        result = integrity.check(path, full=False)
    except EdgekitError as err:
        assert "\n" not in str(err)
        return
    assert layout.data_end <= layout.size and result["format"] == "gguf"


def test_gguf_mutants_through_the_cli(valid_gguf, tmp_path):
    for i, (edits, cut) in enumerate([([(9, 0xFF)], None), ([(20, 0x7F)], None), ([], 100)]):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(_mutate(valid_gguf, edits, cut))
        assert_one_line_error(run_cli("verify", str(path)))
        if i < 2:
            assert_one_line_error(run_cli("run", str(path), "-p", "x"))


# ---- safetensors ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid_safetensors(tmp_path_factory) -> tuple[dict, bytes]:
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("st") / "v.safetensors"
    save_file({"w": np.ones((4, 8), np.float32), "h": np.zeros(6, np.float16), "i": np.arange(3, dtype=np.int64)},
              path, metadata={"format": "pt"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_st(path: Path, header, data: bytes, raw_header: bytes | None = None) -> None:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@given(tensor=st.sampled_from(["w", "h", "i", "__metadata__", "new"]),
       key=st.sampled_from(["dtype", "shape", "data_offsets", "extra", None]), value=json_values)
@FUZZ
def test_safetensors_header_field_mutations(valid_safetensors, tmp_path, tensor, key, value):
    from edgekit.checkpoint import _SafetensorsFiles

    header, data = valid_safetensors
    header = json.loads(json.dumps(header))
    if key is None:
        header[tensor] = value
    else:
        entry = header.setdefault(tensor, {})
        if isinstance(entry, dict):
            entry[key] = value
    path = tmp_path / "m.safetensors"
    try:
        _write_st(path, header, data)
    except ValueError:  # NaN/inf are not JSON; json.dumps writes them anyway, json.loads reads them
        return
    _read_or_refuse(_SafetensorsFiles, path)


@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 400))
@FUZZ
def test_safetensors_header_byte_mutations(valid_safetensors, tmp_path, edits, cut):
    from edgekit.checkpoint import _SafetensorsFiles

    header, data = valid_safetensors
    raw = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    blob = _mutate(struct.pack("<Q", len(raw)) + raw, [(at % (len(raw) + 8), v) for at, v in edits], None) + data
    path.write_bytes(blob[:cut] if cut is not None else blob)
    _read_or_refuse(_SafetensorsFiles, path)


def _read_or_refuse(reader, path: Path) -> None:
    try:
        store = reader([path])
    except EdgekitError as err:
        assert "\n" not in str(err)
        return
    for name in store.index:  # accepted: every tensor reads back with its declared shape
        try:
            a = store.array(name)
        except EdgekitError:
            continue
        assert tuple(a.shape) == store.index[name].shape


# ---- config.json -----------------------------------------------------------------------------------------

CONFIG_KEYS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
               "rope_scaling", "rope_parameters", "tie_word_embeddings", "architectures", "model_type",
               "sliding_window", "bos_token_id", "eos_token_id", "hidden_act", "partial_rotary_factor",
               "attention_bias"]


@pytest.fixture(scope="module")
def model_dir(random_model, tmp_path_factory) -> Path:
    return Path(shutil.copytree(random_model("llama"), tmp_path_factory.mktemp("cfg") / "m"))


@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(CONFIG_KEYS), max_size=2))
@FUZZ
def test_config_mutations(model_dir, changes, drop):
    from edgekit.inspect import inspect

    original = json.loads((model_dir / "config.json").read_text())  # restored after every example
    cfg = {k: v for k, v in original.items() if k not in drop}
    cfg.update(changes)
    try:
        (model_dir / "config.json").write_text(json.dumps(cfg))
        try:
            info = inspect(model_dir)
        except EdgekitError as err:
            assert "\n" not in str(err)
            return
        s = info["spec"]  # accepted: a usable description
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                    "intermediate_size", "context_length"):
            assert isinstance(s[key], int) and s[key] > 0, (key, s[key])
        assert math.isfinite(s["norm_eps"]) and s["num_heads"] % s["num_kv_heads"] == 0
    finally:
        (model_dir / "config.json").write_text(json.dumps(original))


def test_config_mutants_through_the_cli(model_dir, tmp_path):
    for i, changes in enumerate([{"architectures": 5}, {"rope_scaling": "yes"}, {"head_dim": -3},
                                 {"model_type": ["llama"]}, {"eos_token_id": {"a": 1}}]):
        bad = Path(shutil.copytree(model_dir, tmp_path / f"m{i}"))
        cfg = json.loads((bad / "config.json").read_text())
        cfg.update(changes)
        (bad / "config.json").write_text(json.dumps(cfg))
        proc = run_cli("inspect", str(bad))
        if proc.returncode != 0:
            assert_one_line_error(proc)
