"""``edgekit doctor``: what this host can run, and what each device profile would pick here."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Any

# CPU flags that decide which kernels llama.cpp and onnxruntime use
_X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
_ARM_FLAGS = ("asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16", "sme")


def _cpu() -> dict[str, Any]:
    from runtimes.devices import physical_cores

    info: dict[str, Any] = {"machine": platform.machine(), "model": platform.processor() or None,
                            "physical_cores": physical_cores(), "logical_cpus": os.cpu_count()}
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features"):
                    flags.update(value.split())
                elif key == "model name" and not info.get("model_name"):
                    info["model_name"] = value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            info["model_name"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    info["features"] = [f for f in (*_X86_FLAGS, *_ARM_FLAGS) if f in flags]
    return info


def _memory() -> dict[str, Any]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return {"total_gb": round(vm.total / 2**30, 2), "available_gb": round(vm.available / 2**30, 2)}
    except ImportError:
        return {}


def _backends() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, module in (("llama.cpp", "llama_cpp"), ("onnxruntime", "onnxruntime"), ("coremltools", "coremltools"),
                         ("onnxruntime-genai", "onnxruntime_genai"), ("tokenizers", "tokenizers")):
        if module == "coremltools" and sys.platform != "darwin":
            # importing it off macOS only prints warnings about its missing native part: ask the metadata
            from importlib import metadata

            try:
                out[name] = {"available": True, "version": metadata.version("coremltools"), "can_predict": False}
            except metadata.PackageNotFoundError:
                out[name] = {"available": False, "error": "not installed"}
            continue
        try:
            mod = importlib.import_module(module)
            entry: dict[str, Any] = {"available": True, "version": getattr(mod, "__version__", None)}
        except Exception as err:  # a broken native library raises OSError etc., not only ImportError
            out[name] = {"available": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                         if str(err) else type(err).__name__}
            continue
        if module == "llama_cpp":
            entry["system_info"] = mod.llama_print_system_info().decode().strip()
            entry["gpu_offload"] = bool(mod.llama_supports_gpu_offload())
        elif module == "onnxruntime":
            entry["providers"] = list(mod.get_available_providers())
            entry["device"] = mod.get_device()
        elif module == "coremltools":
            entry["can_predict"] = sys.platform == "darwin"
        out[name] = entry
    return out


def _profiles(facts: Any) -> dict[str, Any]:
    from edgekit.errors import EdgekitError
    from runtimes import devices

    table: dict[str, Any] = {}
    for profile in ("auto", *devices.PROFILES):
        row: dict[str, Any] = {}
        for backend in ("gguf", "onnx", "coreml"):
            try:
                sel = devices.select(profile, backend, facts, static_onnx=True)
                row[backend] = {"ok": True, **sel.as_dict()}
            except EdgekitError as err:
                try:
                    sel = devices.select(profile, backend, facts, fallback="cpu", static_onnx=True)
                    row[backend] = {"ok": False, "error": err.what, "with_fallback_cpu": sel.as_dict()}
                except EdgekitError as err2:
                    row[backend] = {"ok": False, "error": err2.what}
        table[profile] = row
    return table


def report() -> dict[str, Any]:
    from runtimes import devices

    facts = devices.host_facts()
    return {
        "host": {"system": platform.system(), "release": platform.release(), "python": platform.python_version(),
                 "android": facts.android, "jetson": facts.tegra},
        "cpu": _cpu(), "memory": _memory(), "backends": _backends(),
        "detected_profile": devices.detect(facts), "profiles": _profiles(facts),
    }


def _summary(entry: dict[str, Any]) -> str:
    if entry.get("ok"):
        if entry["backend"] == "onnx":
            what = " > ".join(p.replace("ExecutionProvider", "") for p in entry["providers"])
        elif entry["backend"] == "gguf":
            what = "llama.cpp " + ("GPU, all layers" if entry["gpu_layers"] else "CPU")
        else:
            what = f"Core ML {entry['compute_units']}"
        return what + (f" ({entry['note']})" if entry.get("note") else "")
    fb = entry.get("with_fallback_cpu")
    return "unavailable" + (" (--fallback cpu: CPU)" if fb else f": {entry['error']}")


def format_text(rep: dict[str, Any]) -> str:
    host, cpu, mem = rep["host"], rep["cpu"], rep["memory"]
    lines = [f"host      {host['system']} {host['release']}, Python {host['python']}",
             f"cpu       {cpu.get('model_name') or cpu.get('model') or cpu['machine']} ({cpu['machine']}), "
             f"{cpu['physical_cores']} physical cores / {cpu['logical_cpus']} CPUs",
             f"features  {' '.join(cpu['features']) or '-'}"]
    if mem:
        lines.append(f"memory    {mem['total_gb']} GiB total, {mem['available_gb']} GiB available")
    lines.append("backends")
    for name, b in rep["backends"].items():
        if not b["available"]:
            lines.append(f"  {name:<18} not available ({b['error']})")
            continue
        extra = ""
        if "providers" in b:
            extra = f" providers: {', '.join(b['providers'])}"
        if "gpu_offload" in b:
            extra = f" gpu offload: {'yes' if b['gpu_offload'] else 'no'}"
        if "can_predict" in b:
            extra = " (conversion only; prediction needs macOS)" if not b["can_predict"] else ""
        lines.append(f"  {name:<18} {b['version']}{extra}")
        if "system_info" in b:
            lines.append(f"  {'':<18} {b['system_info']}")
    lines.append(f"device profiles (auto = {rep['detected_profile']})")
    for profile, row in rep["profiles"].items():
        lines.append(f"  {profile:<14} gguf: {_summary(row['gguf'])}; onnx: {_summary(row['onnx'])}; "
                     f"coreml: {_summary(row['coreml'])}")
    return "\n".join(lines)
