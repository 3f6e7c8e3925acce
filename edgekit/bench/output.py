"""A bench's rows as llama-bench prints them: md (with the system header), csv, json, jsonl."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from edgekit.artifacts import human_size

FORMATS = ("md", "csv", "json", "jsonl")
# the flat columns of csv and jsonl, in order (lists and the engine facts stay in json)
COLUMNS = ("artifact", "format", "size_bytes", "threads", "test", "depth", "n_tokens", "tps_mean", "tps_sd",
           "ttft_ms_mean", "load_seconds", "peak_rss_bytes", "bytes_per_token", "roofline_share", "context", "error")


def header_lines(system: dict[str, Any]) -> list[str]:
    """The system header for people: CPU, cores, RAM, versions, build flags, bandwidth."""
    ram = system.get("ram_bytes")
    versions = ", ".join(f"{k} {v}" for k, v in system.get("versions", {}).items() if v)
    lines = [f"CPU: {system['cpu']} | {system['physical_cores']} physical cores, {system['logical_cpus']} logical, "
             f"{system['allowed_cpus']} allowed | RAM {human_size(ram) if ram else '?'} | {system['os']}",
             f"versions: python {system['python']}, {versions}"]
    if system.get("llama_cpp_build"):
        lines.append(f"llama.cpp build: {system['llama_cpp_build']}")
    if system.get("onnxruntime_build"):
        lines.append(f"onnxruntime: {system['onnxruntime_build']}")
    if system.get("environment"):
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in system["environment"].items()))
    bw = system.get("bandwidth_bytes_per_s")
    if bw:
        lines.append(f"memory bandwidth (numpy copy, {system['bandwidth_threads']} threads): {bw / 1e9:.1f} GB/s")
    return lines


def _test_name(row: dict[str, Any]) -> str:
    return row["test"] + (f" @ d{row['depth']}" if row.get("depth") else "")


def markdown(result: dict[str, Any]) -> str:
    lines = ["| artifact | format | size | threads | test | t/s | TTFT ms | load s | peak RSS | roofline |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        size = human_size(r["size_bytes"])
        if "error" in r:
            lines.append(f"| {r['artifact']} | | {size} | {r['threads']} | failed | {r['error']} | | | | |")
            continue
        ttft = f"{r['ttft_ms_mean']:.1f}" if "ttft_ms_mean" in r else ""
        roof = f"{100 * r['roofline_share']:.0f}%" if r.get("roofline_share") else ""
        lines.append(f"| {r['artifact']} | {r['format']} | {size} | {r['threads']} | {_test_name(r)} | "
                     f"{r['tps_mean']:.2f} ± {r['tps_sd']:.2f} | {ttft} | {r['load_seconds']:.2f} | "
                     f"{human_size(r['peak_rss_bytes'])} | {roof} |")
    return "\n".join([*header_lines(result["system"]), "", *lines])


def render(result: dict[str, Any], fmt: str) -> str:
    """``result`` of :func:`edgekit.bench.run.bench` in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "md":
        return markdown(result)
    if fmt == "json":
        return json.dumps(result, indent=2, default=str)
    flat = [{k: r.get(k) for k in COLUMNS} for r in result["rows"]]
    if fmt == "jsonl":
        return "\n".join(json.dumps(r) for r in flat)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue().rstrip("\n")
