"""Python child processes this package starts (``[sys.executable, ...]``): their environment (this checkout
importable in the child exactly as the parent sees it, a source tree run without installing), and
:class:`Job`, work that measures a tokenizer with transformers in a child or on a thread."""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

from edgekit.errors import EdgekitError

ROOT = str(Path(__file__).resolve().parents[1])
T = TypeVar("T")


# for children that only tokenize: numpy's OpenBLAS otherwise starts a thread per core at import, which spins
# ~0.1 s of CPU the parent's conversion needs, for linear algebra these children never do
NO_BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1"}


def env(**extra: str) -> dict[str, str]:
    """``os.environ`` plus ``extra``, with this package's root first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **extra, "PYTHONPATH": path}


class Job(Generic[T]):
    """``function(*args)`` under way, for work that loads a tokenizer with transformers while the parent converts
    weights: in a child process (``python -m module ARGS``, whose ``__main__`` calls :func:`serve` with the same
    function) unless transformers is loaded already, else on a thread (``child`` forces the choice). Importing
    transformers beside torch costs ~3 s of CPU the parent's conversion needs; the child hides torch, so
    transformers loads only its tokenizer half (~1.3 s), on its own interpreter lock. Once transformers is
    loaded, the thread costs little. ``args`` are strings (they become the child's argv); the function returns
    JSON-able data, which ``decode`` turns into the result. A child that dies without an answer raises
    EdgekitError(``failed`` + its last stderr line, ``fix``)."""

    def __init__(self, module: str, function: Callable[..., Any], args: Sequence[str], failed: str, fix: str,
                 decode: Callable[[Any], T] = lambda data: data, child: bool | None = None) -> None:
        self.failed, self.fix, self.decode = failed, fix, decode
        self.value: T | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.future: Future[Any] | None = None
        if child is None:
            child = "transformers" not in sys.modules
        if child:
            self.proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True,
                                         env=env(TRANSFORMERS_VERBOSITY="error", **NO_BLAS_THREADS))
        else:
            pool = ThreadPoolExecutor(max_workers=1)
            self.future = pool.submit(function, *args)
            pool.shutdown(wait=False)

    def result(self) -> T:
        """Waits for the answer; the function's EdgekitError is raised here, from the child too."""
        if self.value is None:
            self.value = self.decode(self.future.result() if self.future is not None else self._answer())
        return self.value

    def _answer(self) -> Any:
        assert self.proc is not None
        out, err = self.proc.communicate()
        return answer(out, err, self.proc.returncode, self.failed, self.fix)

    def cancel(self) -> None:
        """Stop the job: a child is killed; a thread that has begun runs to its end (it may still write where the
        caller is about to clean up), its error dropped (the error that cancels is the one to report)."""
        if self.future is not None:
            self.future.cancel()
            try:
                self.future.result()
            except BaseException:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def answer(out: str, err: str, returncode: int | None, failed: str, fix: str | None) -> Any:
    """The ``result`` of a child that printed one JSON line last ({"result": ...} or {"error", "fix"}). Its error
    is raised as EdgekitError; a child that died without an answer raises EdgekitError(``failed`` + its last
    stderr line, ``fix``)."""
    try:
        reply = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (err.strip().splitlines() or [f"exit status {returncode}"])[-1]
        raise EdgekitError(f"{failed}: {last[:200]}", fix) from None
    if "error" in reply:
        raise EdgekitError(reply["error"], reply.get("fix"))
    return reply["result"]


def serve(function: Callable[..., Any], args: Sequence[str]) -> NoReturn:
    """The child's side of :class:`Job`: ``function(*args)`` with torch hidden (transformers then skips its torch
    half), its answer printed as one JSON line: {"result": ...} or {"error", "fix"} for an EdgekitError. The process
    then ends at once: the parent waits for its exit, and the interpreter's teardown with transformers loaded takes
    ~0.1 s, for nothing (the answer is flushed, nothing else is written)."""
    sys.modules["torch"] = None  # type: ignore[assignment]
    sys.meta_path.insert(0, _WholeImportCache())
    try:
        answer: dict[str, Any] = {"result": function(*args)}
    except EdgekitError as exc:
        answer = {"error": exc.what, "fix": exc.fix}
    print(json.dumps(answer))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _WholeImportCache(importlib.abc.MetaPathFinder):
    """Gives transformers' ``create_import_structure_from_path`` an unbounded cache as its module loads. It is an
    ``lru_cache`` of 128 entries, called for each of the ~560 model directories twice (by ``transformers`` and by
    ``transformers.models``), so the second pass finds nothing cached and reads the ~1700 model files again: ~0.35 s
    of the tokenizer child's ~1.3 s (transformers 5.x). The function is pure; without it (another transformers
    version) nothing changes. Hand-written: transformers has no setting for it."""

    NAME = "transformers.utils.import_utils"

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != self.NAME:
            return None
        sys.meta_path.remove(self)  # once, and the lookup below must not come back here
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            cached = getattr(module, "create_import_structure_from_path", None)
            if hasattr(cached, "cache_info") and hasattr(cached, "__wrapped__"):
                module.create_import_structure_from_path = functools.lru_cache(maxsize=None)(cached.__wrapped__)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
