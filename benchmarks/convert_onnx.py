"""edgekit convert --to onnx vs onnxruntime-genai's model builder: wall time and peak RSS, fp32 and fp16.

The model is the random 1B-shaped fp16 Llama checkpoint of ``convert_gguf.py`` (2.21 GB, built once
into $EDGEKIT_BENCH_CACHE, default ~/.cache/edgekit/bench); fp32 output (4.4 GB) is past the 2 GiB
protobuf limit, so both tools write external data. The reference is
``python -m onnxruntime_genai.models.builder -i MODEL -o DIR -p fp32|fp16 -e cpu`` (onnxruntime-genai,
in the test extra; it loads the model with transformers and torch). The two alternate, round by round,
each in its own process, measured by the wrapper of ``convert_gguf.py`` (wall clock; ru_maxrss, the
largest process; the sampled peak of the whole process tree's RSS) after a plain copy of the weights
(printed: the floor for any converter that reads and writes them) has put them in the page cache.
Each writes a new directory, deleted afterwards. Medians of the rounds; peak RSS the largest seen.

    python benchmarks/convert_onnx.py [fp32|fp16 ...] [--rounds N]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from convert_gguf import CACHE, build_model, compare, kinds_and_rounds, page_in  # noqa: E402


def main(dtypes: list[str], rounds: int) -> int:
    model = build_model()
    copy = page_in(model)
    size = (model / "model.safetensors").stat().st_size
    print(f"model: {model} ({size / 1e9:.2f} GB fp16); plain copy of the weights: {copy:.1f} s; "
          f"median of {rounds} alternating rounds, peak RSS the largest seen")
    edgekit = str(Path(sys.executable).with_name("edgekit"))
    os.environ["HF_HUB_OFFLINE"] = "1"  # the builder reads the local checkpoint only
    with tempfile.TemporaryDirectory(dir=CACHE) as d:
        for dtype in dtypes:
            ours, theirs = Path(d) / f"edgekit-{dtype}", Path(d) / f"builder-{dtype}"
            sides = {"edgekit": ([edgekit, "convert", str(model), "--to", "onnx", "--dtype", dtype, "-o", str(ours)],
                                 ours),
                     "builder": ([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o",
                                  str(theirs), "-p", dtype, "-e", "cpu", "-c", str(Path(d) / "hf-cache")], theirs)}
            print(json.dumps({"dtype": dtype, **compare(sides, rounds)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*kinds_and_rounds(sys.argv[1:], ["fp32", "fp16"])))
