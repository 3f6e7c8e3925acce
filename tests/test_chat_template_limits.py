"""Chat templates are code inside a downloaded artifact: they render in jinja2's sandbox with limits on
time and size, and a failure is one line naming the template, never a hang, a memory blow-up or a
misleading hint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from helpers import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "hi"}]
NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def render(template: str) -> str:
    from runtimes.chat import render as _render

    return _render(template, MESSAGES, name="model.gguf")


def test_nested_loops_stop_within_the_time_limit():
    from runtimes import chat

    start = time.perf_counter()
    with pytest.raises(EdgekitError, match=r"chat template of model\.gguf was stopped: it ran longer than"):
        render(NESTED)
    assert time.perf_counter() - start < chat.MAX_SECONDS + 5


@pytest.mark.parametrize("template", [
    "{{ 'a'*300000000 }}",
    "{% set x = 'a'*100000 %}{{ x*3000 }}",
    "{{ 'a'.ljust(300000000) }}",
    "{{ 'a'|center(300000000) }}",
    "{{ ('a'*100000).replace('a', 'a'*100000) }}",
    "{{ ('a'*100000)|replace('a', 'a'*100000) }}",
    "{{ '{:>300000000}'.format('a') }}",
    "{{ '%300000000s' % 'a' }}",
    "{{ 10**100000000 }}",
    "{% for i in range(100000) %}{{ 'a'*1000 }}{% endfor %}",
])
def test_huge_values_are_refused_before_they_are_built(template):
    with pytest.raises(EdgekitError, match=r"chat template of model\.gguf was stopped"):
        render(template)


def test_refusal_allocates_nothing_large():
    code = ("import resource, sys\n"
            "from runtimes.chat import render\n"
            "from edgekit.errors import EdgekitError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    render(\"{{ 'a'*300000000 }}\", [])\nexcept EdgekitError:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 50_000  # KB: the 300 MB string was never made


@pytest.mark.parametrize("template", [
    "{{ messages.__class__.__mro__ }}",
    "{{ ''.__class__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ messages.append(1) }}",
    "{{ (messages|first).update({'role': 'x'}) }}",
    "{{ ''.format.__self__ }}",
])
def test_sandbox_escapes_are_still_blocked(template):
    try:
        out = render(template)
    except EdgekitError as err:
        assert "chat template of model.gguf" in str(err)
    else:  # jinja2 renders some refused accesses as empty (undefined), never as the object
        assert "class" not in out and "module" not in out and "function" not in out, out


def test_messages_refused_by_the_template_and_broken_templates_say_different_things():
    with pytest.raises(EdgekitError, match="refused the conversation: roles must alternate; check the messages"):
        render("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(EdgekitError) as err:
        render("{{ messages[0].content.nope() }}")
    assert "is broken" in str(err.value) and "roles" not in str(err.value) and "--raw" in str(err.value)
    with pytest.raises(EdgekitError, match="does not compile"):
        render("{% for %}")


def test_cli_hostile_template_is_one_line_naming_the_artifact(tiny_dir, tmp_path):
    src = tmp_path / "tiny"
    shutil.copytree(tiny_dir, src)
    (src / "chat_template.jinja").write_text(NESTED)
    out = tmp_path / "hostile.gguf"
    proc = run_cli("convert", str(src), "--to", "gguf", "--outtype", "f32", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    start = time.perf_counter()
    proc = run_cli("run", str(out), "-p", "hi", "-n", "2", env={"PYTHONPATH": str(ROOT)})
    assert time.perf_counter() - start < 60
    assert_one_line_error(proc, f"chat template of {out}", "ran longer than", "--raw")
    # --raw does not touch the template
    proc = run_cli("run", str(out), "-p", "hi", "-n", "2", "--raw", "--json", env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and json.loads(proc.stdout)["eval_count"] >= 1
