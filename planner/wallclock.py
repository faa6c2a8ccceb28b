"""Wall-clock and billed dollars of a run on a slice of N chips: scaling efficiency, provisioning, checkpoints, spot
preemptions; and the per-stage memory fit (``planner.memory``) that decides micro-batches, remat and sharding.

Per stage (one step of ``batch`` samples on ``chips`` devices):

* compute time per step = device-seconds per sample (the cost model: FLOPs / (peak x MFU), plus remat's extra
  FLOPs) x batch / chips;
* gradient communication per step, a ring all-reduce of the float32 gradients: 2 (N-1)/N x 4 x params bytes over
  the per-device bandwidth (Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters of
  workstations"; the same alpha-beta accounting as "How to Scale Your Model", Austin et al. 2025). FSDP moves
  1.5x that (reduce-scatter of gradients plus the all-gather of parameters in forward and backward, the gather of
  the backward halved by reuse). ``COMM_OVERLAP`` of it hides behind compute (XLA overlaps the all-reduce with the
  backward pass of later layers; 0.5 is judgement, not measured);
* scaling efficiency = compute / (compute + (1 - overlap) x communication).

Per run: work = sum over stages of samples x seconds per sample / chips / efficiency; checkpoints every
``CHECKPOINT_EVERY_STEPS`` steps write 12 bytes per parameter at the catalog's per-host rate; provisioning once;
under spot pricing, preemptions arrive at ``per_host_day x hosts`` per day and each costs a re-provision, a restore
and on average half a checkpoint interval of lost work. With rate r (per hour) and cost c (hours) per preemption the
expected wall-clock is T = T0 / (1 - r c) (each hour of progress spends r c hours on preemptions); when r c >= 1 the
run never finishes. Billed hours exclude time spent waiting for provisioning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from planner.cost import seconds_per_sample
from planner.errors import ClipaError
from planner.hardware import Hardware, get_hardware
from planner.memory import FitChoice, choose_fit
from planner.spec import Stage
from planner.variants import decode_variant

COMM_OVERLAP = 0.5
CHECKPOINT_EVERY_STEPS = 200  # TrainOptions.checkpoint_every_steps' default
CHECKPOINT_BYTES_PER_PARAM = 12  # f32 parameters and two f32 Adam moments


def default_chips(hw: Hardware) -> int:
    """Without --slice: one host."""
    return hw.devices_per_host


def check_slice(hw: Hardware, chips: int) -> None:
    cal = hw.calendar
    if chips < 1:
        raise ClipaError("slice", f"{chips}: a slice has at least one chip")
    if cal is not None and chips > cal.max_chips:
        raise ClipaError("slice", f"{chips} chips: {hw.name} slices go up to {cal.max_chips} chips")
    if chips > hw.devices_per_host and chips % hw.devices_per_host:
        raise ClipaError("slice", f"{chips} chips: a {hw.name} slice beyond one host is a multiple of "
                                  f"{hw.devices_per_host} chips")


def hosts(hw: Hardware, chips: int) -> int:
    return max(1, -(-chips // hw.devices_per_host))


def bandwidth_gb_s(hw: Hardware, chips: int) -> float:
    cal = hw.calendar
    if cal is None:
        return float("inf")
    return cal.interconnect_gb_s if (hw.kind == "tpu" or chips <= hw.devices_per_host) else cal.inter_host_gb_s


def scaling_efficiency(hw: Hardware, chips: int, step_compute_s: float, params: int, sharding: str) -> float:
    if chips <= 1:
        return 1.0
    comm = 2 * (chips - 1) / chips * 4 * params / (bandwidth_gb_s(hw, chips) * 1e9)
    if sharding == "fsdp":
        comm *= 1.5
    return step_compute_s / (step_compute_s + (1 - COMM_OVERLAP) * comm)


@dataclass(frozen=True)
class StageTiming:
    fit: FitChoice
    sharding: str
    device_s_per_sample: float  # incl. remat / GradCache extra FLOPs
    efficiency: float
    steps: int
    samples: int
    chips: int

    @property
    def wall_hours(self) -> float:
        return self.samples * self.device_s_per_sample / self.chips / self.efficiency / 3600.0


def stage_timing(model: str, stage: Stage, hw: Hardware, chips: int, sharding: str) -> StageTiming:
    v = decode_variant(model)
    fit = choose_fit(v, stage, chips, hw.memory_gb, sharding)  # type: ignore[arg-type]
    base = seconds_per_sample(model, stage, hw)
    from planner.flops import stage_flops

    per_sample_flops = stage_flops(v, stage).train_per_sample
    dev_s = base * (1 + fit.extra_flops_per_sample / per_sample_flops)
    eff = scaling_efficiency(hw, chips, dev_s * stage.batch_size / chips, v.params, sharding)
    return StageTiming(fit, sharding, dev_s, eff, stage.steps, stage.samples, chips)


@dataclass(frozen=True)
class RunCalendar:
    chips: int
    hosts: int
    sharding: str
    stages: list[StageTiming]
    work_hours: float
    checkpoint_hours: float
    provision_hours: float
    preemptions: float
    wall_clock_hours: float
    billed_device_hours: float
    usd: float
    fits: bool

    def to_dict(self) -> dict:
        return {
            "chips": self.chips, "hosts": self.hosts, "sharding": self.sharding, "fits": self.fits,
            "wall_clock_hours": self.wall_clock_hours, "work_hours": self.work_hours,
            "checkpoint_hours": self.checkpoint_hours, "provision_hours": self.provision_hours,
            "expected_preemptions": self.preemptions, "billed_device_hours": self.billed_device_hours,
            "usd": self.usd,
            "stages": [{"micro_batch": t.fit.micro_batch, "remat": t.fit.remat,
                        "per_device_batch": t.fit.estimate.per_device_batch,
                        "peak_memory_gb": t.fit.estimate.peak_gb, "memory_limit_gb": t.fit.limit_bytes / 1e9,
                        "memory_source": "analytic", "fits": t.fit.fits, "scaling_efficiency": t.efficiency,
                        "wall_clock_hours": t.wall_hours} for t in self.stages],
        }


def preemption_rate_per_hour(hw: Hardware, pricing: str, chips: int) -> float:
    cal = hw.calendar
    if pricing != "spot" or cal is None or cal.spot_preemption is None:
        return 0.0
    return cal.spot_preemption.per_host_day * hosts(hw, chips) / 24.0


def expected_wall_clock(work_h: float, ckpt_h: float, provision_h: float, restore_h: float, interval_h: float,
                        rate_per_h: float) -> tuple[float, float]:
    """(wall-clock hours, expected preemptions); inf when preemptions come faster than progress."""
    t0 = work_h + ckpt_h + provision_h
    per_preemption = provision_h + restore_h + 0.5 * interval_h
    load = rate_per_h * per_preemption
    if load >= 1.0:
        return math.inf, math.inf
    t = t0 / (1.0 - load)
    return t, rate_per_h * t


def run_calendar(model: str, stages: Sequence[Stage], hardware: str | Hardware, pricing: str, chips: int,
                 sharding: str | None = None) -> RunCalendar:
    """Wall-clock, billed dollars and the per-stage fit of a run on ``chips`` devices. ``sharding`` None: data
    parallel when every stage fits so, else FSDP."""
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    check_slice(hw, chips)
    v = decode_variant(model)
    if sharding is None:
        timings = [stage_timing(model, st, hw, chips, "data") for st in stages]
        if not all(t.fit.fits for t in timings):
            sharding = "fsdp"
        else:
            sharding = "data"
    timings = [stage_timing(model, st, hw, chips, sharding) for st in stages]
    cal = hw.calendar
    work = sum(t.wall_hours for t in timings)
    steps = sum(t.steps for t in timings)
    n_hosts = hosts(hw, chips)
    save_h = (CHECKPOINT_BYTES_PER_PARAM * v.params / (n_hosts * cal.checkpoint_gb_s_per_host * 1e9) / 3600.0
              if cal else 0.0)
    ckpt = steps / CHECKPOINT_EVERY_STEPS * save_h
    prov = cal.provision_hours if cal else 0.0
    interval = work / max(steps, 1) * CHECKPOINT_EVERY_STEPS
    t, n = expected_wall_clock(work, ckpt, prov, save_h, interval, preemption_rate_per_hour(hw, pricing, chips))
    billed = chips * (t - (1 + n) * prov) if math.isfinite(t) else math.inf
    usd = billed * hw.price(pricing).usd_per_device_hour
    return RunCalendar(chips, n_hosts, sharding, timings, work, ckpt, prov, n, t, billed, usd,
                       all(x.fit.fits for x in timings))


def parse_duration(text: str) -> float:
    """'14d', '36h', '90m', '2w' or a bare number of hours -> hours; a ClipaError naming --deadline otherwise."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([wdhm]?)\s*", str(text).lower())
    if not m:
        raise ClipaError("deadline", f"{text!r} is not a duration (e.g. 14d, 36h, 90m, 2w)")
    hours = float(m.group(1)) * {"w": 168.0, "d": 24.0, "h": 1.0, "m": 1 / 60, "": 1.0}[m.group(2)]
    if not hours > 0 or not math.isfinite(hours):
        raise ClipaError("deadline", f"{text!r}: a deadline must be a positive duration")
    return hours
