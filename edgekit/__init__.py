"""edgekit: take a Hugging Face causal LM checkpoint to the device.

Owns the ``edgekit`` CLI, the public Python API, checkpoint loading, ModelSpec, tokenizer and
chat-template handling, and the bundled models. Formats live in ``converters``, number grids and
quantizers in ``quant``, execution in ``runtimes``.
"""

from edgekit.checkpoint import Checkpoint, open_checkpoint
from edgekit.errors import EdgekitError
from edgekit.inspect import inspect
from edgekit.spec import ModelSpec, from_config

__version__ = "0.1.0"
__all__ = ["Checkpoint", "EdgekitError", "ModelSpec", "from_config", "inspect", "open_checkpoint", "__version__"]
