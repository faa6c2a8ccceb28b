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
from planner.flops import stage_flops
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


def stage_timing(model: str, stage: Stage, hw: Hardware, chips: int, sharding: str,
                 memory_scale: float = 1.0) -> StageTiming:
    v = decode_variant(model)
    fit = choose_fit(v, stage, chips, hw.memory_gb, sharding, scale=memory_scale)  # type: ignore[arg-type]
    base = seconds_per_sample(model, stage, hw)
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
    preemption_usd: float = 0.0

    def to_dict(self) -> dict:
        return {
            "chips": self.chips, "hosts": self.hosts, "sharding": self.sharding, "fits": self.fits,
            "wall_clock_hours": self.wall_clock_hours, "work_hours": self.work_hours,
            "checkpoint_hours": self.checkpoint_hours, "provision_hours": self.provision_hours,
            "expected_preemptions": self.preemptions, "preemption_usd": self.preemption_usd,
            "billed_device_hours": self.billed_device_hours,
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
                 sharding: str | None = None, memory_scales: Sequence[float] | None = None) -> RunCalendar:
    """Wall-clock, billed dollars and the per-stage fit of a run on ``chips`` devices. ``sharding`` None: data
    parallel when every stage fits so, else FSDP. ``memory_scales``: per stage, the factor a compile showed the
    analytic peak to be short by (1 where none was compiled)."""
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    check_slice(hw, chips)
    v = decode_variant(model)
    scales = list(memory_scales) if memory_scales is not None else [1.0] * len(stages)
    if sharding is None:
        timings = [stage_timing(model, st, hw, chips, "data", k) for st, k in zip(stages, scales)]
        if not all(t.fit.fits for t in timings):
            sharding = "fsdp"
        else:
            sharding = "data"
    timings = [stage_timing(model, st, hw, chips, sharding, k) for st, k in zip(stages, scales)]
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
    rate = hw.price(pricing).usd_per_device_hour
    usd = billed * rate
    # each relaunch bills the restore and, on average, half a checkpoint interval of lost steps on every chip
    preemption_usd = n * chips * (save_h + 0.5 * interval) * rate if math.isfinite(n) else math.inf
    return RunCalendar(chips, n_hosts, sharding, timings, work, ckpt, prov, n, t, billed, usd,
                       all(x.fit.fits for x in timings), preemption_usd)


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


def candidate_calendar(cands, space, hw: Hardware, pricing: str, chips: int):
    """For every candidate row of ``planner.search.enumerate_candidates``: whether each stage fits the slice's
    memory (and with which sharding), wall-clock hours, expected preemptions and billed dollars; vectorised over
    rows like the search itself (one ``stage_timing`` per distinct stage shape and sharding)."""
    return priced_calendar(candidate_work(cands, space, hw, chips), hw, pricing, chips)


