"""quant.layerwise: the layer-by-layer driver reproduces the Hugging Face model layer for layer, visits the
linears in true-sequential stages, and routes each expert only its tokens."""

from __future__ import annotations

import numpy as np
import pytest

from quant import layerwise


class Recording(layerwise.Callback):
    def __init__(self) -> None:
        self.outputs, self.order, self.rows = [], [], {}

    def observe(self, lin, x):
        self.rows[lin.name] = self.rows.get(lin.name, 0) + x.shape[0]

    def quantize(self, ctx, stage):
        self.order.append((ctx.index, sorted(lin.role for lin in stage.linears)))

    def end_layer(self, ctx):
        import torch

        self.outputs.append(torch.cat([ctx.forward(b) for b in range(ctx.batches)]))


class Final(Recording):
    """A callback whose stages are final (as GPTQ's): the driver skips the attention once o is done."""

    stages_final = True

    def begin_layer(self, ctx):
        o = next(lin for lin in ctx.linears if lin.role == "o")
        self.o_calls = 0

        def count(*_):
            self.o_calls += 1

        self.handle = o.module.register_forward_pre_hook(count)

    def end_layer(self, ctx):
        super().end_layer(ctx)
        self.handle.remove()
        # o is reached in its own stage, runs on the check of batch 0 and in the MLP stage; no more
        self.o_counts = getattr(self, "o_counts", []) + [(self.o_calls, ctx.batches)]


def _hf_hidden(model_dir, tokens):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("final", [False, True, "spool"], ids=["recompute", "skip-attention", "spooled"])
@pytest.mark.parametrize("arch", ["tiny", "mixtral", "gpt2"])
def test_layers_match_the_hf_model_and_stages_run_in_order(arch, final, tiny_dir, random_model):
    model_dir = tiny_dir if arch == "tiny" else random_model(arch)
    tokens = np.random.default_rng(0).integers(5, 400, size=(3, 24))
    cb = Final() if final else Recording()
    summary = layerwise.run(model_dir, tokens, cb, batch_size=2, progress=False, spool=final == "spool")
    hidden = _hf_hidden(model_dir, tokens)
    # the last hidden state HF returns has the final norm applied; every earlier one is a raw layer output
    for i, out in enumerate(cb.outputs[:-1]):
        ref = hidden[i + 1]
        assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max()), f"layer {i}"
    assert summary["layers"] == len(cb.outputs)
    if final:  # o's stage stops at o; then the check of batch 0 and the MLP stage: the attention runs no more
        assert all(calls == 2 * batches + 1 for calls, batches in cb.o_counts), cb.o_counts
    first = [roles for index, roles in cb.order if index == 0]
    if arch == "tiny":
        assert first == [["k", "q", "v"], ["o"], ["gate", "up"], ["down"]]
        assert all(n == tokens.size for n in cb.rows.values()) and len(cb.rows) == 4 * 7
    elif arch == "gpt2":
        assert first == [["qkv"], ["o"], ["up"], ["down"]]
    else:
        experts = [roles for roles in first if "expert_gate" in roles][0]
        assert set(experts) == {"expert_gate", "expert_up"}
        routed = sum(n for name, n in cb.rows.items() if ".layers.0." in name and name.endswith(".w1"))
        assert routed == tokens.size * 2  # top-2 routing: every token reaches two experts


def test_a_family_without_a_description_is_refused(tmp_path, tiny_dir):
    import json
    import shutil

    from edgekit.errors import EdgekitError

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "falcon"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgekitError, match="not supported"):
        layerwise.run(d, np.zeros((1, 8), dtype=np.int64), layerwise.Callback(), progress=False)
