"""The importance matrix (llama-imatrix's job), computed by running the Hugging Face model.

For every linear layer of the decoder blocks: the sum over calibration tokens of the squared input
activation, per input column, and the number of tokens. Named as the GGUF tensors they weigh
(``blk.N.attn_q.weight``, ...) and written in llama.cpp's GGUF imatrix format (``<name>.in_sum2`` and
``<name>.counts`` F32 tensors, ``imatrix.datasets`` / ``chunk_count`` / ``chunk_size``), which the vendored
llama.cpp's quantizer reads; its legacy ``.dat`` format is read too. Like llama-imatrix (default), the
output head is left out. The model runs in float32 on the CPU under forward hooks, one sample at a time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


@dataclass
class IMatrix:
    sums: dict[str, np.ndarray]  # GGUF tensor name -> float32 [n_in] sum of squared inputs
    counts: dict[str, int]  # GGUF tensor name -> tokens seen
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantizer weighs columns by: sums / count (ones where nothing was counted)."""
        return {n: (s / np.float32(self.counts[n])).astype(np.float32) if self.counts[n] > 0
                else np.ones_like(s) for n, s in self.sums.items()}


def tokenizer_for(model_dir: Path) -> tuple[Any, int | None]:
    """(encode without special tokens, BOS id if the tokenizer adds one) from the checkpoint's tokenizer."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    probe = tok("a").input_ids
    bos = tok.bos_token_id if tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id else None

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    return encode, bos


def load_hf(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    return model


def gguf_names(model_dir: Path, module_names: list[str]) -> dict[str, str]:
    """HF linear module name -> the GGUF tensor name of its weight (decoder blocks only)."""
    from converters.gguf.base import open_model

    _, fam = open_model(str(model_dir), None, False)
    out = {}
    for m in module_names:
        try:
            name = fam.map_name(m + ".weight")
        except Exception:  # a module the GGUF mapping does not carry (e.g. a fused or skipped tensor)
            continue
        if name and name.startswith("blk."):
            out[m] = name
    return out


def compute(model_dir: str | Path, tokens: np.ndarray, dataset: str, progress: bool = True) -> IMatrix:
    """Sum of squared inputs per column of every decoder linear layer over the ``tokens`` windows [n, L]."""
    import torch

    model_dir = Path(model_dir)
    model = load_hf(model_dir)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names = gguf_names(model_dir, list(linears))
    if not names:
        raise EdgekitError(f"{model_dir} has no decoder linear layers edgekit can name in GGUF",
                           "compute the importance matrix for a supported architecture")
    sums = {g: torch.zeros(linears[m].in_features, dtype=torch.float64) for m, g in names.items()}
    counts = dict.fromkeys(names.values(), 0)

    def hook(gname: str):
        def run(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[gname] += (x * x).sum(dim=0)
            counts[gname] += x.shape[0]
        return run

    handles = [linears[m].register_forward_pre_hook(hook(g)) for m, g in names.items()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tokens), unit="chunk", desc="imatrix", leave=False, disable=None)
    try:
        with torch.inference_mode():
            for row in tokens:
                model(torch.as_tensor(row[None, :]), use_cache=False)
                if bar is not None:
                    bar.update(1)
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.close()
    return IMatrix({g: s.numpy().astype(np.float32) for g, s in sums.items()}, counts, [dataset],
                   chunk_count=len(tokens), chunk_size=int(tokens.shape[1]))


def write(path: Path, im: IMatrix) -> None:
    """llama.cpp's GGUF imatrix file (as llama-imatrix saves it)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="")
    # GGUFWriter adds general.architecture; llama.cpp's imatrix files carry general.type instead
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", im.datasets or ["unknown"])
    w.add_uint32("imatrix.chunk_count", im.chunk_count)
    w.add_uint32("imatrix.chunk_size", im.chunk_size)
    for name in sorted(im.sums):
        w.add_tensor(name + ".in_sum2", im.sums[name].reshape(1, -1).astype(np.float32))
        w.add_tensor(name + ".counts", np.array([[float(im.counts[name])]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read(path: str | Path) -> IMatrix:
    """An imatrix file in llama.cpp's GGUF format or its legacy binary format."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgekitError(f"imatrix file {p} not found", "pass a file written by `edgekit imatrix` or llama-imatrix")
    with p.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return _read_gguf(p)
    try:
        return _read_legacy(p)
    except (struct.error, ValueError, UnicodeDecodeError):
        raise EdgekitError(f"{p} is not an importance matrix (neither GGUF imatrix nor legacy .dat)",
                           "pass a file written by `edgekit imatrix` or llama-imatrix") from None


def _read_gguf(p: Path) -> IMatrix:
    import gguf

    r = gguf.GGUFReader(str(p))
    sums, counts = {}, {}
    for t in r.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[:-len(".in_sum2")]] = np.array(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[:-len(".counts")]] = int(round(float(np.array(t.data).reshape(-1)[0])))
    if not sums or set(sums) != set(counts):
        raise EdgekitError(f"{p} is a GGUF file but not an importance matrix",
                           "pass a file written by `edgekit imatrix` or llama-imatrix")

    def field_value(key: str) -> Any:
        f = r.get_field(key)
        return None if f is None else f.contents()

    datasets = field_value("imatrix.datasets") or []
    return IMatrix(sums, counts, list(datasets), int(field_value("imatrix.chunk_count") or 0),
                   int(field_value("imatrix.chunk_size") or 0))


def _read_legacy(p: Path) -> IMatrix:
    data = p.read_bytes()
    at = 0

    def take(fmt: str) -> tuple:
        nonlocal at
        out = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return out

    (n,) = take("<i")
    if n < 1 or n > 1_000_000:
        raise ValueError("bad entry count")
    sums, counts = {}, {}
    for _ in range(n):
        (length,) = take("<i")
        name = data[at:at + length].decode()
        at += length
        ncall, nval = take("<ii")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=at).astype(np.float32)
        at += 4 * nval
        # legacy entries hold (sum / tokens) * ncall: store as sums with count ncall, so means() is theirs
        sums[name], counts[name] = values, ncall
    return IMatrix(sums, counts)


def check_matches(im: IMatrix, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse an imatrix whose tensors do not belong to the model (names absent or column counts differ)."""
    known = [n for n in im.sums if n in shapes]
    wrong = [n for n in known if shapes[n][-1] != im.sums[n].size]
    if not known or wrong:
        example = wrong[0] if wrong else next(iter(im.sums), "?")
        raise EdgekitError(f"the importance matrix {source} is from another model ({example} does not match)",
                           "compute one for this model with `edgekit imatrix MODEL -o FILE`, or drop --imatrix")
