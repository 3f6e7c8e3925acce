"""Execution: the Engine protocol, the shared sampling and generation loop, device profiles, and one
backend file each for llama.cpp (GGUF), onnxruntime (ONNX) and Core ML."""
