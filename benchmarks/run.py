"""``make bench``: run every benchmark module in this folder, one after another, in fresh processes.

Each benchmark measures edgekit against the reference tool in the same run and prints ratios; none
asserts a time. Pass names to run a subset: ``python benchmarks/run.py convert_gguf``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run", "__init__", "common"))
    failed = []
    for name in names:
        print(f"\n=== benchmarks/{name}.py", flush=True)
        if subprocess.call([sys.executable, str(HERE / f"{name}.py")]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
