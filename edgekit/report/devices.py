"""The device table of ``edgekit report``: which artifacts fit a device's memory and how fast they would decode
there. Everything derived from it is a prediction (devices.json says where each figure comes from)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Device:
    """One row of devices.json: the figures the predictions use and the sources they come from."""

    name: str                      # what users type: pixel-8, iphone-15, jetson-orin-nano, m2-8gb
    label: str
    kind: str                      # phone | mac | jetson | sbc
    ram_gib: float
    app_ram_fraction: float        # the share of RAM one app can hold (phones' low-memory killers stop more)
    bandwidth_gbs: float           # peak memory bandwidth
    accelerators: tuple[str, ...]
    profile: str                   # edgekit's runtime profile there
    formats: tuple[str, ...]       # artifact formats edgekit runs there
    sources: tuple[str, ...]
    note: str = ""


@functools.cache
def table() -> dict[str, Device]:
    """Every device of devices.json (next to this module) by name, in file order; read once and cached."""
    data = json.loads((Path(__file__).parent / "devices.json").read_text(encoding="utf-8"))
    out: dict[str, Device] = {}
    for d in data["devices"]:
        out[d["name"]] = Device(**{**d, "accelerators": tuple(d["accelerators"]), "formats": tuple(d["formats"]),
                                   "sources": tuple(d["sources"])})
    return out


def resolve(names: Sequence[str]) -> list[Device]:
    """The devices ``names`` name, in order. Every name is checked before any is returned: the first unknown one
    raises EdgekitError("unknown device 'x'", fix listing the known names)."""
    known = table()
    for name in names:
        if name not in known:
            raise EdgekitError(f"unknown device {name!r}", f"known devices: {', '.join(known)}")
    return [known[n] for n in names]


def fits(device: Device, peak_bytes: int) -> bool:
    """Whether a process peaking at ``peak_bytes`` fits the share of the device's RAM one app can use
    (``ram_gib`` GiB x ``app_ram_fraction``, boundary included). A prediction, not a measurement."""
    return peak_bytes <= device.ram_gib * 2**30 * device.app_ram_fraction


def predict_decode_tps(device: Device, bytes_per_token: int, efficiency: float) -> float:
    """Decode tokens/s on ``device``: decode is memory-bound (every weight byte read once per token), so its
    bandwidth x ``efficiency`` (the share of the roofline measured where the bench ran) / ``bytes_per_token``.
    A prediction, not a measurement; ValueError if ``bytes_per_token`` is not positive."""
    if bytes_per_token <= 0:
        raise ValueError("bytes_per_token must be positive")
    return device.bandwidth_gbs * 1e9 * efficiency / bytes_per_token


def runs(device: Device, fmt: str) -> bool:
    """Whether edgekit runs ``fmt`` artifacts on ``device``."""
    return fmt in device.formats
