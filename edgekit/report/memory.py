"""The memory plan of an artifact: what its process will hold at its peak, predicted before it runs, from the
artifact's own tensor table and the model's shape: weights as the runtime holds them + KV cache at the context +
activations of the largest forward + runtime overhead.

The rules are the runtimes' own, as measured on x86-64 (llama.cpp of llama-cpp-python 0.3.36, onnxruntime 1.32);
the constants were fitted on edgekit-tiny and a random 38M-parameter llama (hidden 768, ffn 2048, 6 layers, vocab
512) at contexts 640 and 2048, not on the models a report checks them against:

* GGUF: the file is memory-mapped and every page is read; the CPU backend repacks Q4_0, Q4_K and IQ4_NL matrices
  into an interleaved copy (x86 AVX2; Q2_K with AVX-512); KV cache f16; a compute buffer for a 512-token ubatch;
  llama.cpp's vocabulary tables (~340 bytes per token, BPE merges included); the interpreter with numpy and
  libllama loaded (58 MiB).
* ONNX on the CPU provider: fp32 initializers are held once (MatMul weights prepacked in place of the original);
  fp16 ones become fp32 (x2); 4-bit MatMulNBits codes are prepacked (x0.6), 8-bit ones held and dequantized per
  call (x1.5); an initializer both gathered and multiplied
  (a tied embedding and head) keeps its original beside the fp32 prepacked copy. A forward of ``chunk`` tokens
  holds the logits of every token twice (onnxruntime's output and ours), the KV cache as past and present (fp32),
  the attention scores and the MLP's intermediates, plus a 20 MiB arena floor; the interpreter with onnxruntime
  and the tokenizer: 97.5 MiB.
* Core ML (not measurable here): the weight file, an fp16 KV state, 100 MiB of runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIB = 2**20
UBATCH = 512
GGUF_BASE = 58 * MIB
GGUF_VOCAB_BYTES = 340
GGUF_REPACKED = {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"}  # x86 AVX2 (ggml-cpu/repack.cpp)
ONNX_BASE = int(97.5 * MIB)
ONNX_ARENA_FLOOR = 20 * MIB
COREML_BASE = 100 * MIB
# MatMulNBits codes as held, by bit width: 4-bit prepacked smaller than stored; 8-bit kept and dequantized per call
UINT8_HELD = {4: 0.6, 8: 1.5}


def _kv_bytes(spec: Any, context: int, element: int) -> int:
    return 2 * spec.num_layers * context * spec.num_kv_heads * spec.head_dim * element


def _gguf(path: Path, spec: Any, context: int, chunk: int) -> dict[str, int]:
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    repacked = sum(int(t.n_bytes) for t in tensors
                   if t.tensor_type.name in GGUF_REPACKED and t.name != "token_embd.weight" and len(t.shape) == 2)
    ubatch = min(UBATCH, max(1, chunk))
    compute = ubatch * 4 * (4 * spec.hidden_size + 3 * spec.intermediate_size)
    return {"weights": path.stat().st_size + repacked, "kv_cache": _kv_bytes(spec, context, 2),
            "activations": compute, "runtime": GGUF_BASE + GGUF_VOCAB_BYTES * spec.vocab_size}


def _onnx_weights(model_file: Path) -> int:
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    users: dict[str, set[str]] = {}
    bits: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
        if node.op_type == "MatMulNBits":
            bits[node.input[1]] = next((a.i for a in node.attribute if a.name == "bits"), 4)
    total = 0.0
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        size = int(ext["length"]) if "length" in ext else len(init.raw_data)
        if init.data_type == onnx.TensorProto.FLOAT16:
            held = 2.0 * size
        elif init.data_type == onnx.TensorProto.UINT8:
            held = UINT8_HELD[bits.get(init.name, 4)] * size
        else:
            held = float(size)
        ops = users.get(init.name, set())
        if "Gather" in ops and ops & {"MatMul", "Gemm"}:  # the gathered original stays beside the prepacked copy
            held += size if init.data_type == onnx.TensorProto.FLOAT16 else held
        total += held
    return int(total)


def _onnx(path: Path, spec: Any, context: int, chunk: int) -> dict[str, int]:
    logits = 2 * chunk * spec.vocab_size * 4
    kv = 2 * _kv_bytes(spec, context, 4)  # past and present
    scores = chunk * context * spec.num_heads * 4
    mlp = 3 * chunk * spec.intermediate_size * 4
    return {"weights": _onnx_weights(path / "model.onnx"), "kv_cache": kv,
            "activations": ONNX_ARENA_FLOOR + logits + scores + mlp, "runtime": ONNX_BASE}


def _coreml(path: Path, spec: Any, context: int, chunk: int) -> dict[str, int]:
    weights = sum(p.stat().st_size for p in path.rglob("weight*.bin"))
    return {"weights": weights, "kv_cache": _kv_bytes(spec, context, 2), "activations": 0, "runtime": COREML_BASE}


PLANNERS = {"gguf": _gguf, "onnx": _onnx, "coreml": _coreml}


def plan(artifact: Path, fmt: str, spec: Any, context: int, chunk: int) -> dict[str, int]:
    """Predicted peak memory of a process running ``artifact`` with a KV cache of ``context`` tokens whose largest
    forward is ``chunk`` tokens: its parts (weights, kv_cache, activations, runtime) and their ``total``, in bytes.
    ``spec`` is the model's :class:`edgekit.spec.ModelSpec`."""
    parts = PLANNERS[fmt](Path(artifact), spec, context, max(1, chunk))
    return {**parts, "total": sum(parts.values())}
