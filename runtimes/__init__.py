"""Execution: the Engine protocol, the shared sampling and generation loop, device profiles, and one
backend file each for llama.cpp (GGUF), onnxruntime (ONNX) and Core ML."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError

# llama.cpp's CPU backend uses OpenMP; libgomp's default active spin-wait makes a thread that lost its
# core burn the time slice of the one it waits for. On a host shared with other work that costs 5-10x
# (measured here: 20 greedy tokens of SmolLM2 in 6 s vs 1.4 s); on an idle host passive costs little.
# Must be set before libgomp loads (importing llama_cpp or torch loads it), hence here at package import;
# a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
    manifest = path / "edgekit.json"
    if manifest.exists():
        try:
            fmt = json.loads(manifest.read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            raise EdgekitError(f"{manifest} is not valid JSON", "re-create the artifact with edgekit convert") from None
        if fmt in ("onnx", "coreml"):
            return fmt
        if fmt == "gguf":
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return "gguf"
    if (path / "model.onnx").exists():
        return "onnx"
    if (path / "model.mlpackage").exists():
        return "coreml"
    raise EdgekitError(f"{path} holds no model.onnx, model.mlpackage or edgekit.json",
                       "pass a .gguf file or a directory written by edgekit convert")


def load(artifact: str | Path, device: str = "auto", threads: int | None = None, fallback: str | None = None,
         context: int | None = None, lora: str | Path | None = None) -> Engine:
    """An Engine for ``artifact`` (.gguf file, ONNX or Core ML directory) on ``device``
    ("auto" | "cpu" | "apple-silicon" | "android-nnapi" | "jetson"). ``fallback="cpu"`` runs on the CPU
    when the device's accelerator is missing instead of failing; ``context`` caps the KV cache."""
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
    if kind == "gguf" and path.is_dir():
        path = sorted(path.glob("*.gguf"))[0]
    module_name, cls_name = BACKENDS[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EdgekitError(f"the {kind} backend cannot start: {err}", "install the runtime it needs") from None
    facts = devices.host_facts()
    static = module.is_static(path) if hasattr(module, "is_static") else None
    selection = devices.select(device, kind, facts, fallback=fallback, static_onnx=static)
    if lora is not None:  # a GGUF LoRA adapter applied at load (llama.cpp); other backends merge at conversion
        if kind != "gguf":
            raise EdgekitError(f"a LoRA adapter file applies to GGUF models, not {kind}",
                               "merge the adapter at conversion: edgekit convert --adapter DIR")
        return getattr(module, cls_name)(path, selection, threads=threads, context=context, lora=Path(lora))
    return getattr(module, cls_name)(path, selection, threads=threads, context=context)
