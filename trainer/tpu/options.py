"""What a TPU launch is asked to do (``TpuOptions``) and what that means on Cloud TPU (``SliceInfo``).

Owns the translation from the user's words (hardware profile, number of chips, pricing model) to the API's
(accelerator type with the v4/v5p TensorCore-count trap handled by the catalog, runtime version, spot or
on-demand tier, number of worker hosts, price per chip-hour). Nothing here talks to the cloud or imports its
client library.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planner.errors import ClipaError, from_validation_error
from planner.hardware import Hardware, catalog, get_hardware
from trainer.tpu import names

# The pricing models the launcher can request: the Cloud TPU API has a spot tier and a guaranteed (on-demand)
# tier for queued resources; committed-use prices need a reservation, which this launcher does not manage.
PRICINGS = ("spot", "on-demand")


def _check(fn, value, *args):
    """Run a ``names`` check inside a pydantic validator: its ClipaError becomes the ValueError pydantic expects
    (the field name is added back by ``from_validation_error``)."""
    try:
        return fn(value, *args)
    except ClipaError as e:
        raise ValueError(e.message) from None


class TpuOptions(BaseModel):
    """Everything a launch needs besides the spec. Validated on construction; bad values name the option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(description="GCP project id")
    zone: str = Field(description="zone, e.g. us-central1-a (must offer the accelerator)")
    hardware: str = Field("tpu-v5e", description="hardware profile from budgets/hardware.yaml (kind tpu)")
    slice: Annotated[int, Field(gt=0, description="number of chips, e.g. 64 for v5e-64")] = 8
    pricing: Literal["spot", "on-demand"] = "spot"
    bucket: str | None = Field(None, description="gs://BUCKET[/PREFIX] where run dirs (checkpoints, results) live; "
                                                 "needed to run a spec, not to provision")
    name: str | None = Field(None, description="resource/run name; default: clipa-<spec name or run id>")
    network: str | None = None
    subnetwork: str | None = None
    service_account: str | None = None
    enable_external_ips: bool | None = None
    trainer_args: tuple[str, ...] = Field((), description="extra arguments for `clipa train` on the workers")
    install: bool = Field(True, description="ship this checkout and install it (Python 3.11 venv, jax[tpu]) on every "
                                            "worker")
    # Provisioning: how long to keep trying for capacity (also the queued resource's valid_until_duration).
    provision_timeout_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    poll_initial_s: Annotated[float, Field(gt=0)] = 5.0
    poll_max_s: Annotated[float, Field(gt=0)] = 60.0
    # Running: how often node state is checked while the trainer runs.
    monitor_interval_s: Annotated[float, Field(gt=0)] = 30.0
    # After a worker dies, how long to wait for the API to report a preemption before calling it a worker failure.
    preemption_grace_s: Annotated[float, Field(ge=0)] = 120.0
    max_attempts: Annotated[int, Field(gt=0, description="slices created at most (first try + requeues)")] = 20
    max_worker_failures: Annotated[int, Field(ge=0, description="requeues after a worker crash (not preemption)")] = 2
    api_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    teardown_timeout_s: Annotated[float, Field(gt=0)] = 900.0

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        return _check(names.project_id, v)

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return _check(names.zone, v)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        return None if v is None else _check(names.bucket_url, v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        # Attempts are named NAME-aN, so leave room for the suffix.
        if v is not None:
            _check(names.resource_id, v)
            if len(v) > 56:
                raise ValueError(f"{v!r} is longer than 56 characters")
        return v

    @field_validator("trainer_args")
    @classmethod
    def _trainer_args(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        # They end up in a remote shell command line: same rule as every other argument there.
        return tuple(_check(names.safe_arg, a, "trainer_args") for a in v)

    @field_validator("network", "subnetwork")
    @classmethod
    def _network(cls, v: str | None, info) -> str | None:
        return None if v is None else _check(names.network, v, info.field_name)

    @field_validator("service_account")
    @classmethod
    def _sa(cls, v: str | None) -> str | None:
        return None if v is None else _check(names.service_account, v)

    @field_validator("hardware")
    @classmethod
    def _hardware(cls, v: str) -> str:
        hw = _check(get_hardware, v)
        if hw.kind != "tpu" or hw.tpu is None:
            raise ValueError(f"{v!r} is not a Cloud TPU profile (TPU profiles: {', '.join(_tpu_profiles())})")
        return hw.name

    @classmethod
    def create(cls, **kwargs) -> TpuOptions:
        """Construct, turning pydantic errors into one ``ClipaError`` naming the option."""
        try:
            return cls(**kwargs)
        except ValidationError as e:
            raise from_validation_error(e) from None

    def slice_info(self) -> SliceInfo:
        return SliceInfo.of(self.hardware, self.slice, self.pricing)


def _tpu_profiles() -> dict[str, Hardware]:
    from planner.hardware import catalog

    return {n: h for n, h in catalog().items() if h.kind == "tpu" and h.tpu is not None}


class SliceInfo(BaseModel):
    """A slice as the API and the cost accounting see it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware: str
    chips: int
    hosts: int
    accelerator_type: str
    runtime_version: str
    pricing: Literal["spot", "on-demand"]
    usd_per_chip_hour: float
    price_source: str

    @property
    def spot(self) -> bool:
        return self.pricing == "spot"

    @classmethod
    def of(cls, hardware: str, chips: int, pricing: str) -> SliceInfo:
        hw = get_hardware(hardware)
        if hw.tpu is None:
            raise ClipaError("hardware", f"{hardware!r} is not a Cloud TPU profile")
        if pricing not in PRICINGS:
            raise ClipaError("pricing", f"{pricing!r}: the TPU launcher can request 'spot' or 'on-demand' capacity")
        per_host = hw.devices_per_host
        # Slices either fit in one host (a divisor of the host's chips: v5e-1, v5e-4, v5e-8) or span whole hosts.
        if chips < per_host:
            if per_host % chips:
                raise ClipaError("slice", f"{chips} chips: a single-host {hardware} slice has a divisor of "
                                          f"{per_host} chips")
        elif chips % per_host:
            raise ClipaError("slice", f"{chips} chips: a multi-host {hardware} slice is a multiple of {per_host} chips")
        price = hw.price(pricing)
        return cls(
            hardware=hw.name,
            chips=chips,
            hosts=max(1, chips // per_host),
            accelerator_type=hw.tpu.accelerator_type(chips),
            runtime_version=hw.tpu.runtime_version,
            pricing=pricing,  # type: ignore[arg-type]
            usd_per_chip_hour=price.usd_per_device_hour,
            price_source=f"{price.source} ({price.date})",
        )

    @classmethod
    def of_accelerator_type(cls, accelerator_type: str, pricing: str = "spot") -> SliceInfo:
        """The slice an API accelerator type names (``v5litepod-16``, ``v4-32``): the inverse of ``of``'s
        ``accelerator_type``, for what reads slices back from the API."""
        prefix, _, count = accelerator_type.rpartition("-")
        for hw in catalog().values():
            if hw.tpu is not None and hw.tpu.prefix == prefix and count.isdigit() and int(count) > 0:
                per_chip = 2 if hw.tpu.suffix_counts == "cores" else 1
                if int(count) % per_chip == 0:
                    return cls.of(hw.name, int(count) // per_chip, pricing)
        raise ClipaError("accelerator_type", f"{accelerator_type!r} is no Cloud TPU slice of the hardware catalog")
