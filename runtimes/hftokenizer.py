"""A Hugging Face tokenizer directory (tokenizer.json + configs) for the ONNX and Core ML backends:
the ``tokenizers`` library, BOS/EOS facts from tokenizer_config / generation_config / config, and the
chat template via :func:`edgekit.tokenizer.chat_template`."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.tokenizer import chat_template, read_json


class HFTokenizer:
    """tokenizer.json through the ``tokenizers`` library, plus the special-token facts the Engine needs."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        file = directory / "tokenizer.json"
        if not file.exists():
            raise EdgekitError(f"{directory} has no tokenizer.json", "re-export with edgekit convert --to onnx")
        try:
            self.tok = Tokenizer.from_file(str(file))
        except Exception as err:
            raise EdgekitError(f"{file} does not load: {str(err).splitlines()[0][:160]}",
                               "re-export with edgekit convert --to onnx") from None
        config = read_json(directory / "tokenizer_config.json")
        model_config = read_json(directory / "config.json")
        generation = read_json(directory / "generation_config.json")

        def text(key: str) -> str | None:
            value = config.get(key)
            return value.get("content") if isinstance(value, dict) else value

        self.bos_token, self.eos_token = text("bos_token"), text("eos_token")
        eos: set[int] = set()
        for source in (generation.get("eos_token_id"), model_config.get("eos_token_id")):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list):
                eos.update(int(x) for x in source)
        if self.eos_token and self.tok.token_to_id(self.eos_token) is not None:
            eos.add(self.tok.token_to_id(self.eos_token))
        recorded = read_json(directory / "edgekit.json").get("stop_token_ids")  # the set every format shares
        if isinstance(recorded, list) and recorded and all(isinstance(i, int) for i in recorded):
            eos = set(recorded)
        self.eos_ids = frozenset(eos)
        bos = model_config.get("bos_token_id", generation.get("bos_token_id"))
        if bos is None and self.bos_token:
            bos = self.tok.token_to_id(self.bos_token)
        self.bos_id = bos if isinstance(bos, int) else None
        self.chat_template = chat_template(directory)
