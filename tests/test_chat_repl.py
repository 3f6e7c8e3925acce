"""The interactive chat of ``edgekit run``, driven through a real pseudo-terminal (pexpect) as a person
would: line editing and history, commands, Ctrl-C during an answer, a conversation longer than the
context; plus the plain line-reading mode on a pipe, ``-p`` on a chat model, and bytes that are not
UTF-8. Answers are checked against the same model's greedy answer through ``edgekit run -p --json``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

pexpect = pytest.importorskip("pexpect")
pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parent.parent
LEFT, UP, CTRL_C, CTRL_D = "\x1b[D", "\x1b[A", "\x03", "\x04"
STATS = re.compile(r"prompt: (\d+) tokens \((\d+) evaluated\).*generation: (\d+) tokens.*\| (\w+)")


def _env() -> dict[str, str]:
    # PROMPT_TOOLKIT_NO_CPR: pexpect does not answer prompt_toolkit's cursor-position query
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm", "COLUMNS": "200", "LINES": "50"}


def spawn(*args: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "edgekit.cli", "run", *args], env=_env(), encoding="utf-8",
                          timeout=120, dimensions=(50, 200), cwd=str(ROOT))
    child.expect_exact(">>>")
    return child


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chat") / "tiny.gguf"
    proc = run_cli("convert", str(tiny_dir), "--to", "gguf", "--outtype", "f32", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def greedy(gguf: Path, prompt: str, *args: str) -> dict:
    proc = run_cli("run", str(gguf), "-p", prompt, "--json", "--threads", "2", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_line_editing_history_and_a_conversation_past_the_context(tiny_gguf):
    question, typo = "What do you think of Mr. Darcy?", "Wht do you think of Mr. Darcy?"
    ref = greedy(tiny_gguf, question, "-n", "12", "--context", "64")
    assert greedy(tiny_gguf, typo, "-n", "12", "--context", "64")["text"] != ref["text"]  # the edit shows
    child = spawn(str(tiny_gguf), "-n", "12", "--context", "64", "--threads", "2")
    # typed with a missing letter, fixed by moving left and inserting: the model gets the edited line
    child.send(typo)
    child.send(LEFT * (len(typo) - 2))  # to just after "Wh"
    child.send("a\r")
    child.expect(STATS)
    assert child.match.group(1) == str(ref["prompt_tokens"]) and child.match.group(3) == str(ref["eval_count"])
    assert ref["text"].strip() in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    child.expect_exact(">>>")
    child.send("/set num_predict 8\r")
    child.expect_exact(">>>")
    # editing a command, then recalling it from the history with Up
    child.send("/set temperatur 0.5" + LEFT * 4 + "e\r")
    child.expect_exact("set temperature = 0.5")
    child.expect_exact(">>>")
    child.send("/set top_k 3\r")
    child.expect_exact("set top_k = 3")
    child.expect_exact(">>>")
    child.send(UP + UP + "\r")
    child.expect_exact("set temperature = 0.5")
    child.expect_exact(">>>")
    child.send("/set temperature 0\r")
    child.expect_exact(">>>")
    # twelve turns of ~25 tokens each in a 64-token context: old turns go, the user is told once
    notices, answered = 0, 0
    for i in range(12):
        child.send(f"Tell me about the ball number {i}.\r")
        while True:
            k = child.expect([STATS, r"outgrew the context of 64 tokens", r"edgekit: error: [^\r\n]*"])
            if k == 0:
                answered += 1
                assert int(child.match.group(1)) <= 64
                break
            if k == 1:
                notices += 1
            else:
                pytest.fail(child.match.group(0))
        child.expect_exact(">>>")
    assert answered == 12 and notices == 1
    child.send("/help\r")
    child.expect_exact('"""')
    child.expect_exact(">>>")
    child.send(CTRL_D)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(smollm2_gguf):
    child = spawn(str(smollm2_gguf), "-n", "400", "--threads", "2", "--context", "1024")
    child.send("Write a long story about a dragon who learns to read.\r")
    child.expect_exact("\x1b[?2004l")  # prompt_toolkit hands the terminal back: the answer starts
    child.expect(r"\w+\W+\w+\W+\w+\W+\w+")  # a few words of it have streamed (~20 tokens/s here)
    child.send(CTRL_C)
    child.expect_exact("[answer stopped]")
    child.expect(STATS)
    stopped = int(child.match.group(3))
    assert 0 < stopped < 400 and child.match.group(4) == "cancelled"
    child.expect_exact(">>>")
    child.send("What is the capital of France?\r")
    child.expect(STATS)
    # the second prompt reuses the first turn from the KV cache: only the new part is evaluated
    assert int(child.match.group(2)) < int(child.match.group(1)) // 2 and int(child.match.group(3)) > 0
    child.expect_exact(">>>")
    child.send(CTRL_C)  # at an empty prompt: a hint, then a second Ctrl-C leaves
    child.expect_exact("Ctrl-C again")
    child.send(CTRL_C)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_pipe_mode_commands_multiline_and_invalid_utf8(tiny_gguf):
    script = (b"/set num_predict 4\n"
              b'"""first line\nsecond line"""\n'
              b"bad \xff\xfe bytes\n"
              b"Hello there\n"
              b"/bye\n"
              b"not read\n")
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", str(tiny_gguf), "--json", "--threads", "2"],
                          input=script, capture_output=True, env=_env(), cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr
    turns = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    assert len(turns) == 3 and all(t["eval_count"] <= 4 for t in turns)
    err = proc.stderr.decode()
    assert err.count("not valid UTF-8") == 1 and "Traceback" not in err
    # the multi-line block is one message: its prompt equals the template rendering of the two lines
    from transformers import AutoTokenizer

    from edgekit.models import tiny_path

    hf = AutoTokenizer.from_pretrained(str(tiny_path()))
    ids = hf.apply_chat_template([{"role": "user", "content": "first line\nsecond line"}],
                                 add_generation_prompt=True, tokenize=True, return_dict=False)
    assert turns[0]["prompt_tokens"] == len(ids)


def test_prompt_on_a_chat_model_uses_the_template_unless_raw(tiny_gguf, tiny_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_dir))
    chat_ids = hf.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
    got = greedy(tiny_gguf, "Hello there", "-n", "4")
    assert got["prompt_tokens"] == len(chat_ids)
    raw = greedy(tiny_gguf, "Hello there", "-n", "4", "--raw")
    assert raw["prompt_tokens"] == len(hf("Hello there")["input_ids"]) != len(chat_ids)
    helptext = run_cli("run", "--help").stdout
    assert "--raw" in helptext and "chat template" in helptext


def test_prompt_bytes_that_are_not_utf8(tiny_gguf):
    exe = Path(sys.executable).with_name("edgekit")
    proc = subprocess.run([str(exe), "run", str(tiny_gguf), "-p", b"caf\xe9 \xff", "-n", "2", "--json"],
                          capture_output=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["eval_count"] > 0
    lines = proc.stderr.decode().splitlines()
    assert lines == ["edgekit: warning: the -p text was not valid UTF-8; the invalid bytes were replaced by U+FFFD"]
