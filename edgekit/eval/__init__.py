"""``edgekit eval``: what quantization cost, measured as llama-perplexity measures it.

The text is tokenized by the artifact's own tokenizer and cut into non-overlapping windows of ``ctx`` tokens
(the first of each replaced by BOS when the model adds one); each window is evaluated from an empty cache and
only its second half is scored (each position predicting the next token), as llama-perplexity scores. Against
the reference (the fp32 Hugging Face model, or any GGUF): mean KL divergence, its 99th percentile and max,
top-1 agreement and Δppl. The reference's logits are computed once per (reference, tokens, ctx) and cached on
disk as the top-k logits plus the log-sum-exp (:mod:`edgekit.eval.reference`).
"""
