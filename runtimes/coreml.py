"""edgekit Core ML directories (``model.mlpackage`` + tokenizer files) through coremltools, macOS only.

The program's contract is converters/coreml/wrapper.py's: inputs ``input_ids`` int32 (1, q) with
1 <= q <= context and ``position`` int32 (1,) = tokens already cached; the KV cache is the model's
own state (``make_state()``), written at [position, position + q); output ``logits`` (1, 1, vocab)
for the last token. Truncation is calling with a smaller position: entries past it are overwritten
before they are ever read. Off macOS, Core ML cannot predict: :func:`runtimes.devices.select` says so
in one line before this module does any work.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.tokenizer import read_json
from runtimes.devices import Selection
from runtimes.engine import Engine
from runtimes.hftokenizer import HFTokenizer


class CoreMLEngine(Engine):
    kind = "coreml"

    def __init__(self, path: Path, selection: Selection, threads: int | None = None,
                 context: int | None = None) -> None:
        super().__init__()
        if sys.platform != "darwin":
            raise EdgekitError("Core ML models run only on macOS", "convert with --to gguf or --to onnx for this host")
        import coremltools as ct

        directory = path.parent if path.suffix == ".mlpackage" else path
        package = path if path.suffix == ".mlpackage" else path / "model.mlpackage"
        self.path, self.selection = str(path), selection
        tok = HFTokenizer(directory)
        self._tok = tok.tok
        self.bos_token, self.eos_token, self.bos_id = tok.bos_token, tok.eos_token, tok.bos_id
        self.eos_ids, self.chat_template = tok.eos_ids, tok.chat_template
        manifest = read_json(directory / "edgekit.json")
        slots = int((manifest.get("coreml") or {}).get("context") or manifest.get("context_length") or 0)
        try:
            self.model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit[selection.compute_units])
            self.state = self.model.make_state()
        except Exception as err:
            raise EdgekitError(f"Core ML cannot load {package}: {str(err).splitlines()[0][:200]}",
                               "re-create it with edgekit convert --to coreml (needs macOS 15 for states)") from None
        if not slots:
            spec = self.model.get_spec()
            states = list(spec.description.state)
            slots = int(states[0].type.stateType.arrayType.shape[2]) if states else 0
        if not slots:
            raise EdgekitError(f"{package} does not say its context size", "re-create it with edgekit convert")
        if context is not None and context != slots:
            raise EdgekitError(f"this Core ML model has a fixed context of {slots} tokens, not {context}",
                               f"drop --context, or re-convert with --context {context}")
        self.context_length = slots
        self.vocab_size = self._tok.get_vocab_size()

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special).ids)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._tok.decode([int(t) for t in tokens], skip_special_tokens=True)

    _position = 0

    def _forward(self, tokens: list[int]) -> np.ndarray:
        # one call takes up to the context in tokens; positions continue from what the state holds
        out = self.model.predict({"input_ids": np.array([tokens], np.int32),
                                  "position": np.array([self._position], np.int32)}, state=self.state)
        self._position += len(tokens)
        return np.asarray(out["logits"], dtype=np.float32).reshape(-1)  # (1, 1, vocab): the last token only

    def _truncate(self, n: int) -> None:
        self._position = n
