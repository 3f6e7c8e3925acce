"""``edgekit package verify``: schema, hashes, structure, then the reference loop against the self-test.

Every failure is one EdgekitError line. The numeric part runs :mod:`edgekit.package.reference` (which reads
only the bundle) in a child process, so nothing of edgekit's own runtime is loaded into the check: for the
Android bundle on onnxruntime's CPU provider here, for the iOS bundle on macOS only (Core ML predicts
nowhere else); elsewhere the iOS check is structural and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.package.schema import BUNDLE_FILE, check

_REDO = "re-create the bundle with edgekit package"


def verify(path: str | Path, numeric: bool = True) -> dict[str, Any]:
    """Check the bundle at ``path`` (a directory, or a .zip from ``--zip``); returns what was checked."""
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix=".verify-", dir=path.parent) as tmp:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)
            return {**verify(tmp, numeric), "bundle": str(path)}
    if not path.is_dir():
        raise EdgekitError(f"{path} is not a bundle directory", "pass the output of edgekit package")
    meta_file = path / BUNDLE_FILE
    if not meta_file.is_file():
        raise EdgekitError(f"{path} has no {BUNDLE_FILE}", "pass the output of edgekit package")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise EdgekitError(f"{meta_file} is not valid JSON ({str(err)[:120]})", _REDO) from None
    check(meta)
    report: dict[str, Any] = {"bundle": str(path), "platform": meta["platform"],
                              "schema_version": meta["schema_version"], "files": len(meta["files"])}
    _check_files(path, meta)
    report["hashes"] = "ok"
    report["structure"] = _check_structure(path, meta)
    report["numeric"] = _check_numeric(path, meta) if numeric else "skipped (--no-numeric)"
    return report


def _check_files(root: Path, meta: dict[str, Any]) -> None:
    from edgekit.manifest import file_sha256

    for name, entry in meta["files"].items():
        file = root / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise EdgekitError(f"bundle.json lists a file outside the bundle: {name}", _REDO)
        if not file.is_file():
            raise EdgekitError(f"{name} is listed in bundle.json but missing from the bundle", _REDO)
        if file.stat().st_size != entry["bytes"]:
            raise EdgekitError(f"{name} has {file.stat().st_size} bytes, bundle.json says {entry['bytes']}: the file "
                               "was changed", _REDO)
        if file_sha256(file) != entry["sha256"]:
            raise EdgekitError(f"{name} does not match its sha256 in bundle.json: the file was changed", _REDO)
    extra = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.name != BUNDLE_FILE and p.relative_to(root).as_posix() not in meta["files"])
    if extra:
        raise EdgekitError(f"{extra[0]} is in the bundle but not in bundle.json"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""),
                           "remove it, or re-create the bundle with edgekit package")


def _check_structure(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The files bundle.json points at exist, and the graphs' own I/O is what bundle.json says."""
    rt = meta["runtime"]
    if meta["tokenizer"]["file"] not in meta["files"]:
        raise EdgekitError(f"the tokenizer file {meta['tokenizer']['file']} is not in the bundle", _REDO)
    vocab = meta["tokenizer"]["vocab_size"]
    ids = [*meta["special_ids"]["eos"], *(x for x in (meta["special_ids"]["bos"], meta["special_ids"]["pad"])
                                          if x is not None)]
    if any(not 0 <= i < max(vocab, meta["model"]["vocab_size"]) for i in ids):
        raise EdgekitError("bundle.json names a special id outside the vocabulary", _REDO)
    _check_chat_format(meta["chat"])
    if meta["platform"] == "android":
        if rt["engine"] != "onnxruntime":
            raise EdgekitError("an android bundle must run on onnxruntime", _REDO)
        return _structure_ort(root, meta)
    if rt["engine"] != "coreml":
        raise EdgekitError("an ios bundle must run on Core ML", _REDO)
    return _structure_coreml(root, meta)


def _check_chat_format(chat: dict[str, Any]) -> None:
    """The apps apply the reduced chat format, the reference loop the Jinja template: both must give one prompt."""
    from edgekit.package.chatformat import PROBES, apply
    from runtimes.chat import render

    if chat["format"] is None or chat["template"] is None:
        return
    for probe in PROBES:
        try:
            want = render(chat["template"], probe, bos_token=chat["bos_token"], eos_token=chat["eos_token"])
        except EdgekitError:
            continue  # the template refuses this conversation shape
        if apply(chat["format"], probe) != want:
            raise EdgekitError(f"bundle.json's chat format renders a {len(probe)}-message conversation differently "
                               "from its chat template", _REDO)


