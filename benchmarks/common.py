"""What more than one benchmark needs: the SmolLM2 artifacts they measure, made once and kept between runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def q8_0_gguf(cache: Path) -> Path:
    """SmolLM2 q8_0 from edgekit convert (what make demo makes), made once into ``cache`` and kept there."""
    sys.path.insert(0, str(ROOT))
    from edgekit.models import smollm2

    out = cache / "SmolLM2-135M-Instruct-q8_0.gguf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "edgekit.cli", "convert", str(smollm2.ensure()), "--to", "gguf",
                        "--outtype", "q8_0", "-o", str(out)], check=True, cwd=ROOT)
    return out
