"""Trace the stateful wrapper and convert it to a Core ML ML program (iOS 18 / macOS 15 states).

:func:`trace` is the one place the TorchScript module is made, so the tests check exactly the module
that :func:`convert` hands to coremltools.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from converters.coreml.wrapper import StatefulCausalLM

STATES = ("key_cache", "value_cache")
INPUTS = ("input_ids", "position")
OUTPUT = "logits"


def coremltools() -> Any:
    """Import coremltools without its Linux noise (no native runtime here, untested-torch warning)."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    return ct


# coremltools draws its own tqdm bars (frontend ops, MIL passes) on every convert, with leave=True; the
# converter's own bar already shows the step, so theirs are turned off (a module attribute each)
_COREMLTOOLS_BARS = (("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
                     ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"))


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Within this block, coremltools' progress bars are disabled."""
    import importlib

    from tqdm import tqdm

    saved = []
    for module_name, attr in _COREMLTOOLS_BARS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attr):
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, functools.partial(tqdm, disable=True))
    try:
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)


def example_inputs(tokens: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    # two tokens, not one: a length-1 example would let broadcasting hide the sequence dimension
    return torch.zeros(1, tokens, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)


def trace(wrapper: StatefulCausalLM) -> torch.jit.ScriptModule:
    """The TorchScript module coremltools converts. Tracing writes into the cache buffers; they are
    zeroed again afterwards so the traced module starts from an empty cache."""
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example_inputs(min(2, wrapper.context)), check_trace=False)
        for name in STATES:
            getattr(wrapper, name).zero_()
    return traced


def convert(wrapper: StatefulCausalLM, precision: str) -> Any:
    """An in-memory ``MLModel`` (not compiled: Linux has no Core ML runtime) for ``wrapper``."""
    ct = coremltools()
    traced = trace(wrapper)
    # Core ML states hold fp16 only (coremltools refuses anything else), so with fp32 precision the
    # cache is still fp16: keys/values are rounded when written and widened again when read.
    state_dtype = np.float16
    shape = tuple(wrapper.key_cache.shape)
    n = wrapper.context
    with quiet_progress_bars():
        model = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input_ids", shape=(1, ct.RangeDim(1, n, default=1)), dtype=np.int32),
                    ct.TensorType(name="position", shape=(1,), dtype=np.int32)],
            outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)],
            states=[ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=state_dtype), name=name)
                    for name in STATES],
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            convert_to="mlprogram",
            skip_model_load=True,
        )
        quantized = getattr(wrapper, "quantized", None)
        if quantized:
            from converters.coreml import compressed

            model = compressed.apply(model, quantized, precision)
    return model
