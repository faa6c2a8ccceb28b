"""The pilot for a new dataset or hardware: a small designed grid of cheap runs, and the measured run overhead.

``design_pilot`` picks the runs: an L9 orthogonal array over four three-level axes (model size, pre-training
resolution, text length, samples seen) plus two fine-tuned runs of different lengths, so that every level of every axis appears three times
and each pair of axes is balanced: the law's size, samples, image-token and text-token terms are each seen at three
levels without paying for a full 3^4 grid. The design is chosen for the plans that will follow it (budgets of
``PLAN_MULTIPLES`` x the pilot's): its model axis spans the models the smallest of those plans can afford (at least
``MIN_PLAN_SAMPLES`` at full resolution and captions), and each model's samples are a geometric ladder (x3) in
proportion to the square root of what the middle plan can afford for that model, scaled to spend the pilot's
budget; so a cheap model's pilot runs reach further in samples than an expensive one's, as the plans' runs will. ``write_pilot`` writes it as a plan folder (``plan.json`` + one spec per run), which ``clipa pilot`` executes
with the closed loop (resumable, idempotent: the folder is reused, never redesigned).

Pricing is the one cost model (``planner.cost``, through ``planner.search.enumerate_candidates``' per-sample
pricing) plus a measured *overhead*: on the CPU profile tiny towers are not FLOP-bound (input decoding, per-step
dispatch and the compile of each stage dominate), so the FLOP/MFU model alone prices a mu/8 run some 50-100x below
its measured device time. ``Overhead`` adds seconds per sample and per stage; ``prior_overhead`` is this machine's
measurement, ``measured_overhead`` refits it from recorded runs (non-negative least squares), and ``apply_overhead``
reprices candidates with it. Imports no JAX.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from planner.data_profile import profile_for
from planner.errors import ClipaError
from planner.hardware import default_pricing, get_hardware
from planner.recipe import FULL_TEXT_LEN
from planner.search import FinetuneStage, SearchSpace, batch_for, cpu_space, ft_batch, make_stage, space_for
from planner.spec import RunSpec, spec_from_dict

# L9(3^4): rows are runs, columns the level (0, 1, 2) of model, resolution, text length, samples
L9 = ((0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 2, 2), (1, 0, 1, 2), (1, 1, 2, 0), (1, 2, 0, 1), (2, 0, 2, 1), (2, 1, 0, 2),
      (2, 2, 1, 0))
SAMPLES_RATIO = 3.0
# the fewest pre-training samples of a pilot run. Shorter runs sit at chance, below the take-off of the learning curve
# (a few hundred steps at batch 64), where the law's power law in error does not hold: a $0.003 pilot of 1-12K-sample
# runs stayed at 1.6-3% and its study predicted 44% for a 42K-sample run; in a $0.0075 pilot floored at 10K, runs of
# 10-20K samples scored 1.0-4.4% and runs of 27-46K 9.8-10.9% (chance 1.6%), and its study predicted 49% for a
# 163K-sample run of mini/8 (a 120K-sample run of it scores 15%). A budget that cannot pay for this floor buys no pilot.
MIN_PILOT_SAMPLES = 25_000
MIN_FT_SAMPLES = 1_000  # a fine-tune stage's floor (it continues a trained model)
# the plans a pilot is for: budgets of about 1x, 3x and 10x its own (issue 19); the design spans what they can afford
PLAN_MULTIPLES = (1.0, 3.0, 10.0)
# a model enters the design only if the smallest plan can train it on at least this many samples at the data's
# resolution and full captions (fewer learn next to nothing on the generated data: ~10% top-1 at 30K)
MIN_PLAN_SAMPLES = 30_000


@dataclass(frozen=True)
class Overhead:
    """Device-seconds beyond the cost model: ``scale`` x modelled seconds + ``per_sample_s`` x samples +
    ``per_stage_s`` x stages (a compile and a checkpoint per stage)."""

    scale: float = 1.0
    per_sample_s: float = 0.0
    per_stage_s: float = 0.0
    source: str = "none"

    def seconds(self, modelled_s: Any, samples: Any, stages: Any) -> Any:
        return self.scale * modelled_s + self.per_sample_s * samples + self.per_stage_s * stages


# Measured on cpu-2core with `clipa data synth --resolution 32` data, batch 64: nnls over the 15 runs of the closed
# loop of 2026-12-04 (mu/8 and mini/8, 25K-328K samples, 16-32 px, one or two stages) and an xs/8 and a mini/8 run of
# 12.8K samples at 32/32 on 2026-12-05: ~0.88x the FLOP/MFU model (budgets/hardware.yaml's cpu-2core profile), 0.26 ms
# a sample (input pipeline) and ~2.8 s a stage (compile, checkpoint); worst of the 17 within 25% but the 9 s mini/8
# run (fit 14 s); the xs/8 run 48.0 s against 48.6. Evaluation is not metered. The earlier prior (2026-11-28, 4 runs
# under a load of 1-4: 2.25x, 0.24 ms, 9.7 s) priced the same runs 2-2.4x too high, so a $0.008 pilot left xs/8 out.
CPU_PRIOR = Overhead(0.88, 2.6e-4, 2.8, "prior: cpu-2core nnls over 17 runs (planner.pilot)")


def prior_overhead(hardware: str) -> Overhead:
    return CPU_PRIOR if get_hardware(hardware).kind == "cpu" else Overhead()


def measured_overhead(hardware: str, runs_dir: Path | None = None) -> Overhead | None:
    """The overhead refitted from recorded runs on ``hardware`` (None with fewer than 3 of them).

    Fits measured device-seconds = a x modelled + b x samples + c x stages with a, b, c >= 0 (scipy nnls)."""
    from scipy.optimize import nnls

    from planner.cost import cost_spec
    from planner.runs import read_runs

    records, _ = read_runs(runs_dir)  # bad files: reported by the fit's reader of the same folder
    rows = []
    for r in (rec.result for rec in records if rec.result is not None):
        if r.spec.hardware != get_hardware(hardware).name or r.device_hours <= 0:
            continue
        modelled = cost_spec(r.spec).device_hours * 3600.0
        rows.append((modelled, sum(s.samples for s in r.spec.stages), len(r.spec.stages), r.device_hours * 3600.0))
    if len(rows) < 3:
        return None
    a = np.array(rows, dtype=float)
    coef, _ = nnls(a[:, :3], a[:, 3])
    return Overhead(float(coef[0]), float(coef[1]), float(coef[2]), f"measured: nnls over {len(rows)} recorded runs")


def overhead_for(hardware: str, runs_dir: Path | None = None) -> Overhead:
    """The measured overhead when there are runs to measure it from, else the hardware's prior."""
    if get_hardware(hardware).kind != "cpu":
        return Overhead()
    return measured_overhead(hardware, runs_dir) or prior_overhead(hardware)


