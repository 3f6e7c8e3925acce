"""The benchmarks' process-tree memory (benchmarks/convert_gguf.py): each address space is counted once.

A child between vfork and exec shares its parent's address space and /proc reports the parent's whole RSS for it
too; that window is too short to hit on purpose, so a thread of this process (another task on the same address
space, as that child is) stands in for it."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"),
                                reason="kcmp(2) is Linux's")


def tree_rss():
    spec = importlib.util.spec_from_file_location("convert_gguf_bench", ROOT / "benchmarks" / "convert_gguf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ns: dict = {}
    exec(module._TREE_RSS, ns)
    return ns["tree_rss"]


def test_a_shared_address_space_is_counted_once_and_a_child_is_added():
    measure = tree_rss()
    me = psutil.Process()
    ballast = b"\x01" * (64 << 20)  # touched: so that counting this process twice could not pass for noise
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        task = psutil.Process(worker.native_id)  # /proc/<tid>: same address space, another task
        assert task.memory_info().rss > 0.9 * me.memory_info().rss  # what the old sum added a second time
        own = me.memory_info().rss
        assert abs(measure([me, task]) - own) < 0.1 * own
        for _ in range(100):  # the child's interpreter is up once its RSS stops growing
            before = psutil.Process(child.pid).memory_info().rss
            if before > 4 << 20 and psutil.Process(child.pid).memory_info().rss == before:
                break
        total = measure([me, task, psutil.Process(child.pid)])
        assert total - me.memory_info().rss > 0.5 * psutil.Process(child.pid).memory_info().rss
    finally:
        release.set()
        worker.join()
        child.communicate(b"")
    del ballast
