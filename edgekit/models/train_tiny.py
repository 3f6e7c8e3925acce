"""Train edgekit-tiny: a small Llama (GQA) on five Jane Austen novels, *Persuasion* held out.

    python -m edgekit.models.train_tiny [--out edgekit/data/tiny] [--steps N]

Deterministic for a given torch build and thread count: seeded data order and init, 2 threads.
Writes a Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, chat_template.jinja, generation_config.json) plus ``training.json`` with the
hyper-parameters, wall time and held-out perplexities (model and unigram baseline), and the held-out
text itself as ``persuasion.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from edgekit.models.austen import DEBIAN_DIR, split_corpus

SEED = 1234
VOCAB = 4096
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MODEL = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, hidden_act="silu",
)
TRAIN = dict(seq_len=256, batch_size=16, lr=3e-3, min_lr=3e-4, warmup=40, weight_decay=0.1,
             chat_fraction=0.15)


def train_tokenizer(texts: list[str]):
    """Byte-level BPE (GPT-2 pre-tokenization) with BOS/EOS and ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIALS, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def save_tokenizer(tok, out: Path) -> None:
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0], "eos_token": SPECIALS[3],
        "pad_token": SPECIALS[1], "unk_token": None, "add_bos_token": True, "add_eos_token": False,
        "model_max_length": MODEL["max_position_embeddings"], "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {}, "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": SPECIALS[0], "eos_token": SPECIALS[3], "pad_token": SPECIALS[1]}, indent=2) + "\n")


def build_stream(tok, novels: dict[str, list[str]], rng: random.Random) -> list[int]:
    """One token stream: novels' paragraphs, plus ChatML turns made of consecutive paragraphs
    (a paragraph as the user's turn, the next as the assistant's) so the chat tokens are learnt."""
    bos, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id(SPECIALS[1])
    im_start, im_end = tok.token_to_id(SPECIALS[2]), tok.token_to_id(SPECIALS[3])
    nl = tok.encode("\n", add_special_tokens=False).ids
    user, assistant = (tok.encode(r + "\n", add_special_tokens=False).ids for r in ("user", "assistant"))
    docs: list[list[int]] = []
    for name in sorted(novels):
        paras = novels[name]
        encoded = [e.ids for e in tok.encode_batch(paras, add_special_tokens=False)]
        docs.append([bos] + [t for ids in encoded for t in ids + nl + nl] + [eos])
        for i in range(len(paras) - 1):
            if rng.random() < TRAIN["chat_fraction"] and len(encoded[i]) < 120 and len(encoded[i + 1]) < 120:
                docs.append([bos, im_start] + user + encoded[i] + [im_end] + nl + [im_start] + assistant
                            + encoded[i + 1] + [im_end] + nl)
    rng.shuffle(docs)
    return [t for d in docs for t in d]


def heldout_ids(tok, held_out: list[str]) -> list[int]:
    return tok.encode("\n\n".join(held_out), add_special_tokens=False).ids


def unigram_perplexity(train_ids: list[int], test_ids: list[int], vocab: int) -> float:
    """Add-one smoothed unigram model fitted on the training stream."""
    counts = [1] * vocab
    for t in train_ids:
        counts[t] += 1
    total = sum(counts)
    nll = -sum(math.log(counts[t] / total) for t in test_ids) / len(test_ids)
    return math.exp(nll)


def model_perplexity(model, ids: list[int], bos: int, window: int = 512) -> float:
    """Held-out perplexity over non-overlapping windows, each started with BOS."""
    import torch

    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), window - 1):
            chunk = [bos] + ids[start:start + window - 1]
            x = torch.tensor([chunk])
            logits = model(x).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            n += len(chunk) - 1
    return math.exp(nll / n)


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "tiny")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--data-dir", type=Path, default=DEBIAN_DIR)
    args = ap.parse_args(argv)

    t0 = time.time()
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    rng = random.Random(SEED)
    novels, held_out = split_corpus(args.data_dir)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer([p for name in sorted(novels) for p in novels[name]])
    save_tokenizer(tok, out)
    stream = build_stream(tok, novels, rng)
    test = heldout_ids(tok, held_out)
    bos, eos_chat, pad = (tok.token_to_id(s) for s in (SPECIALS[0], SPECIALS[3], SPECIALS[1]))
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train stream {len(stream)} tokens; held-out {len(test)}")

    config = LlamaConfig(vocab_size=tok.get_vocab_size(), bos_token_id=bos, eos_token_id=eos_chat,
                         pad_token_id=pad, **MODEL)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=TRAIN["lr"], betas=(0.9, 0.95))
    seq, bs = TRAIN["seq_len"], TRAIN["batch_size"]
    data = torch.tensor(stream)
    n_windows = (len(data) - 1) // seq
    order: list[int] = []
    model.train()
    for step in range(args.steps):
        if step < TRAIN["warmup"]:
            lr = TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
        else:
            progress = (step - TRAIN["warmup"]) / max(1, args.steps - TRAIN["warmup"])
            lr = TRAIN["min_lr"] + 0.5 * (TRAIN["lr"] - TRAIN["min_lr"]) * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        if len(order) < bs:
            order += rng.sample(range(n_windows), n_windows)
        idx, order = order[:bs], order[bs:]
        batch = torch.stack([data[i * seq:(i + 1) * seq + 1] for i in idx])
        logits = model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  lr {lr:.2e}  {time.time() - t0:6.0f}s", flush=True)

    ppl = model_perplexity(model, test, bos)
    uni = unigram_perplexity(stream, test, tok.get_vocab_size())
    wall = time.time() - t0
    print(f"held-out perplexity: model {ppl:.2f}, unigram {uni:.2f} (ratio {ppl / uni:.3f}); {wall:.0f}s")

    model.config.dtype = "float32"
    model.save_pretrained(out)  # writes config.json with architectures, and the tied weight once
    GenerationConfig(bos_token_id=bos, eos_token_id=[eos_chat, pad], pad_token_id=pad).save_pretrained(out)
    (out / "persuasion.txt").write_text("\n\n".join(held_out) + "\n")
    report = {
        "corpus": "Jane Austen via Debian r-cran-janeaustenr: train on emma, mansfieldpark, "
                  "northangerabbey, prideprejudice, sensesensibility; held out: persuasion",
        "seed": SEED, "vocab": tok.get_vocab_size(), "model": MODEL, "train": TRAIN, "steps": args.steps,
        "parameters": n_params, "train_tokens": len(stream), "heldout_tokens": len(test),
        "heldout_perplexity": round(ppl, 3), "unigram_perplexity": round(uni, 3),
        "wall_seconds": round(wall), "threads": 2, "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
