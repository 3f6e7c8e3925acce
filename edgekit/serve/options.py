"""Sampling options of a request, layered: the API's defaults < the model's Modelfile PARAMETERs < the
request. Names are Ollama's (``num_predict``, ``repeat_penalty`` ...); the OpenAI routes map theirs
onto them (``max_tokens`` -> ``num_predict``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.serve.modelfile import coerce_parameter

# Ollama's documented defaults (api.md / modelfile.md)
OLLAMA_DEFAULTS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1,
                                   "repeat_last_n": 64, "num_predict": -1}
# OpenAI's: temperature 1, nucleus off, no penalties, no length limit but the context
OPENAI_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
                                   "repeat_last_n": 64, "num_predict": -1}


@dataclass
class Resolved:
    sampling: Any                 # runtimes.sampling.SamplingParams
    max_tokens: int               # a large number means "until the context is full"
    stop: tuple[str, ...]
    num_ctx: int | None


def resolve(defaults: dict[str, Any], model_parameters: dict[str, Any] | None, request: dict[str, Any]) -> Resolved:
    """Layer the three sources; EdgekitError (400) for a value out of range."""
    from runtimes.sampling import SamplingParams

    merged: dict[str, Any] = dict(defaults)
    stops: list[str] = []
    for source in (model_parameters or {}, request):
        for name, value in source.items():
            if value is None:
                continue
            if name == "stop":
                values = [value] if isinstance(value, str) else value
                if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                    raise EdgekitError("stop must be a string or a list of strings", "fix the stop option")
                stops = list(values)  # the request's stop list replaces the model's, as in Ollama
                continue
            try:
                merged[name] = coerce_parameter(name, value)
            except EdgekitError:
                if source is request and name not in _TYPES:
                    continue  # options Ollama knows but that do not apply here (num_gpu, mirostat, ...)
                raise
    if len(stops) > 16 or any(len(s) > 200 for s in stops):
        raise EdgekitError("at most 16 stop strings of at most 200 characters", "shorten the stop list")
    seed = merged.get("seed")
    if seed is not None and seed < 0:
        seed = None  # Ollama: -1 = random
    last_n = merged.get("repeat_last_n", 64)
    if last_n == -1:
        last_n = merged.get("num_ctx") or 4096
    if last_n < 0:
        raise EdgekitError("repeat_last_n must be >= -1", "pass -1 (the context), 0 (off) or a window size")
    num_ctx = merged.get("num_ctx")
    if num_ctx is not None and not 1 <= num_ctx <= 1 << 20:
        raise EdgekitError(f"num_ctx {num_ctx} is out of range", "pass a positive context size")
    predict = merged.get("num_predict", -1)
    if predict < -2:
        raise EdgekitError("num_predict must be >= -2", "pass -1 (until the context is full) or a token count")
    max_tokens = (1 << 30) if predict < 0 else predict
    for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
        value = merged.get(name)
        if value is not None and not (-1e6 < value < 1e6):
            raise EdgekitError(f"{name} {value} is out of range", f"pass a finite {name}")
    top_p = merged.get("top_p", 1.0)
    sampling = SamplingParams(
        temperature=merged.get("temperature", 0.0), top_k=max(0, merged.get("top_k", 0)),
        top_p=1e-9 if top_p <= 0 else top_p,  # 0 keeps only the most likely token
        min_p=merged.get("min_p", 0.0), repeat_penalty=merged.get("repeat_penalty", 1.0),
        presence_penalty=merged.get("presence_penalty", 0.0), frequency_penalty=merged.get("frequency_penalty", 0.0),
        penalty_last_n=last_n, seed=seed)
    return Resolved(sampling, max_tokens, tuple(s for s in stops if s), num_ctx)


_TYPES = {"num_ctx", "num_predict", "temperature", "top_k", "top_p", "min_p", "seed", "repeat_penalty",
          "repeat_last_n", "presence_penalty", "frequency_penalty", "stop"}
