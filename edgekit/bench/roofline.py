"""Bytes an artifact occupies and bytes of weights one decode step reads: decode is memory-bound, so tokens/s times
bytes per token over the host's bandwidth says how close a runtime gets to the hardware's limit."""

from __future__ import annotations

from pathlib import Path


def artifact_bytes(path: Path) -> int:
    """Size on disk: the file, or every file under the directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights a decode step reads: every matrix once; the embedding table only where it is also the output
    projection (otherwise a step gathers one row of it). GGUF and ONNX from their tensor tables; a Core ML package
    from its weight file (embedding included: its table is not read here)."""
    if path.is_file() or path.suffix == ".gguf":
        from gguf import GGUFReader

        tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
        return sum(tensors.values()) - (tensors.get("token_embd.weight", 0) if "output.weight" in tensors else 0)
    onnx_file = path / "model.onnx"
    if onnx_file.exists():
        import onnx

        model = onnx.load(str(onnx_file), load_external_data=False)
        sizes = {}
        for init in model.graph.initializer:
            ext = {e.key: e.value for e in init.external_data}
            sizes[init.name] = int(ext["length"]) if "length" in ext else len(init.raw_data)
        embed = next((k for k in sizes if "embed_tokens" in k), None)
        lm_head = next((k for k in sizes if "lm_head" in k), None)
        return sum(sizes.values()) - (sizes[embed] if embed and lm_head else 0)
    return sum(p.stat().st_size for p in path.rglob("weight*.bin"))
