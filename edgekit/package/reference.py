"""The reference loop: what a phone app does with a bundle, in plain Python, reading only the bundle.

It imports no edgekit module and no transformers: the tokenizer is the bundle's tokenizer.json through
the ``tokenizers`` library, the chat template the bundle's Jinja source through ``jinja2`` (set up as
bundle.json's ``template_format`` says), the graphs and their input names come from bundle.json and
run on onnxruntime (Android bundle; CPU provider here) or Core ML through coremltools (iOS bundle,
macOS only). ``edgekit package verify`` runs it; it also runs alone::

    python edgekit/package/reference.py BUNDLE -p "What is the capital of France?" --chat -n 32 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {"int32": np.int32, "int64": np.int64, "float16": np.float16, "float32": np.float32}


class Bundle:
    """bundle.json, the tokenizer and the chat template of one bundle directory."""

    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer

        self.dir = Path(directory)
        self.meta: dict[str, Any] = json.loads((self.dir / "bundle.json").read_text(encoding="utf-8"))
        self.tokenizer = Tokenizer.from_file(str(self.dir / self.meta["tokenizer"]["file"]))
        self.eos = set(self.meta["special_ids"]["eos"])

    def encode(self, text: str) -> list[int]:
        """A plain prompt: the text's ids between the ids the bundle says the tokenizer adds."""
        special = self.meta["tokenizer"]["add_special"]
        return [*special["prefix"], *self.tokenizer.encode(text, add_special_tokens=False).ids, *special["suffix"]]

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat template rendered the way template_format "jinja2-transformers" says."""
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        chat = self.meta["chat"]
        if chat["template"] is None:
            raise ValueError("the bundle has no chat template")

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(chat["template"]).render(
            messages=messages, bos_token=chat["bos_token"] or "", eos_token=chat["eos_token"] or "",
            add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        # the rendered text carries its own special tokens; nothing is added around it
        return self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class OrtDecoder:
    """The static ORT graphs with host-side KV buffers, exactly as bundle.json's runtime section describes."""

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        import onnxruntime as ort

        rt = bundle.meta["runtime"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        for key, value in rt["session_options"].items():
            so.add_session_config_entry(key, value)
        self.graphs = []
        for role in ("prefill", "decode"):
            if role in rt["graphs"]:
                g = rt["graphs"][role]
                sess = ort.InferenceSession(str(bundle.dir / g["file"]), so, providers=["CPUExecutionProvider"])
                self.graphs.append((g["tokens"], sess))
        self.inputs, self.outputs, kv = rt["inputs"], rt["outputs"], rt["kv"]
        self.layers, self.slots = kv["layers"], kv["slots"]
        shape = (1, kv["kv_heads"], kv["slots"], kv["head_dim"])
        self.k = [np.zeros(shape, _DTYPES[kv["dtype"]]) for _ in range(self.layers)]
        self.v = [np.zeros(shape, _DTYPES[kv["dtype"]]) for _ in range(self.layers)]
        self.pos = 0
        names = [self.outputs["logits"]["name"]]
        for i in range(self.layers):
            names += [self.outputs[kind]["name"].format(i=i) for kind in ("present_key", "present_value")]
        self.output_names = names

    def _run(self, size: int, sess: Any, tokens: list[int]) -> np.ndarray:
        n, p, inp = len(tokens), self.pos, self.inputs
        if p + n > self.slots:
            raise ValueError(f"the context of {self.slots} tokens is full")
        ids = np.zeros((1, size), _DTYPES[inp["input_ids"]["dtype"]])
        ids[0, :n] = tokens
        mask = np.zeros((1, self.slots + size), _DTYPES[inp["attention_mask"]["dtype"]])
        mask[0, :p] = 1
        mask[0, self.slots:self.slots + n] = 1
        feeds = {inp["input_ids"]["name"]: ids, inp["attention_mask"]["name"]: mask,
                 inp["position_ids"]["name"]: np.arange(p, p + size, dtype=_DTYPES[inp["position_ids"]["dtype"]])[None]}
        for i in range(self.layers):
            feeds[inp["past_key"]["name"].format(i=i)] = self.k[i]
            feeds[inp["past_value"]["name"].format(i=i)] = self.v[i]
        out = sess.run(self.output_names, feeds)
        for i in range(self.layers):
            self.k[i][:, :, p:p + n] = out[1 + 2 * i][:, :, :n]
            self.v[i][:, :, p:p + n] = out[2 + 2 * i][:, :, :n]
        self.pos = p + n
        return out[0][0, n - 1].astype(np.float32)

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Logits after ``tokens`` (appended to the cache): chunks of the prefill graph, then the decode graph."""
        logits, i = None, 0
        while i < len(tokens):
            left = len(tokens) - i
            size, sess = self.graphs[-1] if left == 1 else self.graphs[0]  # one token: the decode graph if any
            m = min(size, left)
            logits = self._run(size, sess, tokens[i:i + m])
            i += m
        return logits


class CoreMLDecoder:
    """The stateful Core ML package (macOS 15+): the model keeps its own KV state."""

    def __init__(self, bundle: Bundle) -> None:
        import coremltools as ct

        rt = bundle.meta["runtime"]
        self.model = ct.models.MLModel(str(bundle.dir / rt["package"]), compute_units=ct.ComputeUnit.CPU_ONLY)
        self.state = self.model.make_state()
        self.inputs, self.logits = rt["inputs"], rt["outputs"]["logits"]["name"]
        self.pos = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        out = self.model.predict({self.inputs["input_ids"]["name"]: np.array([tokens], np.int32),
                                  self.inputs["position"]["name"]: np.array([self.pos], np.int32)}, state=self.state)
        self.pos += len(tokens)
        return np.asarray(out[self.logits], dtype=np.float32).reshape(-1)


def greedy(bundle: Bundle, prompt_ids: list[int], max_tokens: int, threads: int = 0) -> list[int]:
    """Greedy continuation of ``prompt_ids``: argmax, stop at an end-of-sequence id (not included)."""
    decoder = OrtDecoder(bundle, threads) if bundle.meta["runtime"]["engine"] == "onnxruntime" \
        else CoreMLDecoder(bundle)
    logits = decoder.forward(list(prompt_ids))
    out: list[int] = []
    limit = bundle.meta["context_length"]
    while len(out) < max_tokens:
        token = int(np.argmax(logits))
        if token in bundle.eos:
            break
        out.append(token)
        if len(out) >= max_tokens or decoder.pos >= limit:
            break
        logits = decoder.forward([token])
    return out


def run(directory: str | Path, prompt: str, chat: bool, max_tokens: int, threads: int = 0) -> dict[str, Any]:
    bundle = Bundle(directory)
    ids = bundle.encode_chat([{"role": "user", "content": prompt}]) if chat else bundle.encode(prompt)
    tokens = greedy(bundle, ids, max_tokens, threads)
    return {"prompt_ids": ids, "tokens": tokens, "text": bundle.decode(tokens)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Greedy generation from an edgekit bundle, reading only the bundle.")
    parser.add_argument("bundle")
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("--chat", action="store_true", help="apply the bundle's chat template to the prompt")
    parser.add_argument("-n", "--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.bundle, args.prompt, args.chat, args.max_tokens, args.threads)
    print(json.dumps(result) if args.json else result["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
