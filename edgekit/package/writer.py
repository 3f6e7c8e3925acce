"""``edgekit package``: one self-describing bundle per platform, written all-or-nothing.

Android: the static-shape ONNX graphs (``edgekit convert --to onnx --static``) in onnxruntime's ORT format,
converted by onnxruntime's own tool with the "Runtime" optimization style (its guidance for NNAPI and the
CoreML EP: only basic fusions are baked in, so the compiling EP sees plain ops), the
``required_operators.config`` of a reduced onnxruntime build, the tokenizer and ``bundle.json``.
iOS: the stateful ``model.mlpackage`` (``edgekit convert --to coreml``), the tokenizer and ``bundle.json``.
From a checkpoint the converter runs first, inside the bundle's temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.package.schema import BUNDLE_FILE, SCHEMA_VERSION, check

PLATFORMS = ("android", "ios")
SELFTEST_PROMPT = "What is the capital of France?"
SELFTEST_TOKENS = 32
_FIX = "pass an edgekit convert output (--to onnx --static for android, --to coreml for ios) or a checkpoint"


def _artifact(source: str) -> dict[str, Any] | None:
    """The artifact's edgekit.json if ``source`` is an edgekit convert output, else None (a model reference)."""
    from edgekit.tokenizer import read_json

    path = Path(source)
    if path.is_dir() and (path / "edgekit.json").is_file():  # convert outputs carry it; checkpoints do not
        manifest = read_json(path / "edgekit.json")
        if not manifest.get("format"):
            raise EdgekitError(f"{path / 'edgekit.json'} is unreadable or names no format", _FIX)
        return manifest
    return None


def _default_output(source: str, platform: str) -> Path:
    name = Path(str(source).rstrip("/")).name or "model"
    return Path.cwd() / f"{name}-{platform}-bundle"


