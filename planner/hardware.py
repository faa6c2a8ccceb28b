"""The hardware catalog (``budgets/hardware.yaml``): peak FLOP/s, memory, prices by pricing model, MFU model.

``custom:RATE`` is accepted as a pricing model on any hardware, for a price the catalog does not have.
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner import paths
from planner.errors import ClipaError, from_validation_error

PAPER_HARDWARE = "a100-80gb"
PAPER_PRICING = "clipa-paper"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    usd_per_device_hour: Annotated[float, Field(gt=0)]
    date: str
    source: str


class MfuModel(_Strict):
    max: Annotated[float, Field(gt=0, le=1)]
    tokens_half: Annotated[float, Field(ge=0)]
    width_half: Annotated[float, Field(ge=0)]
    basis: str

    def mfu(self, tokens_per_sample: float, width: float) -> float:
        """Achieved MFU for a model of image width ``width`` seeing ``tokens_per_sample`` tokens per sample."""
        return self.max * tokens_per_sample / (tokens_per_sample + self.tokens_half) * width / (width + self.width_half)


class TpuInfo(_Strict):
    prefix: str
    suffix_counts: Literal["chips", "cores"]
    runtime_version: str

    def accelerator_type(self, chips: int) -> str:
        return f"{self.prefix}-{chips * (2 if self.suffix_counts == 'cores' else 1)}"


class Preemption(_Strict):
    """Expected spot preemptions per host and day (a slice stops when any of its hosts is preempted)."""

    per_host_day: Annotated[float, Field(ge=0)]
    date: str
    source: str


class Calendar(_Strict):
    """What turns device-hours into wall-clock on a slice (``planner.wallclock``); each number has its basis."""

    interconnect_gb_s: Annotated[float, Field(gt=0)]  # per-device all-reduce bandwidth within the slice / a host
    inter_host_gb_s: Annotated[float, Field(gt=0)]  # per-device bandwidth once a slice spans hosts (GPUs: the NIC)
    max_chips: Annotated[int, Field(gt=0)]
    provision_hours: Annotated[float, Field(ge=0)]  # request to first step (queued resource / VM boot, image pull)
    checkpoint_gb_s_per_host: Annotated[float, Field(gt=0)]  # checkpoint write and restore rate per host
    basis: str
    spot_preemption: Preemption | None = None


class Hardware(_Strict):
    name: str
    description: str
    kind: Literal["gpu", "tpu", "cpu"]
    peak_flops: Annotated[float, Field(gt=0)]
    memory_gb: Annotated[float, Field(gt=0)]
    devices_per_host: Annotated[int, Field(gt=0)]
    prices: dict[str, Price]
    mfu: MfuModel
    tpu: TpuInfo | None = None
    calendar: Calendar | None = None

    def price(self, pricing: str) -> Price:
        if pricing.startswith("custom:"):
            try:
                rate = float(pricing.split(":", 1)[1])
            except ValueError:
                rate = -1.0
            if not rate > 0 or rate != rate or rate == float("inf"):
                raise ClipaError("pricing", f"{pricing!r}: custom pricing needs a positive USD per device-hour")
            return Price(usd_per_device_hour=rate, date="user", source="given on the command line")
        if pricing not in self.prices:
            known = ", ".join(list(self.prices) + ["custom:USD"]) or "custom:USD only"
            raise ClipaError("pricing", f"hardware {self.name!r} has no {pricing!r} price (known: {known})")
        return self.prices[pricing]


@functools.lru_cache(maxsize=4)
def _load(path_str: str) -> dict[str, Hardware]:
    with open(path_str, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    out = {}
    for name, body in raw.items():
        try:
            out[name] = Hardware.model_validate({"name": name, **body})
        except ValidationError as e:
            raise from_validation_error(e, prefix=f"budgets/hardware.yaml {name}") from None
    return out


def catalog() -> dict[str, Hardware]:
    return _load(str(paths.budgets_dir() / "hardware.yaml"))


def get_hardware(name: str) -> Hardware:
    cat = catalog()
    key = name.strip().lower()
    if key not in cat:
        raise ClipaError("hardware", f"unknown hardware {name!r} (known: {', '.join(cat)})")
    return cat[key]


def check_hardware_pricing(hardware: str, pricing: str) -> None:
    get_hardware(hardware).price(pricing)


def default_pricing(hardware: str) -> str:
    """The paper's rate on the paper's hardware, else on-demand if listed, else the first listed price."""
    hw = get_hardware(hardware)
    if hw.name == PAPER_HARDWARE:
        return PAPER_PRICING
    if "on-demand" in hw.prices:
        return "on-demand"
    if hw.prices:
        return next(iter(hw.prices))
    raise ClipaError("pricing", f"hardware {hardware!r} has no catalogued price; pass --pricing custom:USD_PER_HOUR")


def run_backend_options(hardware: str, chips: int | None = None) -> list[str]:
    """The ``clipa run`` options that execute a plan on the hardware it was priced for: this machine for a CPU
    profile, SLURM GPU nodes for a GPU profile, a Cloud TPU slice for a TPU profile (placeholders in capitals are the
    user's: the cloud project, zone and bucket). A plan priced on 8 A100s must not start on a laptop by default."""
    hw = get_hardware(hardware)
    if hw.kind == "cpu":
        return []
    n = chips or hw.devices_per_host
    if hw.kind == "gpu":
        nodes = -(-n // hw.devices_per_host)
        return ["--backend", "slurm", "--nodes", str(nodes), "--gpus-per-node", str(min(n, hw.devices_per_host))]
    return ["--backend", "tpu", "--hardware", hw.name, "--slice", str(n), "--project", "PROJECT", "--zone", "ZONE",
            "--bucket", "gs://BUCKET"]
