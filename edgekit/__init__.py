"""edgekit: take a Hugging Face causal LM checkpoint to the device.

Owns the ``edgekit`` CLI, the public Python API, checkpoint loading, ModelSpec, tokenizer and
chat-template handling, and the bundled models. Formats live in ``converters``, number grids and
quantizers in ``quant``, execution in ``runtimes``.
"""

from edgekit.checkpoint import Checkpoint, open_checkpoint
from edgekit.errors import EdgekitError
from edgekit.spec import ModelSpec, from_config

# edgekit.inspect stays the submodule (edgekit.inspect.inspect(...)); binding the function here shadowed it
__version__ = "0.1.0"
__all__ = ["Checkpoint", "EdgekitError", "ModelSpec", "from_config", "open_checkpoint", "__version__"]