def _structure_ort(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    from edgekit.package.writer import _NP_NAMES

    rt = meta["runtime"]
    if rt["required_operators"] not in meta["files"]:
        raise EdgekitError(f"{rt['required_operators']} is not in the bundle", _REDO)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for key, value in rt["session_options"].items():
        so.add_session_config_entry(key, value)
    kv = rt["kv"]
    checked = {}
    for role, graph in rt["graphs"].items():
        if graph["file"] not in meta["files"]:
            raise EdgekitError(f"the {role} graph {graph['file']} is not in the bundle", _REDO)
        try:
            sess = ort.InferenceSession(str(root / graph["file"]), so, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise EdgekitError(f"onnxruntime cannot load {graph['file']}: {str(err).splitlines()[0][:160]}",
                               _REDO) from None
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = {o.name: o for o in sess.get_outputs()}
        t = graph["tokens"]
        want = {rt["inputs"]["input_ids"]["name"]: [1, t], rt["inputs"]["position_ids"]["name"]: [1, t],
                rt["inputs"]["attention_mask"]["name"]: [1, kv["slots"] + t]}
        for i in range(kv["layers"]):
            for kind in ("past_key", "past_value"):
                want[rt["inputs"][kind]["name"].format(i=i)] = [1, kv["kv_heads"], kv["slots"], kv["head_dim"]]
        for name, shape in want.items():
            if name not in inputs:
                raise EdgekitError(f"{graph['file']} has no input {name}, which bundle.json names", _REDO)
            if list(inputs[name].shape) != shape:
                raise EdgekitError(f"{graph['file']} input {name} has shape {inputs[name].shape}, bundle.json says "
                                   f"{shape}", _REDO)
        if set(inputs) != set(want):
            raise EdgekitError(f"{graph['file']} has inputs bundle.json does not describe: "
                               f"{sorted(set(inputs) - set(want))[:3]}", _REDO)
        for kind in ("input_ids", "attention_mask", "position_ids"):
            if _NP_NAMES[inputs[rt["inputs"][kind]["name"]].type] != rt["inputs"][kind]["dtype"]:
                raise EdgekitError(f"{graph['file']} input {kind} is not {rt['inputs'][kind]['dtype']}", _REDO)
        if _NP_NAMES[inputs[rt["inputs"]["past_key"]["name"].format(i=0)].type] != kv["dtype"]:
            raise EdgekitError(f"{graph['file']}'s KV buffers are not {kv['dtype']}", _REDO)
        logits = outputs.get(rt["outputs"]["logits"]["name"])
        if logits is None or list(logits.shape) != [1, t, meta["model"]["vocab_size"]]:
            raise EdgekitError(f"{graph['file']}'s logits output is not [1, {t}, {meta['model']['vocab_size']}]", _REDO)
        for i in range(kv["layers"]):
            for kind in ("present_key", "present_value"):
                if rt["outputs"][kind]["name"].format(i=i) not in outputs:
                    raise EdgekitError(f"{graph['file']} has no output {rt['outputs'][kind]['name'].format(i=i)}",
                                       _REDO)
        checked[graph["file"]] = {"inputs": len(inputs), "outputs": len(outputs), "tokens": t}
    if meta["context_length"] != kv["slots"]:
        raise EdgekitError("bundle.json's context_length differs from its KV slots", _REDO)
    return {"graphs": checked}


def _structure_coreml(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from edgekit.package.writer import describe_mlpackage

    rt = meta["runtime"]
    package = root / rt["package"]
    if not (package / "Manifest.json").is_file():
        raise EdgekitError(f"{rt['package']} is not a Core ML package (no Manifest.json)", _REDO)
    described = describe_mlpackage(package)
    for section in ("inputs", "outputs", "states"):
        for io in rt[section].values():
            got = described[section].get(io["name"])
            if got is None:
                raise EdgekitError(f"{rt['package']} has no {section[:-1]} {io['name']}, which bundle.json names",
                                   _REDO)
            if got["dtype"] != io["dtype"] or got["shape"] != io["shape"]:
                raise EdgekitError(f"{rt['package']} {section[:-1]} {io['name']} is {got['dtype']} {got['shape']}, "
                                   f"bundle.json says {io['dtype']} {io['shape']}", _REDO)
        if set(described[section]) != {io["name"] for io in rt[section].values()}:
            raise EdgekitError(f"{rt['package']}'s {section} differ from bundle.json's", _REDO)
    kv = rt["kv"]
    shape = [kv["layers"], kv["kv_heads"], kv["slots"], kv["head_dim"]]
    if any(s["shape"] != shape for s in rt["states"].values()) or meta["context_length"] != kv["slots"]:
        raise EdgekitError("bundle.json's KV layout differs from the package's states", _REDO)
    return {"package": rt["package"], "inputs": sorted(described["inputs"]), "states": sorted(described["states"])}


def _check_numeric(root: Path, meta: dict[str, Any]) -> dict[str, Any] | str:
    if meta["platform"] == "ios" and sys.platform != "darwin":
        return "skipped: Core ML predicts only on macOS (the macos workflow runs it)"
    test = meta.get("selftest")
    if test is None:
        return "skipped: the bundle records no self-test"
    got = reference_run(root, test["prompt"], test["chat"], len(test["greedy_ids"]) or 1)
    if got["prompt_ids"] != test["prompt_ids"]:
        raise EdgekitError("the reference loop tokenizes the self-test prompt differently from edgekit's runtime",
                           _REDO)
    want = test["greedy_ids"]
    if got["tokens"] != want:
        at = next((i for i, (a, b) in enumerate(zip(got["tokens"], want, strict=False)) if a != b),
                  min(len(got["tokens"]), len(want)))
        raise EdgekitError(f"the reference loop's greedy tokens differ from the self-test's at position {at} "
                           f"({len(got['tokens'])} vs {len(want)} tokens)", _REDO)
    return {"prompt_tokens": len(test["prompt_ids"]), "greedy_tokens": len(want), "match": True,
            "text": got["text"]}


def reference_run(root: Path, prompt: str, chat: bool, max_tokens: int) -> dict[str, Any]:
    """Run reference.py on the bundle in a child interpreter (it imports nothing of edgekit)."""
    script = Path(__file__).with_name("reference.py")
    args = [sys.executable, "-I", str(script), str(root), "-p", prompt, "-n", str(max_tokens), "--json"]
    if chat:
        args.append("--chat")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of edgekit on its path
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800, cwd=root)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgekitError(f"the reference loop failed on the bundle: {last[:200]}", _REDO)
    return json.loads(proc.stdout)
