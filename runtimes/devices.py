"""Device profiles: which host we are on, and what each backend should run with there.

| profile | detected by | GGUF (llama.cpp) | ONNX providers | Core ML |
| cpu | always | CPU, physical cores | CPU | compute units CPU_ONLY |
| apple-silicon | macOS arm64 | Metal, all layers | CoreML, then CPU | compute units ALL |
| android-nnapi | Android (or asked for) | CPU | NNAPI (static-shape export), then CPU | - |
| jetson | aarch64 + /etc/nv_tegra_release | CUDA, all layers | TensorRT, CUDA, then CPU | - |

``device="auto"`` takes the detected profile and quietly uses what this host has. An explicit device
is a request: when the host lacks what it needs (no NNAPI provider in this onnxruntime, no GPU
offload in this llama.cpp build) :func:`select` raises an EdgekitError naming what is available,
unless ``fallback="cpu"`` allows running on the CPU instead. Functions take the host facts
(available providers, GPU offload) as arguments so the choice can be tested for hardware that is
absent; :func:`host_facts` reads the real ones.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

PROFILES = ("cpu", "apple-silicon", "android-nnapi", "jetson")
CPU_EP = "CPUExecutionProvider"
# accelerated ONNX providers per profile, in order of preference; CPU always comes last
ONNX_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": (),
    "apple-silicon": ("CoreMLExecutionProvider",),
    "android-nnapi": ("NnapiExecutionProvider",),
    "jetson": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
}
# what llama.cpp offloads to per profile (None = CPU only); the build must support GPU offload
LLAMACPP_GPU: dict[str, str | None] = {"cpu": None, "apple-silicon": "Metal", "android-nnapi": None, "jetson": "CUDA"}
COREML_UNITS: dict[str, str] = {"cpu": "CPU_ONLY", "apple-silicon": "ALL"}


@dataclass
class HostFacts:
    system: str                    # platform.system(): Linux, Darwin, Windows
    machine: str                   # x86_64, arm64, aarch64
    android: bool = False
    tegra: bool = False
    onnx_providers: list[str] = field(default_factory=lambda: [CPU_EP])
    gpu_offload: bool = False      # llama.cpp build can offload layers (Metal / CUDA / ...)


@dataclass
class Selection:
    profile: str                   # the profile asked for (auto resolved)
    backend: str                   # gguf | onnx | coreml
    providers: list[str] = field(default_factory=list)   # ONNX execution providers in order
    gpu_layers: int = 0            # llama.cpp layers to offload (-1 = all)
    compute_units: str | None = None  # Core ML
    threads: int = 1               # CPU threads the profile runs with unless the caller says otherwise
    fell_back: bool = False        # the profile's accelerator is missing; running on the CPU
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.profile, "backend": self.backend, "providers": self.providers,
                "gpu_layers": self.gpu_layers, "compute_units": self.compute_units, "threads": self.threads,
                "fell_back": self.fell_back,
                "note": self.note}


def _is_android() -> bool:
    import sys

    return "ANDROID_ROOT" in os.environ or "ANDROID_DATA" in os.environ or hasattr(sys, "getandroidapilevel")


def host_facts(backend: str | None = None) -> HostFacts:
    """The real facts of this host (onnxruntime and llama.cpp are asked only if they import). With ``backend``
    ("gguf" | "onnx" | "coreml"), only what :func:`select` reads for it: importing onnxruntime to run a GGUF
    costs ~1 s, and llama.cpp's library is not loaded for ONNX."""
    facts = HostFacts(system=platform.system(), machine=platform.machine().lower(), android=_is_android(),
                      tegra=Path("/etc/nv_tegra_release").exists())
    if backend in (None, "onnx"):
        try:
            import onnxruntime

            facts.onnx_providers = list(onnxruntime.get_available_providers())
        except ImportError:
            facts.onnx_providers = []
    if backend in (None, "gguf"):
        try:
            import llama_cpp

            facts.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        except (ImportError, OSError, AttributeError):
            facts.gpu_offload = False
    return facts


def detect(facts: HostFacts) -> str:
    """The profile ``device="auto"`` stands for on a host."""
    if facts.system == "Darwin" and facts.machine in ("arm64", "aarch64"):
        return "apple-silicon"
    if facts.android:
        return "android-nnapi"
    if facts.machine in ("aarch64", "arm64") and facts.tegra:
        return "jetson"
    return "cpu"


def _lacks(profile: str, needs: str, have: str) -> EdgekitError:
    return EdgekitError(f"device {profile!r} needs {needs}, which this host lacks (available: {have})",
                        "pass --fallback cpu to run on the CPU, or --device cpu")