def candidate_work(cands, space, hw: Hardware, chips: int):
    """The pricing-independent part of ``candidate_calendar``: per row, sharding, memory fit, hours of steps on the
    slice, step count and checkpoint save time."""
    import numpy as np
    import pandas as pd

    from planner.recipe import FULL_TEXT_LEN
    from planner.search import ft_batch, make_stage

    check_slice(hw, chips)
    cal = hw.calendar
    n_hosts = hosts(hw, chips)
    modes = ("data", "fsdp")
    cache: dict[tuple, tuple[float, bool]] = {}

    def per_sample(model: str, st: Stage, mode: str, index: int) -> tuple[float, bool]:
        """(wall hours per sample on the slice, fits)."""
        key = (model, st.image_res, st.text_len, st.mask_ratio, st.batch_size, index > 0, mode)
        if key not in cache:
            if st.batch_size % chips:
                cache[key] = (math.inf, False)
            else:
                t = stage_timing(model, st, hw, chips, mode)
                cache[key] = (t.device_s_per_sample / chips / t.efficiency / 3600.0, t.fit.fits)
        return cache[key]

    n = len(cands)
    work = {m: np.zeros(n) for m in modes}
    fits = {m: np.ones(n, dtype=bool) for m in modes}
    steps = np.zeros(n)
    save_h = np.zeros(n)
    models = cands["model"].to_numpy()
    ft_id = cands["ft_id"].to_numpy().astype(np.int64)
    pt_samples = cands["pt_samples"].to_numpy().astype(np.float64)
    pt_batch = cands["pt_batch"].to_numpy()
    pt_res = cands["pt_res"].to_numpy()
    pt_text = cands["pt_text"].to_numpy()
    for model in pd.unique(models):
        sel = models == model
        v = decode_variant(model)
        save_h[sel] = (CHECKPOINT_BYTES_PER_PARAM * v.params / (n_hosts * cal.checkpoint_gb_s_per_host * 1e9) / 3600.0
                       if cal else 0.0)
        # fine-tune options: per option, wall hours, steps and fit
        ft_work = {m: np.zeros(len(space.finetunes)) for m in modes}
        ft_fit = {m: np.ones(len(space.finetunes), dtype=bool) for m in modes}
        ft_steps = np.zeros(len(space.finetunes))
        for k, opt in enumerate(space.finetunes):
            for j, ft in enumerate(opt):
                st = make_stage(model, j + 1, 1_000_000, ft_batch(ft, space), ft.res, FULL_TEXT_LEN, ft.mask_ratio)
                ft_steps[k] += ft.samples / st.batch_size
                for m in modes:
                    h, ok = per_sample(model, st, m, j + 1)
                    ft_work[m][k] += h * ft.samples
                    ft_fit[m][k] &= ok
        idx = np.flatnonzero(sel)
        keys = pd.MultiIndex.from_arrays([pt_res[idx], pt_text[idx], pt_batch[idx]])
        for (res, text, batch) in keys.unique():
            rows = idx[(pt_res[idx] == res) & (pt_text[idx] == text) & (pt_batch[idx] == batch)]
            st = make_stage(model, 0, 1_000_000, int(batch), int(res), int(text), 0.0)
            for m in modes:
                h, ok = per_sample(model, st, m, 0)
                work[m][rows] = h * pt_samples[rows] + ft_work[m][ft_id[rows]]
                fits[m][rows] = ok & ft_fit[m][ft_id[rows]]
            steps[rows] = pt_samples[rows] / batch + ft_steps[ft_id[rows]]
    use_data = fits["data"]
    return pd.DataFrame({"sharding": np.where(use_data, "data", "fsdp"), "fits_memory": use_data | fits["fsdp"],
                         "work_hours": np.where(use_data, work["data"], work["fsdp"]), "steps": steps,
                         "save_hours": save_h}, index=cands.index)


def priced_calendar(w, hw: Hardware, pricing: str, chips: int):
    """Wall-clock, expected preemptions and billed dollars from ``candidate_work``'s rows at ``pricing``."""
    import numpy as np
    import pandas as pd

    cal = hw.calendar
    rate = hw.price(pricing).usd_per_device_hour
    prov = cal.provision_hours if cal else 0.0
    lam = preemption_rate_per_hour(hw, pricing, chips)
    work_h, steps, save_h = (w[k].to_numpy() for k in ("work_hours", "steps", "save_hours"))
    sharding, fit = w["sharding"].to_numpy(), w["fits_memory"].to_numpy()
    ckpt = steps / CHECKPOINT_EVERY_STEPS * save_h
    interval = work_h / np.maximum(steps, 1) * CHECKPOINT_EVERY_STEPS
    per_pre = prov + save_h + 0.5 * interval
    load = lam * per_pre
    with np.errstate(divide="ignore", invalid="ignore"):
        wall = np.where(load < 1, (work_h + ckpt + prov) / np.maximum(1 - load, 1e-12), np.inf)
        pre = lam * wall
        billed = chips * (wall - (1 + pre) * prov)
    return pd.DataFrame({"chips": chips, "sharding": sharding, "fits_memory": fit, "wall_clock_hours": wall,
                         "expected_preemptions": pre, "billed_device_hours": billed, "billed_usd": billed * rate},
                        index=w.index)