def apply_overhead(cands: pd.DataFrame, space: SearchSpace, overhead: Overhead, rate: float) -> pd.DataFrame:
    """``planner.search.enumerate_candidates`` rows repriced with ``overhead`` (device_hours and cost_usd)."""
    ft_samples = np.array([sum(st.samples for st in opt) for opt in space.finetunes], dtype=float)
    ft_stages = np.array([len(opt) for opt in space.finetunes], dtype=float)
    ft_id = cands["ft_id"].to_numpy().astype(int)
    samples = cands["pt_samples"].to_numpy(float) + ft_samples[ft_id]
    secs = overhead.seconds(cands["device_hours"].to_numpy(float) * 3600.0, samples, 1.0 + ft_stages[ft_id])
    out = cands.copy()
    out["device_hours"] = secs / 3600.0
    out["cost_usd"] = out["device_hours"] * rate
    return out


# ---------------------------------------------------------------------------------------------------------------------
# design


@dataclass
class PilotRun:
    model: str
    res: int
    text_len: int
    samples: int
    finetune: int  # fine-tune samples at the data's resolution (0: none)
    cost_usd: float
    device_hours: float


@dataclass
class PilotDesign:
    budget_usd: float
    dataset: str
    hardware: str
    pricing: str
    overhead: Overhead
    runs: list[PilotRun]
    specs: list[RunSpec]
    # what the design took from the data and what it could not respect (issue 20): one line each
    notes: list[str] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.runs)