def select(device: str, backend: str, facts: HostFacts, fallback: str | None = None,
           static_onnx: bool | None = None) -> Selection:
    """Backend settings for ``device`` (a profile or "auto") on a host with ``facts``."""
    if device not in ("auto", *PROFILES):
        raise EdgekitError(f"unknown device {device!r}", f"choose one of: auto, {', '.join(PROFILES)}")
    if fallback not in (None, "cpu"):
        raise EdgekitError(f"unknown fallback {fallback!r}", "the only fallback is cpu")
    auto = device == "auto"
    profile = detect(facts) if auto else device
    may_fall_back = auto or fallback == "cpu"
    sel = Selection(profile=profile, backend=backend, threads=default_threads(profile))
    if backend == "onnx":
        wanted = list(ONNX_PROVIDERS[profile])
        if profile == "android-nnapi" and static_onnx is False:
            # NNAPI compiles fixed shapes only; the dynamic graph would fall to the CPU node by node
            if not may_fall_back:
                raise EdgekitError("device 'android-nnapi' needs a static-shape ONNX export",
                                   "convert with `edgekit convert --to onnx --static`, or pass --fallback cpu")
            wanted = []
            sel.note = "dynamic-shape export: NNAPI skipped"
        if CPU_EP not in facts.onnx_providers:
            raise EdgekitError("this onnxruntime has no CPUExecutionProvider", "reinstall onnxruntime")
        present = [p for p in wanted if p in facts.onnx_providers]
        if wanted and not present:
            if not may_fall_back:
                raise _lacks(profile, "onnxruntime provider " + " or ".join(wanted), ", ".join(facts.onnx_providers))
            sel.fell_back = True
            sel.note = sel.note or f"{' / '.join(wanted)} not available: CPU"
        sel.providers = [*present, CPU_EP]
    elif backend == "gguf":
        gpu = LLAMACPP_GPU[profile]
        if gpu:
            if facts.gpu_offload:
                sel.gpu_layers = -1
            elif not may_fall_back:
                raise _lacks(profile, f"a llama.cpp build with {gpu} offload", "CPU only")
            else:
                sel.fell_back, sel.note = True, f"llama.cpp has no {gpu} offload here: CPU"
    elif backend == "coreml":
        if facts.system != "Darwin":
            raise EdgekitError(f"Core ML models run only on macOS (this host is {facts.system} {facts.machine})",
                               "convert the checkpoint with --to gguf or --to onnx for this host")
        if profile not in COREML_UNITS:
            if not may_fall_back:
                raise _lacks(profile, "an Apple device", f"{facts.system} {facts.machine}")
            profile = "cpu"
            sel.fell_back = True
        sel.compute_units = COREML_UNITS[profile]
    else:
        raise EdgekitError(f"unknown backend {backend!r}", "use a GGUF file, an ONNX or Core ML directory")
    return sel


SYSFS_CPU = Path("/sys/devices/system/cpu")


def _allowed_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):  # a container, cgroup cpuset or taskset may allow fewer CPUs than exist
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def physical_cores(cpus: list[int] | None = None, sysfs: Path = SYSFS_CPU) -> int:
    """Physical cores among the CPUs this process may run on (llama.cpp and onnxruntime are fastest with one
    thread per core, not per hyper-thread): the distinct (package, core) pairs of the allowed CPUs in sysfs,
    else psutil's physical count capped by the allowed CPUs."""
    cpus = _allowed_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topo = sysfs / f"cpu{cpu}" / "topology"
        package, core = _read(topo / "physical_package_id"), _read(topo / "core_id")
        if package is None or core is None:
            cores = set()
            break
        cores.add((package, core))
    if cores:
        return len(cores)
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:
        n = None
    return max(1, min(n or len(cpus), len(cpus)))


def performance_cores(cpus: list[int] | None = None, sysfs: Path = SYSFS_CPU) -> int:
    """Physical cores outside the slowest cluster on a big.LITTLE / hybrid CPU (threads on efficiency cores
    make every step wait for the slowest one), judged by ``cpuinfo_max_freq``; all physical cores when the
    CPUs do not differ or the frequencies are unknown."""
    cpus = _allowed_cpus() if cpus is None else cpus
    freq = {cpu: _read(sysfs / f"cpu{cpu}" / "cpufreq" / "cpuinfo_max_freq") for cpu in cpus}
    if any(f is None or not f.isdigit() for f in freq.values()) or len({int(f) for f in freq.values()}) < 2:
        return physical_cores(cpus, sysfs)
    slowest = min(int(f) for f in freq.values())
    return physical_cores([c for c in cpus if int(freq[c]) > slowest], sysfs)


def default_threads(profile: str) -> int:
    """CPU threads for a profile: physical cores the process may use; on phones and Apple silicon only the
    performance cores (``hw.perflevel0.physicalcpu`` on macOS)."""
    if profile == "apple-silicon":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                return max(1, int(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    if profile in ("android-nnapi", "apple-silicon"):
        return performance_cores()
    return physical_cores()
