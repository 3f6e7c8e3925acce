"""The Android app's logic library (mobile_demo/android/edgekit-core: tokenizer, chat format, sampler, KV-cache
loop, stream decoder) compiled with Debian's Kotlin compiler and run under JUnit 4 over the shared vectors.

Debian gives: `kotlin` (kotlinc 1.3.31), `junit4`, and `libandroid-json-java` (the org.json API Android itself
ships); `make mobile-tools` installs them (about 35 s here). Maven Central is not reachable from this machine,
so the Gradle build, onnxruntime-android and the app module are exercised only by .github/workflows/android.yml.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mobile_demo" / "android" / "edgekit-core"
VECTORS = ROOT / "mobile_demo" / "vectors"
JARS = [Path("/usr/share/java") / j for j in ("kotlin-stdlib.jar", "com.android.json.jar", "junit4.jar",
                                              "hamcrest-core.jar")]
MISSING = [str(j) for j in JARS if not j.is_file()]

pytestmark = pytest.mark.skipif(
    shutil.which("kotlinc") is None or bool(MISSING),
    reason="Debian's kotlin / junit4 / libandroid-json-java are not installed (`make mobile-tools`); "
           "the Kotlin tests then run only in .github/workflows/android.yml")


def test_kotlin_core_passes_shared_vectors(tmp_path):
    jar = tmp_path / "core.jar"
    sources = [str(CORE / "src" / "main" / "kotlin"), str(CORE / "src" / "test" / "kotlin")]
    cp = ":".join(str(j) for j in JARS[1:])
    proc = subprocess.run(["kotlinc", "-nowarn", *sources, "-cp", cp, "-d", str(jar)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokenizers = tmp_path / "tokenizers"
    (tokenizers / "edgekit-tiny").mkdir(parents=True)
    shutil.copy(ROOT / "edgekit" / "data" / "tiny" / "tokenizer.json", tokenizers / "edgekit-tiny")
    names = {p.stem for p in VECTORS.glob("*.json")}
    smollm2 = [n for n in names if n.startswith("smollm2")]
    if smollm2:
        from edgekit.models import smollm2 as smol

        (tokenizers / smollm2[0]).mkdir()
        shutil.copy(smol.ensure() / "tokenizer.json", tokenizers / smollm2[0])
    classes = ["dev.edgekit.core.VectorsTest", "dev.edgekit.core.SamplerTest", "dev.edgekit.core.KvCacheLoopTest"]
    run = subprocess.run(["java", f"-Dedgekit.vectors={VECTORS}", f"-Dedgekit.tokenizers={tokenizers}",
                          "-cp", ":".join([str(jar), *(str(j) for j in JARS)]), "org.junit.runner.JUnitCore",
                          *classes], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    assert "OK (14 tests)" in run.stdout, run.stdout[-2000:]
    assert "skip" not in run.stdout  # every vectors file had its tokenizer
