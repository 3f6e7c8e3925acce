"""Cross-check edgekit's GPTQ against llm-compressor's on the same layer, calibration inputs and grid.

llm-compressor (with compressed-tensors) pins its own torch/transformers ranges, so it is not a dependency:
install it into a throwaway venv that sees the shared one and run this script with that venv's python::

    python -m venv /tmp/xvenv && echo "$(python -c 'import site;print(site.getsitepackages()[0])')" \\
        > "$(/tmp/xvenv/bin/python -c 'import site;print(site.getsitepackages()[0])')/shared.pth"
    /tmp/xvenv/bin/pip install --no-deps llmcompressor compressed-tensors loguru datasets multiprocess pandas \\
        python-dateutil pytz tzdata xxhash dill pyarrow
    /tmp/xvenv/bin/python benchmarks/gptq_crosscheck.py

The grid is 4-bit asymmetric, group 32 (onnxruntime MatMulNBits asym = compressed-tensors' int4 asym group with
a min-max observer: the same range containing zero, zero point shifted by 8). llm-compressor always uses static
groups (scales from the original weight), with or without its static activation ordering; edgekit's act-order
mode is the same scheme, its default mode fixes each group when the sweep reaches it. Error = ||WX - ŴX||² on the
calibration inputs, the quantity GPTQ minimises.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    from transformers import AutoModelForCausalLM

    from edgekit.models import tiny_path
    from quant import grids
    from quant.gptq import gptq, output_error
    from quant.layerwise import calibration_tokens

    torch.manual_seed(0)
    model_dir = tiny_path()
    tokens, _ = calibration_tokens(model_dir, samples=8, seqlen=128)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    names = [f"model.layers.{i}.{m}" for i in (0, 2) for m in ("self_attn.q_proj", "self_attn.o_proj",
                                                               "mlp.gate_proj", "mlp.down_proj")]
    sums, counts = {}, {}

    def hook(name):
        def pre(_m, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.t() @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        model(torch.as_tensor(tokens))
    for h in handles:
        h.remove()
    grid = grids.get("onnx:int4", block_size=32, symmetric=False)
    rows = []
    for name in names:
        w = model.get_submodule(name).weight.detach().float()
        n = counts[name]
        H = 2.0 / n * sums[name]
        p = grid.block_params(w.numpy().reshape(w.shape[0], -1, 32))
        scale = torch.from_numpy(p["scale"][..., 0])
        zp = torch.from_numpy(p["zp"][..., 0]) - 8  # compressed-tensors' signed int4 domain
        row = {"linear": name}
        for order in (None, "static"):
            args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32,
                                    actorder=order)
            theirs, _, fallback = quantize_weight(w[None].clone(), H[None].clone(), scale[None], zp[None], None, args)
            assert not bool(fallback.any())
            row[f"llmc_{order or 'none'}"] = output_error(w - theirs[0], H, n)
        for act_order in (False, True):
            ours = gptq(w.numpy(), H, n, grid, act_order=act_order)
            row[f"edgekit_{'act' if act_order else 'dyn'}"] = ours.err_gptq
            row["rtn"] = ours.err_rtn
        row["static_ratio"] = row["edgekit_act"] / row["llmc_static"]
        row["default_vs_llmc_none"] = row["edgekit_dyn"] / row["llmc_none"]
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    print("| linear | RTN | llm-compressor (static groups) | edgekit act-order (static) | ratio | llm-compressor "
          "actorder=static | edgekit default (dynamic groups) | ratio vs llmc static groups |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['linear']} | {r['rtn']:.4g} | {r['llmc_none']:.4g} | {r['edgekit_act']:.4g} | "
              f"{r['edgekit_act'] / r['llmc_static']:.3f} | {r['llmc_static']:.4g} | {r['edgekit_dyn']:.4g} | "
              f"{r['edgekit_dyn'] / r['llmc_none']:.3f} |")


if __name__ == "__main__":
    main()