def package(source: str, platform: str, output: str | None = None, *, zip_output: bool = False,
            dtype: str | None = None, context: int | None = None, prefill_chunk: int | None = None,
            force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the ``platform`` bundle for ``source`` (an edgekit artifact directory or a model reference)."""
    from edgekit.atomic import atomic_output, check_destination

    start = time.perf_counter()
    if platform not in PLATFORMS:
        raise EdgekitError(f"unknown platform {platform!r}", "choose android or ios")
    manifest = _artifact(source)
    if manifest is not None:
        given = [n for n, v in (("--dtype", dtype), ("--context", context), ("--prefill-chunk", prefill_chunk))
                 if v is not None]
        if given:
            raise EdgekitError(f"{', '.join(given)} only apply when packaging a checkpoint; {source} is already "
                               "converted", "drop them, or pass the checkpoint instead")
        _check_artifact(Path(source), manifest, platform)
    elif platform == "ios" and prefill_chunk is not None:
        raise EdgekitError("--prefill-chunk applies to android only", "drop it for --platform ios")
    dest = Path(output) if output else _default_output(source, platform)
    zip_dest = dest.with_name(dest.name + ".zip") if zip_output else None
    check_destination(dest, force)
    if zip_dest is not None:
        check_destination(zip_dest, force)
    with atomic_output(dest, force, directory=True) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        work = tmp / ".work"
        work.mkdir()
        if manifest is None:
            artifact = _convert(source, platform, work, dtype=dtype, context=context, prefill_chunk=prefill_chunk,
                                progress=progress)
        else:
            artifact = Path(source)
        writer = _android if platform == "android" else _ios
        bundle = writer(artifact, tmp, work, progress=progress)
        shutil.rmtree(work)
        bundle["files"] = _hash_files(tmp)
        check(bundle)  # what we write must pass what verify reads
        (tmp / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result = {"output": str(dest), "platform": platform, "bytes": _dir_bytes(dest),
              "files": {k: v["bytes"] for k, v in bundle["files"].items()},
              "dtype": bundle["model"]["dtype"], "context_length": bundle["context_length"]}
    if platform == "android":
        result["mobile_usability"] = {g: {ep: r["verdict"] for ep, r in u.items()}
                                      for g, u in bundle["runtime"]["mobile_usability"].items()}
        result["provider"] = bundle["runtime"]["providers"]["preferred"]
    if zip_dest is not None:
        _zip(dest, zip_dest, force)
        result["zip"], result["zip_bytes"] = str(zip_dest), zip_dest.stat().st_size
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _check_artifact(path: Path, manifest: dict[str, Any], platform: str) -> None:
    fmt = manifest.get("format")
    if platform == "android":
        if fmt != "onnx":
            raise EdgekitError(f"{path} is a {fmt} artifact; the android bundle needs a static ONNX export",
                               "pass edgekit convert --to onnx --static output, or the checkpoint")
        if not (manifest.get("onnx") or {}).get("static"):
            raise EdgekitError(f"{path} is a dynamic-shape ONNX export; NNAPI needs fixed shapes",
                               "re-export with edgekit convert --to onnx --static, or pass the checkpoint")
    elif fmt != "coreml":
        raise EdgekitError(f"{path} is a {fmt} artifact; the ios bundle needs a Core ML package",
                           "pass edgekit convert --to coreml output, or the checkpoint")


def _convert(source: str, platform: str, work: Path, *, dtype: str | None, context: int | None,
             prefill_chunk: int | None, progress: bool) -> Path:
    import converters

    if platform == "android":
        out = work / "onnx"
        converters.get("onnx").convert(source, str(out), static=True, dtype=dtype, context=context,
                                       prefill_chunk=prefill_chunk, progress=progress)
    else:
        out = work / "coreml"
        converters.get("coreml").convert(source, str(out), context=context, precision=dtype, progress=progress)
    return out


# -------------------------------------------------------------------------------------------- common parts

def _tokenizer(artifact: Path, out: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(tokenizer, chat, special_ids, sampling) sections; copies tokenizer.json into ``out``."""
    from tokenizers import Tokenizer

    from edgekit.package import chatformat
    from edgekit.tokenizer import read_json
    from runtimes.hftokenizer import HFTokenizer

    if not (artifact / "tokenizer.json").is_file():
        raise EdgekitError(f"{artifact} has no tokenizer.json; the apps need it",
                           "convert from a checkpoint that has a tokenizers-format tokenizer.json")
    shutil.copy2(artifact / "tokenizer.json", out / "tokenizer.json")
    hf = HFTokenizer(artifact)
    tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    plain = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    tokenizer_json = read_json(artifact / "tokenizer.json")
    unsupported = unsupported_tokenizer_parts(tokenizer_json)
    tokenizer = {"kind": "other" if unsupported else "byte_level_bpe", "file": "tokenizer.json",
                 "vocab_size": tok.get_vocab_size(with_added_tokens=True),
                 "add_special": {"prefix": full[:at], "suffix": full[at + len(plain):]}}
    if unsupported:
        tokenizer["unsupported"] = unsupported
    fmt, problem = chatformat.derive(hf.chat_template, hf.bos_token, hf.eos_token)
    chat = {"template": hf.chat_template, "template_format": "jinja2-transformers", "bos_token": hf.bos_token,
            "eos_token": hf.eos_token, "format": fmt}
    if problem:
        chat["format_problem"] = problem
    config = read_json(artifact / "config.json")
    generation = read_json(artifact / "generation_config.json")
    tok_config = read_json(artifact / "tokenizer_config.json")
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    if pad is None:
        pad_text = tok_config.get("pad_token")
        pad_text = pad_text.get("content") if isinstance(pad_text, dict) else pad_text
        pad = tok.token_to_id(pad_text) if isinstance(pad_text, str) else None
    if not hf.eos_ids:
        raise EdgekitError(f"{artifact} names no end-of-sequence token", "set eos_token_id in generation_config.json")
    special = {"bos": hf.bos_id, "eos": sorted(hf.eos_ids), "pad": pad if isinstance(pad, int) else None}
    sample = bool(generation.get("do_sample"))
    sampling = {"temperature": float(generation.get("temperature", 1.0)) if sample else 0.0,
                "top_k": int(generation.get("top_k", 0) or 0) if sample else 0,
                "top_p": float(generation.get("top_p", 1.0) or 1.0) if sample else 1.0,
                "repeat_penalty": float(generation.get("repetition_penalty", 1.0) or 1.0),
                "max_new_tokens": 256}
    return tokenizer, chat, special, sampling


# the tokenizer.json parts the Kotlin and Swift tokenizers implement (mobile_demo/*/EdgekitCore)
_PRE_TOKENIZERS = {"ByteLevel", "Digits", "Split", "Sequence"}


def unsupported_tokenizer_parts(tj: dict[str, Any]) -> list[str]:
    """What in tokenizer.json the apps' byte-level BPE cannot reproduce ([] = everything is covered)."""
    problems = []
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        problems.append(f"model {model.get('type')}")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            problems.append(f"model.{key}")
    if model.get("byte_fallback"):
        problems.append("model.byte_fallback")
    normalizer = tj.get("normalizer")
    if normalizer is not None and normalizer.get("type") not in ("NFC",):
        problems.append(f"normalizer {normalizer.get('type')}")
    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not any(p.get("type") == "ByteLevel" for p in parts):
        problems.append("no ByteLevel pre-tokenizer")
    for p in parts:
        if p.get("type") not in _PRE_TOKENIZERS - {"Sequence"}:
            problems.append(f"pre_tokenizer {p.get('type')}")
        elif p.get("type") == "Split" and (p.get("invert") or p.get("behavior") != "Isolated"
                                           or "Regex" not in (p.get("pattern") or {})):
            problems.append("pre_tokenizer Split other than an isolated regex")
    if (tj.get("decoder") or {}).get("type") != "ByteLevel":
        problems.append(f"decoder {(tj.get('decoder') or {}).get('type')}")
    for added in tj.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word") or \
                (added.get("normalized") and not added.get("special") and tj.get("normalizer")):
            problems.append(f"added token {added.get('content')!r} flags")
    return problems


def _model_section(artifact: Path, manifest: dict[str, Any], dtype: str, vocab: int) -> dict[str, Any]:
    source = manifest.get("source") or str(artifact)
    return {"name": Path(source.rstrip("/")).name or "model", "architecture": manifest.get("architecture") or "unknown",
            "dtype": dtype, "vocab_size": vocab, "source": source, "source_sha256": manifest.get("source_sha256"),
            "quant": manifest.get("quant") or {"method": "none"}}


def _base(platform: str, artifact: Path, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from edgekit import __version__
    from edgekit.tokenizer import read_json

    manifest = read_json(artifact / "edgekit.json")
    tokenizer, chat, special, sampling = _tokenizer(artifact, out)
    bundle = {"schema_version": SCHEMA_VERSION, "edgekit_version": __version__, "platform": platform,
              "model": {}, "files": {}, "tokenizer": tokenizer, "chat": chat, "special_ids": special,
              "context_length": 0, "runtime": {}, "sampling": sampling}
    return bundle, manifest


# -------------------------------------------------------------------------------------------------- android

_ONNX_TYPES = {1: "tensor(float)", 10: "tensor(float16)", 6: "tensor(int32)", 7: "tensor(int64)"}
_NP_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32"}


def to_ort(onnx_dir: Path, out: Path, work: Path) -> list[str]:
    """ORT-format copies of the export's graphs in ``out`` (model.ort, decode.ort) and required_operators.config."""
    import contextlib
    import io
    import logging

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    src, dst = work / "ort-src", work / "ort-out"
    src.mkdir()
    graphs = [p for p in ("model.onnx", "decode.onnx") if (onnx_dir / p).is_file()]
    for name in [*graphs, *(p.name for p in onnx_dir.glob("*.onnx.data"))]:
        try:
            os.link(onnx_dir / name, src / name)  # the weights can be large: no copy when the file system allows
        except OSError:
            shutil.copy2(onnx_dir / name, src / name)
    log = io.StringIO()
    logging.disable(logging.INFO)  # the tool logs each step to the terminal; keep --json output clean
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            convert_onnx_models_to_ort(src, output_dir=dst, optimization_styles=[OptimizationStyle.Runtime],
                                       target_platform="arm")
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgekitError(f"onnxruntime could not convert the graphs to ORT format ({first[:200]})",
                           "the ORT format holds at most 2 GiB: package fp16 or a smaller --context") from None
    finally:
        logging.disable(logging.NOTSET)
    names = []
    for graph in graphs:
        stem = graph.removesuffix(".onnx")
        os.replace(dst / f"{stem}.with_runtime_opt.ort", out / f"{stem}.ort")
        names.append(f"{stem}.ort")
    config = next(dst.glob("required_operators*.config"))
    lines = [line for line in config.read_text().splitlines() if not line.startswith("# - ")]
    header = f"# Operators of {', '.join(names)}, for onnxruntime's reduced build (--include_ops_by_config)"
    (out / "required_operators.config").write_text("\n".join([header, *lines[1:]]) + "\n")
    return names


def _io(value: Any, name: str) -> dict[str, Any]:
    return {"name": name, "dtype": _NP_NAMES[value.type], "shape": [d if isinstance(d, int) else str(d)
                                                                     for d in value.shape]}


def _graph_io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """({name: arg}, {name: arg}) of an ONNX graph, read without its weights (the ORT copy has the same I/O)."""
    from types import SimpleNamespace

    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def arg(v: Any) -> Any:
        t = v.type.tensor_type
        return SimpleNamespace(name=v.name, type=_ONNX_TYPES[t.elem_type],
                               shape=[d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim])

    return {v.name: arg(v) for v in model.graph.input}, {v.name: arg(v) for v in model.graph.output}


def _android(artifact: Path, out: Path, work: Path, progress: bool) -> dict[str, Any]:
    bundle, manifest = _base("android", artifact, out)
    graphs = to_ort(artifact, out, work)
    io = {g: _graph_io(artifact / g.replace(".ort", ".onnx")) for g in graphs}
    inputs, outputs = io["model.ort"]
    past = inputs["past_key_values.0.key"]
    layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
    kv_heads, slots, head_dim = int(past.shape[1]), int(past.shape[2]), int(past.shape[3])
    tokens = {g: int(i[0]["input_ids"].shape[1]) for g, i in io.items()}
    dtype = (manifest.get("onnx") or {}).get("dtype") or ("fp16" if "16" in past.type else "fp32")
    vocab = int(outputs["logits"].shape[-1])
    usability = manifest.get("mobile_usability") or {}
    if not usability:
        from converters.onnx.mobile import usability as check_usability

        usability = {g: check_usability(artifact / g) for g in ("model.onnx", "decode.onnx")
                     if (artifact / g).is_file()}
    usability = {g.replace(".onnx", ".ort"): u for g, u in usability.items()}
    nnapi = [u.get("NNAPI", {}).get("verdict") for u in usability.values()]
    preferred = "NNAPI" if nnapi and all(v == "YES" for v in nnapi) else "CPU"
    bundle["model"] = _model_section(artifact, manifest, dtype, vocab)
    bundle["context_length"] = slots
    bundle["runtime"] = {
        "engine": "onnxruntime", "model_format": "ort",
        "graphs": {"prefill": {"file": "model.ort", "tokens": tokens["model.ort"]},
                   **({"decode": {"file": "decode.ort", "tokens": tokens["decode.ort"]}} if "decode.ort" in tokens
                      else {})},
        "inputs": {
            "input_ids": {**_io(inputs["input_ids"], "input_ids"), "shape": [1, "T"],
                          "meaning": "T = the graph's tokens; a shorter chunk is padded with id 0"},
            "attention_mask": {**_io(inputs["attention_mask"], "attention_mask"), "shape": [1, f"{slots}+T"],
                               "meaning": f"[0, p) = 1 for the p cached slots, [{slots}, {slots}+n) = 1 for the "
                                          "chunk's n real tokens, 0 elsewhere"},
            "position_ids": {**_io(inputs["position_ids"], "position_ids"), "shape": [1, "T"],
                             "meaning": "p, p+1, ..., p+T-1 where p = tokens already cached"},
            "past_key": {**_io(past, "past_key_values.{i}.key"), "meaning": "layer i's key buffer, all slots"},
            "past_value": {**_io(inputs["past_key_values.0.value"], "past_key_values.{i}.value"),
                           "meaning": "layer i's value buffer, all slots"}},
        "outputs": {
            "logits": {**_io(outputs["logits"], "logits"), "shape": [1, "T", vocab],
                       "meaning": "row j = logits after chunk token j; use row n-1"},
            "present_key": {**_io(outputs["present.0.key"], "present.{i}.key"), "shape": [1, kv_heads, "T", head_dim],
                            "meaning": "the chunk's new keys only"},
            "present_value": {**_io(outputs["present.0.value"], "present.{i}.value"),
                              "shape": [1, kv_heads, "T", head_dim], "meaning": "the chunk's new values only"}},
        "kv": {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "slots": slots,
               "dtype": _NP_NAMES[past.type], "layout": "per layer [1, kv_heads, slots, head_dim], slot = position",
               "update": "the host writes present[:, :, :n] into the past buffers at slots [p, p+n); "
                         "truncating to q tokens is setting p = q"},
        "providers": {"preferred": preferred, "fallback": "CPU", "nnapi_flags": [],
                      "reason": "onnxruntime's mobile usability checker: NNAPI " + ", ".join(
                          f"{g} {u.get('NNAPI', {}).get('verdict')} ({u.get('NNAPI', {}).get('partitions')} "
                          f"partition(s), {u.get('NNAPI', {}).get('supported_share', 0):.1%} of nodes)"
                          for g, u in usability.items())},
        "session_options": {"session.enable_saved_runtime_optimizations": "1"},
        "required_operators": "required_operators.config",
        "mobile_usability": usability,
    }
    bundle["selftest"] = _selftest(artifact, bundle, "onnxruntime CPU on the static ONNX export")
    return bundle


def _selftest(artifact: Path, bundle: dict[str, Any], backend: str) -> dict[str, Any]:
    """Greedy tokens from edgekit's own runtime (what ``edgekit run`` does) on the export the bundle came from."""
    import runtimes
    from runtimes.chat import prompt_tokens
    from runtimes.generate import generate
    from runtimes.sampling import SamplingParams

    engine = runtimes.load(str(artifact), device="cpu")
    chat = bundle["chat"]["template"] is not None
    ids = prompt_tokens(engine, [{"role": "user", "content": SELFTEST_PROMPT}]) if chat \
        else engine.tokenize(SELFTEST_PROMPT)
    result = generate(engine, ids, SamplingParams(), max_tokens=SELFTEST_TOKENS)
    return {"prompt": SELFTEST_PROMPT, "chat": chat, "prompt_ids": list(ids), "greedy_ids": list(result.tokens),
            "produced_by": f"edgekit {bundle['edgekit_version']} runtime ({backend})"}


# ------------------------------------------------------------------------------------------------------ ios

def _ios(artifact: Path, out: Path, work: Path, progress: bool) -> dict[str, Any]:
    bundle, manifest = _base("ios", artifact, out)
    info = manifest.get("coreml") or {}
    package_name = info.get("package") or "model.mlpackage"
    if not (artifact / package_name).is_dir():
        raise EdgekitError(f"{artifact} has no {package_name}", "re-create it with edgekit convert --to coreml")
    shutil.copytree(artifact / package_name, out / "model.mlpackage")
    described = describe_mlpackage(out / "model.mlpackage")
    state_shape = next(iter(described["states"].values()))["shape"]
    layers, kv_heads, slots, head_dim = (int(x) for x in state_shape)
    dtype = info.get("precision") or (manifest.get("quant") or {}).get("dtype") or "fp16"
    vocab = int(described["outputs"]["logits"]["shape"][-1])
    bundle["model"] = _model_section(artifact, manifest, dtype, vocab)
    bundle["context_length"] = slots
    inputs = described["inputs"]
    inputs["input_ids"]["meaning"] = f"1..{slots} new tokens"
    inputs["position"]["meaning"] = "tokens already in the state; this call's tokens go at position.."
    described["outputs"]["logits"]["meaning"] = "logits of the call's last token"
    bundle["runtime"] = {
        "engine": "coreml", "package": "model.mlpackage", "inputs": inputs, "outputs": described["outputs"],
        "states": described["states"],
        "kv": {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "slots": slots, "dtype": "float16",
               "layout": "state [layers, kv_heads, slots, head_dim], slot = position",
               "update": "the model writes its own state at [position, position+q); truncating to q tokens is "
                         "calling with position = q"},
        "compute_units": {"preferred": "all", "fallback": "cpuOnly"},
        "minimum_deployment_target": info.get("minimum_deployment_target") or "iOS18 / macOS15",
    }
    if sys.platform == "darwin":  # Core ML predicts only there; elsewhere the bundle carries no self-test
        bundle["selftest"] = _selftest(artifact, bundle, "Core ML CPU_ONLY on the package")
    return bundle


_ML_TYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}


def describe_mlpackage(package: Path) -> dict[str, dict[str, Any]]:
    """{inputs, outputs, states: {name: {name, dtype, shape}}} from the package's model spec (no Core ML runtime
    needed: the spec is a protobuf coremltools reads on any OS)."""
    from coremltools.models.utils import load_spec

    try:
        spec = load_spec(str(package))
    except Exception as err:
        raise EdgekitError(f"{package} does not load as a Core ML package ({str(err).splitlines()[0][:160]})",
                           "re-create it with edgekit convert --to coreml") from None

    def array(feature: Any, kind: str) -> dict[str, Any]:
        t = feature.type.stateType.arrayType if kind == "state" else feature.type.multiArrayType
        shape: list[Any] = [int(d) for d in t.shape]
        if kind == "input" and t.WhichOneof("ShapeFlexibility") == "shapeRange":
            shape = [f"{r.lowerBound}..{r.upperBound}" if r.lowerBound != r.upperBound else int(r.lowerBound)
                     for r in t.shapeRange.sizeRanges]
        return {"name": feature.name, "dtype": _ML_TYPES.get(t.dataType, str(t.dataType)), "shape": shape}

    desc = spec.description
    return {"inputs": {f.name: array(f, "input") for f in desc.input},
            "outputs": {f.name: array(f, "output") for f in desc.output},
            "states": {f.name: array(f, "state") for f in desc.state}}


# ------------------------------------------------------------------------------------------------- files

def _hash_files(root: Path) -> dict[str, dict[str, Any]]:
    from edgekit.manifest import file_sha256

    return {p.relative_to(root).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != BUNDLE_FILE}


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _zip(directory: Path, dest: Path, force: bool) -> None:
    from edgekit.atomic import atomic_output

    with atomic_output(dest, force) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                # weights do not deflate much and stored entries can be memory-mapped from the archive
                method = zipfile.ZIP_STORED if path.stat().st_size > (1 << 20) else zipfile.ZIP_DEFLATED
                zf.write(path, path.relative_to(directory).as_posix(), compress_type=method)
