"""`edgekit bench`: llama-bench's measurements (prefill and decode tokens/s, mean ± sd over repetitions) for GGUF,
ONNX and Core ML artifacts alike, on the same token trace, with TTFT, load time, peak RSS, file size and the
decode speed as a share of this host's memory-bandwidth roofline.

:func:`edgekit.bench.run.bench` is the API; each artifact is measured in a child process of its own
(:mod:`edgekit.bench.measure`) so its peak RSS is its own and a crash is one failed row."""