def calendar_candidates(space, hw_pricing: tuple[str, str] | None, budget_usd: float, slice_chips: int | None,
                        deadline_hours: float | None):
    """Candidates priced on a slice: ``cost_usd`` becomes the billed dollars (``compute_usd`` keeps the cost
    model's), stages that cannot fit the slice's memory at any setting drop out, and with a deadline so do runs
    that cannot finish in time (a ClipaError naming the fastest one when none can). ``hw_pricing`` None: every
    catalogued accelerator and pricing. Returns (candidates, how many were priced, notes)."""
    import pandas as pd

    from planner.hardware import catalog
    from planner.recipe import format_schedule
    from planner.search import candidate_stages, enumerate_candidates

    if hw_pricing is not None:
        pairs = [(get_hardware(hw_pricing[0]), [hw_pricing[1]])]
    else:
        pairs = [(h, list(h.prices)) for h in catalog().values() if h.kind != "cpu" and h.prices]
    frames, considered, rejected = [], 0, 0
    for hw, pricings in pairs:
        chips = slice_chips or default_chips(hw)
        if hw_pricing is None and hw.calendar is not None and chips > hw.calendar.max_chips:
            continue
        base = enumerate_candidates(space, hw.name, pricings[0])
        work = candidate_work(base, space, hw, chips)  # once per hardware: pricing changes only the tail
        for pr in pricings:
            c = base.copy()
            c["cost_usd"] = c["device_hours"] * hw.price(pr).usd_per_device_hour
            considered += len(c)
            if hw_pricing is None:  # billed dollars are never below compute dollars: a safe pre-filter
                c = c[c["cost_usd"] <= budget_usd]
            c = c.join(priced_calendar(work.loc[c.index], hw, pr, chips))
            rejected += int((~c["fits_memory"]).sum())
            c = c[c["fits_memory"]]
            c["compute_usd"] = c["cost_usd"]
            c["cost_usd"] = c["billed_usd"]
            c["hardware"] = hw.name
            c["pricing"] = pr
            frames.append(c)
    if not frames:
        raise ClipaError("slice", f"{slice_chips} chips is beyond every catalogued hardware's largest slice")
    cands = pd.concat(frames, ignore_index=True)
    if cands.empty and considered:
        where = f"{hw_pricing[0]} x {slice_chips or default_chips(get_hardware(hw_pricing[0]))}" if hw_pricing \
            else f"any hardware at {slice_chips} chips"
        raise ClipaError("slice", f"no candidate's stages fit the device memory of {where} at any micro-batch, remat "
                                  "or sharding (the searched global batches start at 4,096; a larger slice splits "
                                  "them)")
    notes = []
    if rejected:
        notes.append(f"{rejected:,} candidates dropped: a stage fits no micro-batch/remat/sharding setting in the "
                     "slice's memory (analytic model, planner.memory)")
    if deadline_hours is not None:
        within = cands[cands["cost_usd"] <= budget_usd]
        ok = within[within["wall_clock_hours"] <= deadline_hours]
        if not within.empty and ok.empty:
            f = within.loc[within["wall_clock_hours"].idxmin()]
            sched = format_schedule(candidate_stages(f, space), f.model)
            raise ClipaError("deadline", f"no candidate within ${budget_usd:,.0f} finishes in {deadline_hours:g} h; "
                             f"the fastest is {f.model} '{sched}' on {int(f.chips)} {f.hardware} chips ({f.pricing}): "
                             f"{f.wall_clock_hours:,.1f} h for ${f.cost_usd:,.0f}")
        if not within.empty:
            cands = ok
    return cands, considered, notes


def chosen_calendar(model: str, stages: list[Stage], hw: Hardware, pricing: str, chips: int,
                    memory_scales: Sequence[float] | None = None):
    """The chosen plan's stages with their micro-batch and remat written in, the run's train options (sharding)
    and the calendar fields the plan reports."""
    cal = run_calendar(model, stages, hw, pricing, chips, memory_scales=memory_scales)
    out = [st.model_copy(update={"micro_batch": t.fit.micro_batch, "remat": t.fit.remat})
           for st, t in zip(stages, cal.stages)]
    body = {"hardware": hw.name, "pricing": pricing, **cal.to_dict()}
    body["cost_usd"] = body.pop("usd")
    return out, {"sharding": cal.sharding}, body
