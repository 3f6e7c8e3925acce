"""The model store and the Modelfile through the CLI: create / list / show / cp / rm / pull / run NAME;
shared blobs kept until the last model using them goes; a SIGKILL of ``edgekit create`` at any point
leaves the old state readable and nothing ``rm --prune`` cannot clean; names that would escape refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from serve_support import ROOT, cli, shared_artifacts, write_modelfile

from helpers import assert_one_line_error


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    return shared_artifacts(tmp_path_factory)


@pytest.mark.parametrize("name", ["tiny", "tiny:latest", "me/tiny:q4_k_m", "Tiny-2.5B_x", "a" * 80 + ":" + "b" * 80])
def test_valid_names(name):
    from edgekit.serve.names import parse

    n = parse(name)
    assert str(n).startswith(name.split(":")[0].lower())


@pytest.mark.parametrize("name", ["", "../x", "a/../b", "/abs", "a\x00b", "x" * 201, "a/b/c", ".hidden", "-x",
                                  "a:", ":tag", "a b", "a:../b", "a\\b", "..", "a:b:c"])
def test_invalid_names(name):
    from edgekit.errors import EdgekitError
    from edgekit.serve.names import parse

    with pytest.raises(EdgekitError) as err:
        parse(name)
    assert "\n" not in str(err.value)


def test_modelfile_parse_and_render_round_trip():
    from edgekit.serve.modelfile import parse, render

    text = '''# a comment
FROM ./model.gguf
parameter temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER stop "User:"
PARAMETER num_ctx 512
TEMPLATE """{% for m in messages %}{{ m['content'] }}
{% endfor %}"""
SYSTEM You are Jane Austen.
MESSAGE user Who are you?
MESSAGE assistant """I write
novels."""
LICENSE """Public domain."""
'''
    mf = parse(text)
    assert mf.source == "./model.gguf"
    assert mf.parameters == {"temperature": 0.3, "stop": ["<|im_end|>", "User:"], "num_ctx": 512}
    assert mf.template.startswith("{% for m in messages %}") and mf.template.endswith("{% endfor %}")
    assert mf.system == "You are Jane Austen."
    assert mf.messages == [{"role": "user", "content": "Who are you?"},
                           {"role": "assistant", "content": "I write\nnovels."}]
    assert mf.license == ["Public domain."]
    again = parse(render("./model.gguf", mf.config()))
    assert again.config() == mf.config()


@pytest.mark.parametrize("text,needle", [
    ("PARAMETER temperature 1\n", "no FROM"),
    ("FROM x\nBOGUS y\n", "line 2"),
    ("FROM x\nSYSTEM \"\"\"never closed\n", "never closed"),
    ("FROM x\nPARAMETER temperature hot\n", "temperature must be float"),
    ("FROM x\nPARAMETER mirostat 2\n", "unknown parameter"),
    ("FROM x\nMESSAGE wizard hi\n", "role"),
    ("FROM x\nFORMAT safetensors\n", "FORMAT"),
])
def test_modelfile_errors(text, needle):
    from edgekit.errors import EdgekitError
    from edgekit.serve.modelfile import parse

    with pytest.raises(EdgekitError) as err:
        parse(text)
    assert needle.lower() in str(err.value).lower()


def _blobs(home):
    return sorted(p.name for p in (home / "blobs").iterdir()) if (home / "blobs").exists() else []


def test_cli_create_list_show_cp_rm_and_shared_blobs(arts, tmp_path):
    home = tmp_path / "home"
    write_modelfile(tmp_path / "Modelfile", f"FROM {arts['gguf']}\nPARAMETER temperature 0\nSYSTEM Be brief.\n")
    proc = cli("create", "austen", "-f", str(tmp_path / "Modelfile"), home=home)
    assert proc.returncode == 0 and "created austen:latest (gguf" in proc.stdout, proc.stderr
    # the same GGUF under a second name (ONNX beside it): one blob for both GGUF models
    write_modelfile(tmp_path / "Modelfile2", "FROM ./tiny-onnx\n")
    (tmp_path / "tiny-onnx").symlink_to(arts["onnx"], target_is_directory=True)
    assert cli("create", "austen-onnx:fp32", "-f", str(tmp_path / "Modelfile2"), home=home).returncode == 0
    write_modelfile(tmp_path / "Modelfile3", f"FROM {arts['gguf']}\n")
    assert cli("create", "other", "-f", str(tmp_path / "Modelfile3"), home=home).returncode == 0
    listed = json.loads(cli("list", "--json", home=home).stdout)
    assert {m["name"] for m in listed} == {"austen:latest", "austen-onnx:fp32", "other:latest"}
    gguf_blob = "sha256-" + __import__("hashlib").sha256(arts["gguf"].read_bytes()).hexdigest()
    assert _blobs(home).count(gguf_blob) == 1
    show = json.loads(cli("show", "austen", "--json", home=home).stdout)
    assert show["details"]["format"] == "gguf" and show["system"] == "Be brief."
    assert show["template"].strip() == (arts["onnx"] / "chat_template.jinja").read_text().strip()
    assert show["model_info"]["llama.context_length"] == 1024
    modelfile = cli("show", "austen", "--modelfile", home=home).stdout
    assert "PARAMETER temperature 0" in modelfile and "SYSTEM Be brief." in modelfile
    write_modelfile(tmp_path / "Derived", modelfile)  # show --modelfile re-creates the model's settings
    assert cli("create", "austen:derived", "-f", str(tmp_path / "Derived"), home=home).returncode == 0
    derived = json.loads(cli("show", "austen:derived", "--json", home=home).stdout)
    assert (derived["system"], derived["parameters"], derived["edgekit"]["layers"]) == \
        (show["system"], show["parameters"], show["edgekit"]["layers"])
    assert cli("rm", "austen:derived", home=home).returncode == 0
    onnx_show = json.loads(cli("show", "austen-onnx:fp32", "--json", home=home).stdout)
    assert onnx_show["edgekit"]["artifact_manifest"]["format"] == "onnx"
    assert len(onnx_show["edgekit"]["layers"]) == len([p for p in arts["onnx"].iterdir() if p.is_file()])
    assert cli("cp", "austen", "austen:copy", home=home).returncode == 0
    n_blobs = len(_blobs(home))
    for name in ("austen", "austen:copy"):  # the GGUF blob is still used by "other"
        assert cli("rm", name, home=home).returncode == 0
        assert gguf_blob in _blobs(home) and len(_blobs(home)) == n_blobs
    assert cli("rm", "other", home=home).returncode == 0
    assert gguf_blob not in _blobs(home)
    # running the ONNX model once materialises its directory under cache/; rm takes it away with the blobs
    out = cli("run", "austen-onnx:fp32", "-p", "It is a truth", "-n", "4", "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert list((home / "cache").iterdir())
    assert cli("rm", "austen-onnx:fp32", home=home).returncode == 0
    assert _blobs(home) == [] and list((home / "cache").iterdir()) == []
    assert json.loads(cli("list", "--json", home=home).stdout) == []


def test_run_name_equals_run_artifact(arts, tmp_path):
    home = tmp_path / "home"
    write_modelfile(tmp_path / "Modelfile", f"FROM {arts['gguf']}\n")
    assert cli("create", "t", "-f", str(tmp_path / "Modelfile"), home=home).returncode == 0
    by_name = json.loads(cli("run", "t", "-p", "It is a truth", "-n", "12", "--json", home=home).stdout)
    by_path = json.loads(cli("run", str(arts["gguf"]), "-p", "It is a truth", "-n", "12", "--json",
                             home=home).stdout)
    assert by_name["text"] == by_path["text"] and by_name["tokens"] == by_path["tokens"]
    assert_one_line_error(cli("run", "no-such-model", "-p", "x", home=home), "neither a file nor a model")


def test_cli_errors_are_one_line(arts, tmp_path):
    home = tmp_path / "home"
    write_modelfile(tmp_path / "Modelfile", f"FROM {arts['gguf']}\n")
    assert_one_line_error(cli("create", "../evil", "-f", str(tmp_path / "Modelfile"), home=home), "invalid model name")
    assert_one_line_error(cli("create", "x", "-f", str(tmp_path / "nope"), home=home), "cannot read")
    write_modelfile(tmp_path / "Bad", "FROM ./missing.gguf\n")
    assert_one_line_error(cli("create", "x", "-f", str(tmp_path / "Bad"), home=home), "missing")
    write_modelfile(tmp_path / "Bad2", f"FROM {arts['gguf']}\nADAPTER {tmp_path}\n")
    assert_one_line_error(cli("create", "x", "-f", str(tmp_path / "Bad2"), home=home), "ADAPTER")
    assert_one_line_error(cli("show", "nope", home=home), "not found")
    assert_one_line_error(cli("rm", "nope", home=home), "not found")
    assert_one_line_error(cli("cp", "nope", "x", home=home), "not found")
    assert_one_line_error(cli("pull", "someorg/some-model", home=home), "HF_HUB_OFFLINE")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert_one_line_error(cli("serve", "--port", port, home=home), "cannot listen")
    assert_one_line_error(cli("serve", "--keep-alive", "soon", home=home), "keep-alive")
    assert not (home / "manifests").exists() or not any((home / "manifests").rglob("*latest"))


def _state(home):
    """(names, every listed model complete, leftovers) of the store at ``home``, read in-process."""
    from edgekit.serve.store import Store

    store = Store(home)
    models = store.list()
    complete = all("error" not in m and not store.missing_blobs(m) for m in models)
    leftovers = [p for d in ("blobs", "tmp", "cache") if (home / d).exists() for p in (home / d).iterdir()
                 if p.name.startswith((".tmp-", "tmp-"))]
    return {m["name"]: m.get("format") for m in models}, complete, leftovers


@pytest.mark.slow
def test_sigkill_during_create_leaves_a_consistent_store(arts, tiny_dir, tmp_path):
    """Replace an ONNX model by a conversion of the checkpoint (GGUF) and SIGKILL ``edgekit create`` at
    points spread over its run: the model is always the old one or the new one, complete; what the
    kill left behind, ``rm --prune`` removes, and removing the model leaves no blob."""
    home = tmp_path / "home"
    write_modelfile(tmp_path / "Old", f"FROM {arts['onnx']}\n")
    write_modelfile(tmp_path / "New", f"FROM {tiny_dir}\nQUANTIZE f32\n")
    assert cli("create", "m", "-f", str(tmp_path / "Old"), home=home).returncode == 0
    env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "edgekit.cli", "create", "m", "-f", str(tmp_path / "New"), "--json"]
    t0 = time.monotonic()
    assert subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    full = time.monotonic() - t0
    assert _state(home)[0] == {"m:latest": "gguf"}
    from edgekit.serve import build
    from edgekit.serve.modelfile import parse
    from edgekit.serve.store import Store

    seen = set()
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.97):
        build.create(Store(home), "m", parse(f"FROM {arts['onnx']}\n"), progress=False)  # the old state again
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        names, complete, _ = _state(home)
        assert complete and list(names) == ["m:latest"], names
        seen.add(names["m:latest"])
        assert cli("rm", "--prune", home=home).returncode == 0
        names, complete, leftovers = _state(home)
        assert complete and leftovers == [] and list(names) == ["m:latest"]
        store = Store(home)
        referenced = {x["digest"].replace(":", "-") for x in store.read("m")["layers"]}
        assert set(_blobs(home)) == referenced  # no orphan blob
    assert "onnx" in seen  # some kills landed before the commit (the old model stayed)
    assert cli("rm", "m", home=home).returncode == 0
    assert _blobs(home) == []


def test_tag_and_namespace_names_cannot_collide(tmp_path):
    """"a:b" (model a, tag b) lives at manifests/a/b; "a/b" (namespace a) would need that path as a folder."""
    from edgekit.errors import EdgekitError
    from edgekit.serve.store import Layer, Store

    store = Store(tmp_path)
    blob = store.add_blob_stream([b"GGUF not really"])
    layer = Layer("m.gguf", blob.digest, blob.size)
    store.create("a:b", "gguf", [layer], {})
    store.create("x/y", "gguf", [layer], {})
    for name in ("a/b", "a/b:c", "x:y"):
        with pytest.raises(EdgekitError, match="collides"):
            store.create(name, "gguf", [layer], {})
    assert [str(n) for n in store.names()] == ["a:b", "x/y:latest"]
    store.remove("a:b")
    assert store.has_blob(blob.digest)  # x/y still uses it
    store.remove("x/y")
    assert not store.has_blob(blob.digest) and not any(store.manifests.iterdir())
