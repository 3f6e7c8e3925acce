"""Helpers shared by the tests: run the CLI as a user would and check its error contract."""

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``edgekit`` console script as a user would."""
    exe = Path(sys.executable).with_name("edgekit")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=900)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit 2, one line on stderr starting 'edgekit: error:', no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgekit: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def converted(src: Path, out: Path, *args: str) -> Path:
    """``edgekit convert SRC ARGS -o OUT`` through the CLI, which must succeed; returns OUT."""
    proc = run_cli("convert", str(src), *args, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def random_lora(model, directory: Path, std: float):
    """Give ``model`` a seeded LoRA (r 4, alpha 8 on q/v/down) with lora_B ~ N(0, std), save the adapter in
    ``directory``, and return the model with it merged (peft's own merge: the reference)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * std)
    peft_model.save_pretrained(directory)
    return peft_model.merge_and_unload().eval()
