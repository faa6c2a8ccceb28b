"""Cost model: reproduces CLIPA-v2's GPU-hours; prices scale with the catalog; MFU falls for short sequences."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from planner.cost import cost_stages
from planner.errors import ClipaError
from planner.hardware import catalog, default_pricing, get_hardware
from planner.schedule import parse_schedule

TARGETS = list(csv.DictReader(open(Path(__file__).parent.parent / "fixtures" / "clipa_gpu_hours.csv")))


@pytest.mark.parametrize("row", TARGETS, ids=[f"{r['model']} {r['schedule']}" for r in TARGETS])
def test_reproduces_clipa_v2_gpu_hours_within_10_percent(row):
    c = cost_stages(row["model"], parse_schedule(row["schedule"], row["model"]), "a100-80gb", "clipa-paper")
    assert c.device_hours == pytest.approx(float(row["gpu_hours"]), rel=0.10)
    assert c.cost_usd == pytest.approx(c.device_hours * 1.575)


def test_catalog_covers_required_hardware_with_sourced_prices():
    cat = catalog()
    for name in ("tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e", "a100-40gb", "a100-80gb", "h100", "h200", "cpu-2core"):
        assert name in cat
    for hw in cat.values():
        for p in hw.prices.values():
            assert p.source and p.date
    assert cat["a100-80gb"].prices["clipa-paper"].usd_per_device_hour == 1.575
    assert cat["tpu-v5e"].tpu.accelerator_type(64) == "v5litepod-64"
    assert cat["tpu-v4"].tpu.accelerator_type(4) == "v4-8"  # v4 names count TensorCores


def test_spot_cheaper_than_on_demand_and_custom_pricing():
    st = parse_schedule("1B@84/8 + 100M@224/32", "L/14")
    od = cost_stages("L/14", st, "tpu-v5e", "on-demand")
    spot = cost_stages("L/14", st, "tpu-v5e", "spot")
    assert spot.cost_usd < od.cost_usd and spot.device_hours == od.device_hours
    custom = cost_stages("L/14", st, "h200", "custom:4.0")
    assert custom.cost_usd == pytest.approx(custom.device_hours * 4.0)


def test_short_sequences_use_the_chip_less_well():
    lo, hi = parse_schedule("1B@42/4 + 1B@224/32", "H/14")
    c = cost_stages("H/14", [lo, hi], "a100-80gb", "clipa-paper")
    assert c.stages[0].mfu < c.stages[1].mfu


@pytest.mark.parametrize(
    "hardware, pricing, field",
    [("tpu-v9", "spot", "hardware"), ("tpu-v5e", "cud-9y", "pricing"), ("h200", "on-demand", "pricing"),
     ("h100", "custom:-1", "pricing"), ("h100", "custom:abc", "pricing")],
)
def test_bad_hardware_or_pricing(hardware, pricing, field):
    with pytest.raises(ClipaError) as e:
        cost_stages("B/16", parse_schedule("1M@224", "B/16"), hardware, pricing)
    assert e.value.field == field


def test_default_pricing():
    assert default_pricing("a100-80gb") == "clipa-paper"
    assert default_pricing("tpu-v6e") == "on-demand"
    with pytest.raises(ClipaError):
        default_pricing("h200")
    assert get_hardware("CPU-2core").name == "cpu-2core"
