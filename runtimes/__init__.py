"""Execution: the Engine protocol, the shared sampling and generation loop, device profiles, and one
backend file each for llama.cpp (GGUF), onnxruntime (ONNX) and Core ML."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json

if TYPE_CHECKING:
    from runtimes.engine import Engine

# artifact kind -> "module:Engine class" (imported on first use: loading llama.cpp or onnxruntime is slow)
BACKENDS: dict[str, str] = {
    "gguf": "runtimes.llamacpp:LlamaCppEngine",
    "onnx": "runtimes.onnx:OnnxEngine",
    "coreml": "runtimes.coreml:CoreMLEngine",
}


def artifact_kind(artifact: str | Path) -> str:
    """"gguf" | "onnx" | "coreml" for a path, from its content (not only its name)."""
    path = Path(artifact)
    if not path.exists():
        raise EdgekitError(f"{path} does not exist",
                           "pass a .gguf file or an ONNX / Core ML directory from edgekit convert")
    if path.is_file():
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic == b"GGUF":
            return "gguf"
        if path.suffix == ".gguf":
            raise EdgekitError(f"{path} is not a GGUF file (starts with {magic!r})",
                               "re-create it with edgekit convert --to gguf")
        if path.suffix == ".onnx":
            return "onnx"
        raise EdgekitError(f"{path} is not a model artifact edgekit can run",
                           "pass a .gguf file or an ONNX / Core ML directory from edgekit convert")
    if path.suffix == ".mlpackage":
        return "coreml"
    fmt = read_json(path / "edgekit.json", "manifest", optional=True).get("format")
    if fmt in ("onnx", "coreml"):
        return fmt
    if (path / "model.onnx").exists():
        return "onnx"
    if (path / "model.mlpackage").exists():
        return "coreml"
    from edgekit.artifacts import not_an_artifact

    raise not_an_artifact(path)


def load(artifact: str | Path, device: str = "auto", threads: int | None = None, fallback: str | None = None,
         context: int | None = None, verify: bool = False, lora: str | Path | None = None) -> Engine:
    """An Engine for ``artifact`` (.gguf file, ONNX or Core ML directory) on ``device``
    ("auto" | "cpu" | "apple-silicon" | "android-nnapi" | "jetson"). ``fallback="cpu"`` runs on the CPU
    when the device's accelerator is missing instead of failing; ``context`` caps the KV cache; ``threads``
    defaults to the profile's choice (:func:`runtimes.devices.default_threads`). The
    artifact is checked against its manifest first (sizes and headers; every sha256 with ``verify``)."""
    from runtimes import devices

    if threads is not None and threads < 1:
        raise EdgekitError(f"--threads {threads} must be at least 1", "pass a positive thread count")
    if context is not None and context < 1:
        raise EdgekitError(f"--context {context} must be at least 1", "pass a positive number of tokens")
    if device not in ("auto", *devices.PROFILES):  # before touching the artifact
        raise EdgekitError(f"unknown device {device!r}", f"choose one of: auto, {', '.join(devices.PROFILES)}")
    if fallback not in (None, "cpu"):
        raise EdgekitError(f"unknown fallback {fallback!r}", "the only fallback is cpu")
    path = Path(artifact)
    kind = artifact_kind(path)
    from edgekit import integrity

    # a .onnx file or a .mlpackage given directly: its directory carries the manifest
    integrity.check(path.parent if kind != "gguf" and (path.is_file() or path.suffix == ".mlpackage") else path,
                    full=verify)
    module_name, cls_name = BACKENDS[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EdgekitError(f"the {kind} backend cannot start: {err}", "install the runtime it needs") from None
    facts = devices.host_facts(kind)
    static = module.is_static(path) if hasattr(module, "is_static") else None
    selection = devices.select(device, kind, facts, fallback=fallback, static_onnx=static)
    # the engines' own runtime settings (OpenMP wait policy, spinning) are left as the user's environment has them
    threads = threads or selection.threads
    if lora is not None:  # a GGUF LoRA adapter applied at load (llama.cpp); other backends merge at conversion
        if kind != "gguf":
            raise EdgekitError(f"a LoRA adapter file applies to GGUF models, not {kind}",
                               "merge the adapter at conversion: edgekit convert --adapter DIR")
        return getattr(module, cls_name)(path, selection, threads=threads, context=context, lora=Path(lora))
    return getattr(module, cls_name)(path, selection, threads=threads, context=context)
