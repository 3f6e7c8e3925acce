"""Report targets: ``FORMAT:QUANT[-METHOD][-bN][-sym|-asym]`` (``gguf:q4_k_m``, ``onnx:int4-gptq``,
``coreml:int4-b64``) and the ``edgekit convert`` / ``edgekit quantize`` call each one is.

QUANT is a precision the converter writes (gguf f32/f16/bf16, onnx fp32/fp16, coreml fp16/fp32), a grid RTN fills
(gguf q4_0/q4_1/q5_0/q5_1/q8_0, onnx and coreml int4/int8), nf4, or a llama.cpp k-quant (gguf only). METHOD picks
who chooses the codes: rtn (default), gptq or awq; ``-awq`` on a k-quant scales first, then lets llama.cpp
quantize; ``-imatrix`` on a GGUF block type hands it to llama.cpp's quantizer with an importance matrix.
Every target is checked by the quantizer's own rules (:func:`quant.pipeline.resolve`) before any work."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError

FORMATS = ("gguf", "onnx", "coreml")
# precisions the converter writes without a quantizer: QUANT -> (convert option, value)
FLOAT = {"gguf": {"f32": ("outtype", "f32"), "f16": ("outtype", "f16"), "bf16": ("outtype", "bf16")},
         "onnx": {"fp32": ("dtype", "fp32"), "fp16": ("dtype", "fp16")},
         "coreml": {"fp16": ("precision", "fp16"), "fp32": ("precision", "fp32")}}
METHODS = ("rtn", "gptq", "awq")
EXAMPLES = "gguf:q4_k_m, gguf:q8_0, gguf:q4_0-gptq, onnx:fp32, onnx:int4, onnx:int4-awq-b128, coreml:int4"


@dataclass(frozen=True)
class Target:
    """One artifact of the report: its spec string, and either convert options or quantize options."""

    spec: str
    fmt: str
    command: str                                     # "convert" | "quantize"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.options.get("method", "none"))

    @property
    def calibrated(self) -> bool:
        """Needs calibration text (gptq, awq, or a k-quant's importance matrix)."""
        from quant import kquant

        m = self.options.get("method")
        return m in ("gptq", "awq") or m in kquant.METHODS

    @property
    def filename(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.spec.replace(":", "-")) + (".gguf" if self.fmt == "gguf" else "")


def _bad(spec: str, why: str, fix: str | None = None) -> EdgekitError:
    return EdgekitError(f"target {spec!r}: {why}", fix or f"targets look like {EXAMPLES}")


def parse(spec: str) -> Target:
    """The Target ``spec`` names, or EdgekitError (one line) saying what is wrong with it."""
    from quant import kquant, pipeline

    fmt, sep, rest = spec.strip().partition(":")
    fmt = fmt.lower()
    if not sep or fmt not in FORMATS or not rest:
        raise _bad(spec, f"not FORMAT:QUANT with FORMAT one of {', '.join(FORMATS)}")
    quant, *mods = rest.lower().split("-")
    method, group_size, symmetric = "rtn", None, None
    for mod in mods:
        if mod in METHODS or mod == "imatrix":
            method = mod
        elif re.fullmatch(r"b\d+", mod):
            group_size = int(mod[1:])
        elif mod in ("sym", "asym"):
            symmetric = mod == "sym"
        else:
            raise _bad(spec, f"unknown modifier {mod!r}", f"modifiers: {', '.join(METHODS)}, imatrix (llama.cpp's "
                       "quantizer), bN (block size), sym, asym; e.g. onnx:int4-gptq-b128")
    if quant in FLOAT[fmt]:
        if mods:
            raise _bad(spec, f"{quant} is not quantized: it takes no modifier", f"write {fmt}:{quant}")
        key, value = FLOAT[fmt][quant]
        return Target(spec, fmt, "convert", {key: value})
    if method == "imatrix":  # llama.cpp's own quantizer with an importance matrix, on a block type too (q4_0)
        if fmt != "gguf" or quant not in kquant.METHODS:
            raise _bad(spec, "-imatrix names llama.cpp's quantizer: GGUF types only", "e.g. gguf:q4_0-imatrix")
        options = {"method": quant}
    elif quant in kquant.METHODS and quant not in pipeline.GGUF_TYPES:
        if method == "gptq":
            raise _bad(spec, "GPTQ chooses codes on a block grid, not in llama.cpp's k-quant mixes",
                       f"use gguf:q4_0-gptq, or {fmt}:{quant}-awq")
        options = {"method": "awq", "then": quant} if method == "awq" else {"method": quant}
    elif quant == "nf4":
        if method != "rtn":
            raise _bad(spec, "nf4 has no gptq/awq form here", f"write {fmt}:nf4")
        options = {"method": "nf4"}
    else:
        options = {"method": method, "qtype": quant}
    if group_size is not None:
        options["group_size"] = group_size
    if symmetric is not None:
        options["symmetric"] = symmetric
    plan_method = options["method"] if options["method"] != "awq" else (options.get("then") or "rtn")
    plan_method = "rtn" if plan_method in ("gptq", "awq") else plan_method
    try:  # the quantizer's own rules: a cell that cannot hold the method fails here, before any work
        pipeline.resolve(fmt, plan_method, options.get("qtype"), group_size, symmetric)
    except EdgekitError as err:
        raise _bad(spec, err.what, err.fix) from None
    return Target(spec, fmt, "quantize", options)


def parse_all(specs: Sequence[str]) -> list[Target]:
    """Every spec parsed (the first bad one raises); a spec given twice is refused."""
    targets = [parse(s) for s in specs if s.strip()]
    if not targets:
        raise EdgekitError("no targets given", f"pass --targets, e.g. {EXAMPLES}")
    seen: set[str] = set()
    for t in targets:
        if t.filename in seen:
            raise _bad(t.spec, "given twice", "name each target once")
        seen.add(t.filename)
    return targets