def _levels(values: tuple, n: int = 3, ordered: bool = False) -> tuple:
    """n levels spanning an axis: its lowest, middle and highest value (``ordered``: already in order)."""
    v = list(values) if ordered else sorted(values)
    if len(v) >= n:
        return tuple(v[round(i * (len(v) - 1) / (n - 1))] for i in range(n))
    return tuple(v[min(i, len(v) - 1)] for i in range(n))


def _run_stages(space: SearchSpace, run: PilotRun) -> list:
    stages = [make_stage(run.model, 0, run.samples, batch_for(run.samples, space), run.res, run.text_len, 0.0,
                         lr_base=space.lr_base)]
    if run.finetune:
        ft = FinetuneStage(space.full_res, run.finetune, 0.0)
        stages.append(make_stage(run.model, 1, ft.samples, ft_batch(ft, space), ft.res, FULL_TEXT_LEN, 0.0, 0,
                                 lr_base=space.lr_base))
    return stages


def _price(space: SearchSpace, run: PilotRun, hardware: str, pricing: str, overhead: Overhead) -> tuple[float, float]:
    from planner.cost import cost_stages

    stages = _run_stages(space, run)
    c = cost_stages(run.model, stages, hardware, pricing)
    secs = overhead.seconds(c.device_hours * 3600.0, sum(s.samples for s in stages), len(stages))
    return secs / 3600.0 * c.usd_per_device_hour, secs / 3600.0


def affordable_samples(space: SearchSpace, model: str, budget_usd: float, res: int, hardware: str, pricing: str,
                       overhead: Overhead) -> float:
    """Samples one pre-training run of ``model`` at ``res`` px and full captions can see for ``budget_usd``
    (0 when not even the run's fixed cost fits); the cost is linear in samples, so two prices give it."""
    def usd(n: int) -> float:
        return _price(space, PilotRun(model, res, FULL_TEXT_LEN, n, 0, 0.0, 0.0), hardware, pricing, overhead)[0]

    lo, hi = 10_000, 1_000_000
    c_lo, c_hi = usd(lo), usd(hi)
    per = (c_hi - c_lo) / (hi - lo)
    fixed = c_lo - per * lo
    return max((budget_usd - fixed) / per, 0.0) if per > 0 else 0.0


