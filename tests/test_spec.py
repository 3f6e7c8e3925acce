"""ModelSpec from config.json: parameter counts against instantiated transformers models, both
config styles, rope scaling kinds, unsupported architectures."""

import json

import pytest
import torch
import transformers

from edgekit.errors import EdgekitError
from edgekit.models.random import ARCHITECTURES
from edgekit.spec import from_config


def _numel_of_transformers_model(directory) -> int:
    config = transformers.AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameter_count_matches_transformers(random_model, arch):
    directory = random_model(arch)
    spec = from_config(json.loads((directory / "config.json").read_text()))
    assert spec.architecture == arch
    assert spec.parameter_count() == _numel_of_transformers_model(directory)


def test_parameter_count_real_models(tiny_dir, smollm2_dir):
    for directory in (tiny_dir, smollm2_dir):
        spec = from_config(json.loads((directory / "config.json").read_text()))
        assert spec.parameter_count() == _numel_of_transformers_model(directory)
    spec = from_config(json.loads((smollm2_dir / "config.json").read_text()))
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.vocab_size) == (30, 9, 3, 49152)


def _to_transformers4(config: dict) -> dict:
    """Rewrite a transformers 5 config into the transformers 4 style (rope_theta + rope_scaling)."""
    old = dict(config)
    params = old.pop("rope_parameters", None)
    if params and "full_attention" in params:  # per layer kind (gemma3): the global rope and the local base
        old["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
        params = params["full_attention"]
    if params:
        params = dict(params)
        old["rope_theta"] = params.pop("rope_theta")
        if "partial_rotary_factor" in params:
            old["partial_rotary_factor"] = params.pop("partial_rotary_factor")
        if params.get("rope_type", "default") != "default":
            params["type"] = params.pop("rope_type")
            old["rope_scaling"] = params
    return old


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_both_config_styles_give_the_same_spec(random_model, arch):
    config = json.loads((random_model(arch) / "config.json").read_text())
    assert from_config(_to_transformers4(config)) == from_config(config)


SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                 "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_rope_scaling_both_styles(kind):
    t5 = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
          "max_position_embeddings": 256, "rope_parameters": {"rope_theta": 500000.0, **SCALINGS[kind]}}
    spec = from_config(t5)
    assert spec.rope.scaling == kind and spec.rope.theta == 500000.0
    t4 = dict(t5)
    params = dict(t4.pop("rope_parameters"))
    t4["rope_theta"] = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")
    t4["rope_scaling"] = params
    assert from_config(t4) == spec
    # transformers itself accepts the transformers 4 form
    cfg = transformers.LlamaConfig(**{k: v for k, v in t4.items() if k not in ("model_type", "architectures")})
    assert cfg.rope_parameters["rope_type"] == kind


def test_unsupported_model_type_names_the_supported_ones():
    with pytest.raises(EdgekitError) as err:
        from_config({"model_type": "mamba"})
    assert "mamba" in str(err.value) and "llama" in str(err.value) and "qwen2_moe" in str(err.value)


def test_moe_and_family_details(random_model):
    spec = from_config(json.loads((random_model("qwen2_moe") / "config.json").read_text()))
    assert spec.moe.experts == 4 and spec.moe.experts_per_token == 2 and spec.moe.shared_expert_intermediate == 64
    spec = from_config(json.loads((random_model("gemma2") / "config.json").read_text()))
    assert spec.sliding_window == 32 and spec.extra["final_logit_softcapping"] == 30.0 and spec.tied_embeddings
    spec = from_config(json.loads((random_model("gpt2") / "config.json").read_text()))
    assert spec.rope is None and spec.norm == "layer" and spec.context_length == 256
