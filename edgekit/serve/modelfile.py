"""The Modelfile, Ollama's syntax: one instruction per line (case-insensitive), ``#`` comments, arguments
bare to the end of the line, in ``"quotes"`` or in ``\"\"\"triple quotes\"\"\"`` spanning lines.

Instructions: ``FROM`` (artifact file or directory, store name, or Hugging Face checkpoint directory / hub
id), ``PARAMETER name value`` (repeatable; ``stop`` accumulates), ``TEMPLATE`` (a Jinja chat template in
the transformers convention; without it the artifact's own), ``SYSTEM``, ``MESSAGE role content``,
``ADAPTER`` (PEFT LoRA directory, merged when FROM is a checkpoint; GGUF adapter file for a GGUF FROM),
``LICENSE``; edgekit's own: ``FORMAT gguf|onnx|coreml`` and ``QUANTIZE type`` (the converter's tensor
type) for a checkpoint FROM. Hand-written: the syntax is small and no maintained Python parser exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError

# name -> type; what the server's options accept too (Ollama's names)
PARAMETERS: dict[str, type] = {
    "num_ctx": int, "num_predict": int, "temperature": float, "top_k": int, "top_p": float, "min_p": float,
    "seed": int, "repeat_penalty": float, "repeat_last_n": int, "presence_penalty": float,
    "frequency_penalty": float, "stop": str,
}
ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("gguf", "onnx", "coreml")


@dataclass
class Modelfile:
    source: str | None = None                  # FROM
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    format: str | None = None                  # FORMAT (checkpoint FROM only)
    quantize: str | None = None                # QUANTIZE (checkpoint FROM only)

    def config(self) -> dict[str, Any]:
        """The settings a store manifest keeps (FROM and ADAPTER are resolved into blobs instead)."""
        return {"template": self.template, "system": self.system, "parameters": dict(self.parameters),
                "messages": list(self.messages), "license": list(self.license)}


def coerce_parameter(name: str, value: Any) -> Any:
    """``value`` converted to the parameter's type; EdgekitError for an unknown name or a bad value."""
    if name not in PARAMETERS:
        raise EdgekitError(f"unknown parameter {name!r}", f"use one of: {', '.join(PARAMETERS)}")
    kind = PARAMETERS[name]
    try:
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise EdgekitError(f"parameter {name} must be {kind.__name__}, not {value!r}", "fix its value") from None


def _arguments(text: str, pos: int, line_no: int) -> tuple[str, int]:
    """The argument starting at ``pos`` (after the instruction); returns it and the position after it."""
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if text.startswith('"""', pos):
        end = text.find('"""', pos + 3)
        if end < 0:
            raise EdgekitError(f'Modelfile line {line_no}: """ is never closed', 'close the text with """')
        return text[pos + 3:end], end + 3
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    value = text[pos:end].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = json.loads(value) if '\\' in value else value[1:-1]
    return value, end


def parse(text: str) -> Modelfile:
    """Parse a Modelfile; EdgekitError (naming the line) for anything it does not understand."""
    mf = Modelfile()
    pos, n = 0, len(text)
    while pos < n:
        line_no = text.count("\n", 0, pos) + 1
        end = text.find("\n", pos)
        end = n if end < 0 else end
        line = text[pos:end].strip()
        if not line or line.startswith("#"):
            pos = end + 1
            continue
        start = pos + (len(text[pos:end]) - len(text[pos:end].lstrip()))
        word = line.split(None, 1)[0]
        instruction = word.upper()
        role = None
        after = start + len(word)
        if instruction == "MESSAGE":  # MESSAGE role <argument>: the argument may be triple-quoted
            rest = text[after:end]
            role = rest.split(None, 1)[0].lower() if rest.strip() else ""
            after += (len(rest) - len(rest.lstrip())) + len(role)
        value, pos = _arguments(text, after, line_no)
        if pos < n and text[pos] != "\n":  # text after a closing """ on the same line
            rest_end = text.find("\n", pos)
            rest = text[pos:n if rest_end < 0 else rest_end].strip()
            if rest:
                raise EdgekitError(f"Modelfile line {line_no}: unexpected {rest[:40]!r} after the closing quotes",
                                   "put one instruction per line")
        pos += 1
        if not value and instruction not in ("SYSTEM", "TEMPLATE", "MESSAGE"):
            raise EdgekitError(f"Modelfile line {line_no}: {instruction} needs an argument",
                               "see edgekit create --help")
        if instruction == "FROM":
            mf.source = value
        elif instruction == "PARAMETER":
            name, _, raw = value.partition(" ")
            name, raw = name.strip().lower(), raw.strip()
            if not raw:
                raise EdgekitError(f"Modelfile line {line_no}: PARAMETER {name} has no value",
                                   "write PARAMETER NAME VALUE")
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1]
            if name == "stop":
                mf.parameters.setdefault("stop", []).append(raw)
            else:
                mf.parameters[name] = coerce_parameter(name, raw)
        elif instruction == "TEMPLATE":
            mf.template = value
        elif instruction == "SYSTEM":
            mf.system = value
        elif instruction == "MESSAGE":
            if role not in ROLES:
                raise EdgekitError(f"Modelfile line {line_no}: unknown MESSAGE role {role!r}",
                                   f"use one of: {', '.join(ROLES)}")
            mf.messages.append({"role": role, "content": value})
        elif instruction == "ADAPTER":
            mf.adapters.append(value)
        elif instruction == "LICENSE":
            mf.license.append(value)
        elif instruction == "FORMAT":
            if value.lower() not in FORMATS:
                raise EdgekitError(f"Modelfile line {line_no}: unknown FORMAT {value!r}",
                                   f"use one of: {', '.join(FORMATS)}")
            mf.format = value.lower()
        elif instruction == "QUANTIZE":
            mf.quantize = value.lower()
        else:
            raise EdgekitError(f"Modelfile line {line_no}: unknown instruction {word!r}",
                               "use FROM, PARAMETER, TEMPLATE, SYSTEM, MESSAGE, ADAPTER, LICENSE, FORMAT, QUANTIZE")
    if not mf.source:
        raise EdgekitError("the Modelfile has no FROM line", "add FROM <artifact, store model or checkpoint>")
    return mf


def _quote(text: str) -> str:
    return f'"""{text}"""' if ("\n" in text or '"' in text or text != text.strip()) else text


def render(source: str, config: dict[str, Any]) -> str:
    """A Modelfile that re-creates a stored model from ``source`` (show --modelfile)."""
    lines = [f"FROM {source}"]
    if config.get("template"):
        lines.append(f"TEMPLATE {_quote(config['template'])}")
    if config.get("system"):
        lines.append(f"SYSTEM {_quote(config['system'])}")
    for name, value in (config.get("parameters") or {}).items():
        for v in value if isinstance(value, list) else [value]:
            text = str(v)
            lines.append(f'PARAMETER {name} "{text}"' if name == "stop" and text != text.strip() or " " in text
                         else f"PARAMETER {name} {text}")
    for m in config.get("messages") or []:
        lines.append(f"MESSAGE {m['role']} {_quote(m['content'])}")
    for text in config.get("license") or []:
        lines.append(f"LICENSE {_quote(text)}")
    return "\n".join(lines) + "\n"
