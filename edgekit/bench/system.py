"""What a measurement ran on: the system header (CPU, cores, RAM, backend versions and build flags) and the host's
memory bandwidth, which a decode step is bound by."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PACKAGES = ("edgekit", "numpy", "llama_cpp_python", "onnxruntime", "onnxruntime-genai", "onnx", "gguf", "coremltools")


def copy_bandwidth(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s moved by a numpy copy of a ``mib`` MiB buffer split over ``threads`` (STREAM Copy convention: read +
    write, the best of ``repeats``)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    src = np.ones(mib * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(len(src)), max(1, threads))
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]
    best = float("inf")
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))  # numpy drops the GIL
            best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name where the OS says it, else the machine type."""
    name = _proc_field("/proc/cpuinfo", "model name")
    if name is None and sys.platform == "darwin":
        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            name = None
    return name or platform.processor() or platform.machine()


def ram_bytes() -> int | None:
    """Total RAM of the host."""
    total = _proc_field("/proc/meminfo", "MemTotal")
    if total is not None:
        return int(total.split()[0]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def llama_cpp_build() -> str | None:
    """llama.cpp's own build flags line (``llama_print_system_info``), read in a child process so the caller does not
    load the library."""
    try:
        proc = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info()"
                               ".decode())"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None


def onnxruntime_build() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return f"providers: {', '.join(onnxruntime.get_available_providers())}"


def engine_environment() -> dict[str, str]:
    """The environment variables the engines read (OpenMP, onnxruntime, llama.cpp / ggml)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "ORT_", "LLAMA_", "GGML_"))}


def header(threads: list[int], bandwidth_threads: int | None = None) -> dict[str, Any]:
    """The system header of a bench: CPU model, cores (physical, logical, allowed), RAM, OS, Python, package versions,
    llama.cpp and onnxruntime build facts, engine environment variables, load average, and the copy bandwidth
    measured with ``bandwidth_threads`` (default: the largest thread count benched)."""
    from runtimes.devices import physical_cores

    bw_threads = bandwidth_threads or max(threads)
    return {
        "cpu": cpu_model(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
        "allowed_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": ram_bytes(), "os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
        "python": platform.python_version(), "versions": versions(), "llama_cpp_build": llama_cpp_build(),
        "onnxruntime_build": onnxruntime_build(),
        "environment": engine_environment(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "bandwidth_threads": bw_threads, "bandwidth_bytes_per_s": copy_bandwidth(bw_threads),
    }
