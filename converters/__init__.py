"""Artifact writers: one subpackage per format (gguf/, onnx/, coreml/), each with per-architecture
mapping tables over a shared base. Input is a Checkpoint + ModelSpec (optionally quantized tensors);
output is an artifact directory or file plus its edgekit.json manifest."""
