"""The device table of `edgekit report`: complete, sourced, sane figures, and the arithmetic of its predictions."""

import json
import re
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.report import devices
from runtimes.devices import PROFILES

RAW = json.loads((Path(devices.__file__).parent / "devices.json").read_text(encoding="utf-8"))
# which artifact formats edgekit runs, by kind of device (iPhones get Core ML, not ONNX; Macs get all three)
FORMATS = {"android-nnapi": {"gguf", "onnx"}, "jetson": {"gguf", "onnx"}, "cpu": {"gguf", "onnx"}}


def test_top_level_says_the_speeds_are_predictions():
    assert set(RAW) == {"about", "devices"} and "prediction" in RAW["about"]


def test_names_are_unique_slugs_and_the_named_devices_exist():
    names = [d["name"] for d in RAW["devices"]]
    assert len(names) == len(set(names)) and 12 <= len(names) <= 16
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", n) for n in names)
    assert {"pixel-8", "iphone-15", "jetson-orin-nano", "m2-8gb"} <= set(devices.table())
    assert list(devices.table()) == names


def test_every_entry_is_complete_sane_and_sourced():
    fields = {"name", "label", "kind", "ram_gib", "app_ram_fraction", "bandwidth_gbs", "accelerators", "profile",
              "formats", "sources"}
    for raw in RAW["devices"]:
        assert fields <= set(raw) <= fields | {"note"}, raw["name"]
        d = devices.table()[raw["name"]]
        assert d.label and 1 <= d.ram_gib <= 192 and 5 <= d.bandwidth_gbs <= 800 and 0 < d.app_ram_fraction <= 1
        assert d.kind in ("phone", "mac", "jetson", "sbc")
        assert d.profile in ("cpu", "apple-silicon", "android-nnapi", "jetson") and d.profile in PROFILES
        assert d.formats and set(d.formats) <= {"gguf", "onnx", "coreml"} and len(set(d.formats)) == len(d.formats)
        assert d.sources and all(re.match(r"https?://\S+$", s) for s in d.sources), d.name
        assert all(isinstance(a, str) and a for a in d.accelerators)
        assert isinstance(d.accelerators, tuple) and isinstance(d.formats, tuple) and isinstance(d.sources, tuple)


def test_formats_and_profiles_follow_the_kind_of_device():
    for d in devices.table().values():
        if d.profile == "apple-silicon":
            assert d.kind in ("phone", "mac")
            assert set(d.formats) == ({"gguf", "coreml"} if d.kind == "phone" else {"gguf", "onnx", "coreml"})
        else:
            assert set(d.formats) == FORMATS[d.profile], d.name
        assert {"sbc": "cpu", "jetson": "jetson", "mac": "apple-silicon"}.get(d.kind, d.profile) == d.profile
        if d.kind == "phone":
            assert d.profile in ("android-nnapi", "apple-silicon") and d.app_ram_fraction <= 0.6


def test_resolve_keeps_order_and_names_the_first_unknown_device():
    assert [d.name for d in devices.resolve(["pixel-8", "m2-8gb"])] == ["pixel-8", "m2-8gb"]
    assert devices.resolve([]) == []
    with pytest.raises(EdgekitError) as err:
        devices.resolve(["pixel-8", "nokia-3310", "palm-pilot"])
    assert err.value.what == "unknown device 'nokia-3310'"
    assert err.value.fix and "pixel-8" in err.value.fix and "jetson-orin-nano" in err.value.fix
    assert "palm-pilot" not in str(err.value)


def test_fits_boundary_is_exact():
    d = devices.table()["m2-8gb"]  # 8 GiB, 0.75 of it for one app
    assert (d.ram_gib, d.app_ram_fraction) == (8, 0.75)
    limit = 6 * 2**30  # 8 GiB x 0.75, exact in floating point
    assert devices.fits(d, limit) and devices.fits(d, 0) and not devices.fits(d, limit + 1)
    phone = devices.table()["pixel-8"]  # 8 GiB, half of it for one app
    assert devices.fits(phone, 4 * 2**30) and not devices.fits(phone, 4 * 2**30 + 1)


def test_predicted_decode_is_the_bandwidth_roofline():
    d = devices.table()["m2-8gb"]  # 100 GB/s
    assert d.bandwidth_gbs == 100
    # 100e9 B/s x 50% of the roofline / 500e6 B per token = 100 tokens/s
    assert devices.predict_decode_tps(d, 500_000_000, 0.5) == pytest.approx(100.0)
    # a 4 GB model at the full roofline: 25 tokens/s
    assert devices.predict_decode_tps(d, 4_000_000_000, 1.0) == pytest.approx(25.0)
    for bad in (0, -1):
        with pytest.raises(ValueError):
            devices.predict_decode_tps(d, bad, 0.5)


def test_runs_reads_the_formats():
    t = devices.table()
    assert devices.runs(t["m2-8gb"], "coreml") and devices.runs(t["m2-8gb"], "onnx")
    assert devices.runs(t["iphone-15"], "coreml") and not devices.runs(t["iphone-15"], "onnx")
    assert devices.runs(t["pixel-8"], "gguf") and not devices.runs(t["pixel-8"], "coreml")
    assert not devices.runs(t["jetson-orin-nano"], "safetensors")