def design_pilot(budget_usd: float, dataset: str, data_dir: Path | None = None, hardware: str = "cpu-2core",
                 pricing: str | None = None, data_res: int | None = None, overhead: Overhead | None = None,
                 models: tuple[str, ...] | None = None, n_runs: int | None = None,
                 plan_multiples: tuple[float, ...] = PLAN_MULTIPLES,
                 min_samples: int = MIN_PILOT_SAMPLES) -> PilotDesign:
    """The pilot's runs: L9 over (model, resolution, text, samples) + two fine-tuned runs, for plans of
    ``plan_multiples`` x ``budget_usd``: the models those plans can afford, each model's samples ladder in proportion
    to what they can afford for it, scaled to spend at most ``budget_usd`` (the most expensive feasible scale, found
    by bisection).

    ``models`` restricts the model axis (e.g. only mu/8 for a quick loop); ``n_runs`` keeps the first runs of the
    array (at least 3); ``min_samples`` is the floor of a run's pre-training samples (the learning curve's take-off;
    the default is the generated data's). Raises ClipaError when even the smallest design does not fit the budget."""
    from planner.datasets import canonical_dataset

    if min_samples < 1:
        raise ClipaError("min_samples", "must be at least 1")
    dataset = canonical_dataset(dataset)
    hw = get_hardware(hardware)
    pricing = pricing or default_pricing(hw.name)
    hw.price(pricing)
    notes: list[str] = []
    caption_p90 = None
    if data_res is None and data_dir is not None:
        # the data's own profile (issue 20), never the generated set's 64 px
        prof, measured = profile_for(data_dir)
        data_res = prof.resolution
        caption_p90 = prof.caption_tokens.p90 if prof.caption_tokens else None
        notes.append(measured or f"data: {prof.summary()}")  # the measuring note carries the summary too
    if data_res is not None and data_res < 8:
        raise ClipaError("data", f"images of {data_res} px are smaller than one 8 px patch of the CPU towers")
    # every stage at most the native resolution: cpu_space's resolutions stop there
    space = space_for(hw, data_res) if hw.kind == "cpu" else cpu_space(data_res or 64)
    overhead = overhead or overhead_for(hw.name)
    if not plan_multiples or min(plan_multiples) <= 0:
        raise ClipaError("plan_multiples", "the later plans' budgets must be positive multiples of the pilot's")
    plan_budgets = sorted(m * budget_usd for m in plan_multiples)
    mid_budget = plan_budgets[len(plan_budgets) // 2]

    def afford(model: str, usd: float) -> float:
        return affordable_samples(space, model, usd, space.full_res, hw.name, pricing, overhead)

    candidates = tuple(models or space.models)  # the space lists models by size
    if models is None:
        usable = tuple(m for m in candidates if afford(m, plan_budgets[0]) >= MIN_PLAN_SAMPLES)
        dropped = [m for m in candidates if m not in usable]
        if dropped:
            notes.append(f"models {', '.join(dropped)} left out: a ${plan_budgets[0]:.4g} plan affords fewer than "
                         f"{MIN_PLAN_SAMPLES:,} samples of them at {space.full_res} px")
        candidates = usable or candidates[:1]
    res = _levels(space.pretrain_res[8])
    texts = _levels(space.text_lens)
    rows = list(L9)
    if n_runs is not None:
        if n_runs < 3:
            raise ClipaError("runs", "a pilot needs at least 3 runs to fit anything")
        # the array's first rows: rows 0-2 take every level of resolution, text and samples (no three rows can do
        # that on all four axes, which is why a shortened pilot is meant for one model), row 3 breaks their
        # correlation (the samples level no longer follows the token levels)
        rows = list(L9[: min(n_runs, 9)])

    def design_for(candidates: tuple[str, ...]):
        mods = _levels(candidates, ordered=True)
        # each model's samples follow what the middle plan affords it, relative to the cheapest model's: as the
        # square root of that ratio, halfway (in log) between equal samples (the expensive model's runs would eat
        # the budget) and equal cost (its runs would be too short to learn anything)
        reach = {m: max(afford(m, mid_budget), 1.0) for m in set(mods)}
        top = max(reach.values())
        rel = {m: (reach[m] / top) ** 0.5 for m in reach}

        def build(scale: float) -> list[PilotRun]:
            def samples(model: str, level: int) -> int:
                return max(int(round(scale * rel[model] * SAMPLES_RATIO**level, -2)), min_samples)

            runs = [PilotRun(mods[a], res[b], texts[c], samples(mods[a], d), 0, 0.0, 0.0) for a, b, c, d in rows]
            # the fine-tune term: pre-training at the lowest resolution and shortest text, then a fine-tune at the
            # data's resolution and full text; two runs (a short fine-tune of the smallest model, a longer one of the
            # middle model) so that the fine-tune's length scale s0 is measured rather than left to its prior: a
            # first pilot with one fine-tuned run let a plan extrapolate a fine-tune 12x longer and miss by 57 points
            short_ft = max(samples(mods[0], 0) // 2, MIN_FT_SAMPLES)
            if n_runs is None or n_runs > 9:
                runs.append(PilotRun(mods[0], res[0], texts[0], samples(mods[0], 1), short_ft, 0.0, 0.0))
            if n_runs is None or n_runs > 10:  # at least twice the first one's (floors could make them equal)
                runs.append(PilotRun(mods[1], res[0], texts[0], samples(mods[1], 1),
                                     max(samples(mods[1], 1) // 2, 2 * short_ft), 0.0, 0.0))
            for r in runs:
                r.cost_usd, r.device_hours = _price(space, r, hw.name, pricing, overhead)
            return runs

        return mods, reach, build

    # the largest models go first when the design at the samples floor does not fit: a pilot measures the towers it
    # can train past the take-off, not every tower at chance
    while True:
        mods, reach, build = design_for(candidates)
        floor_cost = sum(r.cost_usd for r in build(1.0))
        if floor_cost <= budget_usd or len(candidates) == 1 or models is not None:
            break
        notes.append(f"{candidates[-1]} left out: the design with it costs ${floor_cost:.4g} at "
                     f"{min_samples:,} samples a run, over the ${budget_usd:.4g} budget")
        candidates = candidates[:-1]
    lo, hi = 1.0, 1e9  # the scale; every run's samples are floored at min_samples
    if floor_cost > budget_usd:
        raise ClipaError("budget", f"${budget_usd:.4f} buys no pilot on {hw.name}: the smallest design costs "
                                   f"${floor_cost:.4f} ({len(build(lo))} runs of {min_samples:,}+ samples)")
    for _ in range(50):
        mid = (lo * hi) ** 0.5
        if sum(r.cost_usd for r in build(mid)) <= budget_usd:
            lo = mid
        else:
            hi = mid
    runs = build(lo)
    specs = [_spec(space, r, dataset, data_dir, hw.name, pricing) for r in runs]
    notes.append("for plans of " + ", ".join(f"${b:.4g}" for b in plan_budgets) + ": "
                 + ", ".join(f"{m} up to {max(r.samples for r in runs if r.model == m):,} samples "
                             f"(a ${mid_budget:.4g} plan affords {reach[m]:,.0f})" for m in dict.fromkeys(mods)))
    if caption_p90 is not None:
        padded = sorted({r.text_len for r in runs} | ({FULL_TEXT_LEN} if any(r.finetune for r in runs) else set()))
        padded = [t for t in padded if t > caption_p90]
        if padded:
            notes.append(f"captions are short (90% within {caption_p90:g} tokens): runs at {'/'.join(map(str, padded))}"
                         " tokens mostly pad, so the study measures little of the text-length term there")
    return PilotDesign(budget_usd, dataset, hw.name, pricing, overhead, runs, specs, notes)


def data_fields(data_dir: Path | None) -> dict[str, str]:
    """A spec's data, eval_data and tokenizer fields for a generated dataset folder."""
    if data_dir is None:
        return {}
    d = Path(data_dir).absolute()
    if not (d / "train").is_dir():
        raise ClipaError("data", f"{d} has no train/ folder (make one with: clipa data synth --out {d})")
    out = {"data": str(d / "train")}
    if (d / "eval").is_dir():
        out["eval_data"] = str(d / "eval")
    if (d / "tokenizer.json").exists():
        out["tokenizer"] = str(d / "tokenizer.json")
    return out


def _spec(space: SearchSpace, run: PilotRun, dataset: str, data_dir: Path | None, hardware: str,
          pricing: str) -> RunSpec:
    stages = _run_stages(space, run)
    return spec_from_dict({"model": run.model, "dataset": dataset, "hardware": hardware, "pricing": pricing,
                           **data_fields(data_dir), "stages": [s.model_dump(mode="json") for s in stages]})


def pilot_id(budget_usd: float, dataset: str, hardware: str, pricing: str, data_dir: Path | None) -> str:
    req = {"pilot": 1, "budget_usd": budget_usd, "dataset": dataset, "hardware": hardware, "pricing": pricing,
           "data": str(Path(data_dir).absolute()) if data_dir else None}
    return "pilot-" + hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:10]


def write_pilot(design: PilotDesign, plan_dir: Path, plan_id: str) -> dict[str, Any]:
    """Write the design as a plan folder (plan.json + runs/<run-id>.yaml); runs carry no prediction (the pilot is
    what the prediction will be made from)."""
    from planner.recipe import format_schedule
    from planner.store import atomic_write_text

    runs = []
    for r, spec in zip(design.runs, design.specs):
        path = Path(plan_dir).absolute() / "runs" / f"{spec.run_id}.yaml"
        spec.write(path)
        runs.append({"run_id": spec.run_id, "spec": str(path), "prediction": None, "model": spec.model,
                     "schedule": format_schedule(spec.stages, spec.model), "cost_usd": r.cost_usd,
                     "device_hours": r.device_hours})
    body = {"plan_id": plan_id, "kind": "pilot", "budget_usd": design.budget_usd, "dataset": design.dataset,
            "hardware": design.hardware, "pricing": design.pricing, "overhead": asdict(design.overhead),
            "cost_usd": design.cost_usd, "notes": design.notes, "runs": runs}
    atomic_write_text(Path(plan_dir) / "plan.json", json.dumps(body, indent=2) + "\n")
    return body
