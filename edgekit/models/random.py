"""Tiny random models of every supported architecture, built from configs in code.

They test plumbing (layouts, names, shapes, metadata), never quality. Each is seeded and saved as a
Hugging Face directory with safetensors weights, a byte-level BPE tokenizer trained on the bundled
held-out text, and a ChatML template, so every converter runs on it exactly as on a real checkpoint.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgekit.models import TINY_DIR

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "gpt2", "mixtral", "qwen2_moe")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)


def _configs(vocab: int, bos: int, eos: int) -> dict[str, Any]:
    """model_type -> (config class name, model class name, kwargs)."""
    ids = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    base = {**_BASE, **ids}
    return {
        "llama": ("LlamaConfig", "LlamaForCausalLM", dict(base, tie_word_embeddings=False, rope_theta=10000.0)),
        "mistral": ("MistralConfig", "MistralForCausalLM", dict(base, sliding_window=64, rope_theta=10000.0)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(base, tie_word_embeddings=True, rope_theta=1e6)),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(base, head_dim=32, tie_word_embeddings=True)),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(base, tie_word_embeddings=False)),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
                   dict(base, head_dim=16, query_pre_attn_scalar=16, sliding_window=32,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
        # a local (sliding, window 8: shorter than the tests' prompts) then a global layer, each with its rope
        "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                        dict(base, head_dim=16, query_pre_attn_scalar=16, sliding_window=8, sliding_window_pattern=2,
                             rope_theta=1e6, rope_local_base_freq=10000.0)),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel",
                 dict(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=bos,
                      eos_token_id=eos)),
        "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                    dict(base, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)),
        "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                      dict(base, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           shared_expert_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[],
                           tie_word_embeddings=False)),
    }


@lru_cache(maxsize=4)
def _cached_tokenizer_json(vocab_size: int) -> str:
    return train_bpe_tokenizer(sample_text(), vocab_size).to_str()


def train_bpe_tokenizer(text: str, vocab_size: int = 512):
    """A GPT-2-style byte-level BPE trained on ``text`` (a tokenizers.Tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return tok


@lru_cache(maxsize=2)
def _sentencepiece_model(vocab_size: int) -> bytes:
    """A SentencePiece BPE model (byte fallback, Llama-style specials) trained on the sample text."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample_text().split("\n\n")), model_writer=out, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2)
    return out.getvalue()


def sentencepiece_tokenizer(directory: Path, vocab_size: int = 1000):
    """Write tokenizer.model and load it as transformers' LlamaTokenizer (tokenizer.json converted from it)."""
    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(_sentencepiece_model(vocab_size))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": True}))
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    return tok


def sample_text() -> str:
    """The bundled held-out text (Persuasion), used to train the random models' tokenizers."""
    return (TINY_DIR / "persuasion.txt").read_text(encoding="utf-8")


def build(arch: str, out: Path, seed: int = 0, init_std: float = 0.2, tokenizer: str = "bpe",
          **overrides: Any) -> Path:
    """Save a seeded random ``arch`` model with tokenizer and chat template into ``out``; return ``out``.

    ``init_std`` is 10x transformers' default (0.02) so every sublayer, attention's position dependence
    included, dominates the logits: a layout bug moves them ~100% (a q/k rope permutation: ~1% at 0.02),
    far past fp32 tolerances. It does not make argmaxes more decisive (margins scale with the logits) and
    it amplifies weight rounding (Q8_0 logits 3-16% off vs 0.7-1.6% at 0.02), so the GGUF
    reduced-precision argmax tests build with ``init_std=0.02``.

    ``tokenizer`` is "bpe" (byte-level, the default) or "sentencepiece" (a SentencePiece BPE with byte
    fallback, as Llama 2 / Mistral ship; tokenizer.model kept).
    """
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer == "sentencepiece":
        hf_tok = sentencepiece_tokenizer(out)
        vocab, bos, eos = len(hf_tok), hf_tok.bos_token_id, hf_tok.eos_token_id
    elif tokenizer == "bpe":
        tok = Tokenizer.from_str(_cached_tokenizer_json(512))
        eos = bos = tok.token_to_id(SPECIALS[0])
        vocab = tok.get_vocab_size()
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[0],
                                         pad_token=SPECIALS[0], additional_special_tokens=SPECIALS[1:])
    else:
        raise ValueError(f"unknown tokenizer kind {tokenizer!r}; known: bpe, sentencepiece")
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)
    config_cls, model_cls, kwargs = _configs(vocab, bos, eos)[arch]
    kwargs = {**kwargs, **overrides}
    config = getattr(transformers, config_cls)(**kwargs, initializer_range=init_std)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    model.save_pretrained(out)
    # transformers omits keys equal to their defaults; keep the ones converters and tests read explicit
    cfg = json.loads((out / "config.json").read_text())
    cfg.setdefault("tie_word_embeddings", bool(getattr(model.config, "tie_word_embeddings", False)))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out
