"""``make demo``: the end-to-end job on the bundled models, one step after another, with timings.

Today: prepare SmolLM2-135M-Instruct as a Hugging Face checkpoint and inspect it and edgekit-tiny.
Each converter and runtime extends this list as it lands.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgekit.inspect import format_text, inspect
from edgekit.models import smollm2, tiny_path


def _step(title: str, fn: Callable[[], str]) -> None:
    print(f"\n== {title}", flush=True)
    t0 = time.perf_counter()
    out = fn()
    if out:
        print(out)
    print(f"-- {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    smol = smollm2.ensure()
    _step("inspect edgekit-tiny", lambda: format_text(inspect(tiny_path())))
    _step("inspect SmolLM2-135M-Instruct", lambda: format_text(inspect(smol)))


if __name__ == "__main__":
    main()
