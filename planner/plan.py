"""``clipa plan``: the best predicted recipe within a budget, its uncertainty, and the run specs to execute it.

Steps: enumerate and price candidates (``planner.search``), keep those within budget, predict each with the fitted
accuracy model, rank by the objective (``mean``: predicted top-1; ``p10``: the low end of the 80% interval, for a
cautious user), and write ``plans/<plan-id>/plan.json`` plus one run spec per run. The plan id hashes the request
and the fit version, so the same question on the same fit gives the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from planner import paths
from planner.binding import Binding
from planner.cost import cost_stages
from planner.datasets import canonical_dataset, is_local
from planner.errors import ClipaError
from planner.hardware import catalog, default_pricing, get_hardware
from planner.recipe import format_schedule
from planner.search import (Predictor, SearchSpace, candidate_features, candidate_stages, enumerate_candidates,
                            frontier, space_for)
from planner.spec import RunSpec, spec_from_dict
from planner.store import atomic_write_text

Objective = Literal["mean", "p10"]
# On a local study, how far beyond the study's largest run of the same model size (in samples) a plan is still ranked
# with the in-range ones
LOCAL_SAMPLES_REACH = 4.0
_BUDGET_RE = re.compile(r"^\$?\s*([0-9][0-9,_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([kKmM]?)$")


def parse_budget(text: str) -> float:
    """'10000', '$10,000', '10k', '1.5M', or a preset name from budgets/presets.yaml."""
    import yaml

    t = str(text).strip()
    presets_path = paths.budgets_dir() / "presets.yaml"
    if presets_path.exists():
        presets = yaml.safe_load(presets_path.read_text()) or {}
        if t in presets:
            return float(presets[t]["usd"])
    m = _BUDGET_RE.match(t)
    if not m:
        raise ClipaError("budget", f"{text!r} is not an amount in USD (e.g. 10000, 10k, $2,500) or a preset name")
    value = float(m.group(1).replace(",", "").replace("_", "")) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if not value > 0 or value != value or value == float("inf"):
        raise ClipaError("budget", f"budget must be a positive amount, got {text!r}")
    return value


@dataclass
class PlanResult:
    plan_id: str
    plan_dir: Path
    body: dict[str, Any]


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ClipaError("out", f"cannot write to {directory}: {e.strerror or e}") from None


def _candidate_dict(row, space: SearchSpace, dataset: str) -> dict[str, Any]:
    stages = candidate_stages(row, space)
    return {
        "model": row.model,
        "dataset": dataset,
        "schedule": format_schedule(stages, row.model),
        "cost_usd": float(row.cost_usd),
        "device_hours": float(row.device_hours),
        "flops": float(row.flops),
        "predicted_top1": float(row.predicted_top1),
        "interval": [float(row.low), float(row.high)],
        "extrapolated": bool(row.extrapolated),
        # thin data where it stands (planner.accuracy.thin_data), e.g. "no g/14 on datacomp-1b"
        "flags": list(getattr(row, "flags", ()) or ()),
    }


def _executed_recipes(dataset: str) -> dict[tuple[str, str], tuple[str, float]]:
    """Recipes already run on ``dataset`` (``results/runs``): (model, schedule) -> (run key, measured top-1)."""
    from planner.results import load_runs

    runs = load_runs(report=False)
    runs = runs[runs["dataset"] == dataset]
    return {(r.model, r.schedule): (str(r.key), float(r.top1)) for r in runs.itertuples()}


def _new_recipes_first(ranked: pd.DataFrame, space: SearchSpace, dataset: str) -> tuple[pd.DataFrame, list[str]]:
    """``ranked`` with the leading candidates that were already run on this dataset moved behind the first one that
    was not, and a note per recipe moved: running a recipe again (same spec, same seed) repeats a measurement the
    fit already has, for its full price. Unchanged when every candidate was run."""
    executed = _executed_recipes(dataset)
    moved, notes = [], []
    for pos, row in enumerate(ranked.itertuples()):
        sched = format_schedule(candidate_stages(row, space), row.model)
        done = executed.get((row.model, sched))
        if done is None:
            break
        moved.append(pos)
        notes.append(f"already run: {row.model} '{sched}' (top-1 {done[1]:.2f}% measured, {done[0]}): ranked after "
                     "the recipes not yet run (running it again repeats that measurement at full price)")
    else:
        return ranked, []
    if not moved:
        return ranked, []
    keep = np.ones(len(ranked), dtype=bool)
    keep[moved] = False
    return pd.concat([ranked[keep], ranked.iloc[moved]]), notes


BEYOND_GAIN = 0.5  # points: a candidate beyond the study predicted at least this much better is worth saying


def _beyond_the_study(outside: pd.DataFrame, chosen_row: Any, key: str, space: SearchSpace) -> list[str]:
    """A note for a local plan that leaves budget on the table because its study cannot vouch for the better
    candidates: the best one beyond the study's range within the budget, what its fit predicts for it and why that
    is a guess; empty when nothing beyond the range is predicted ``BEYOND_GAIN`` points better."""
    if outside.empty:
        return []
    best = outside.loc[outside[key].idxmax()]
    gain = float(best[key]) - float(getattr(chosen_row, key))
    if gain < BEYOND_GAIN:
        return []
    why = ("outside the study's runs on more than samples (model size, image tokens, text or fine-tune length)"
           if best["other_excess"] > 1e-9 else
           f"more than {LOCAL_SAMPLES_REACH:g}x the samples of the study's largest {best['model']} run")
    sched = format_schedule(candidate_stages(best, space), best["model"])
    return [f"beyond the study: {best['model']} '{sched}' (${best['cost_usd']:.3g}) is predicted "
            f"{gain:.1f} points higher, but it is {why}, where the fit extrapolates; a run there (a smaller budget "
            "of it, or a pilot with that model) measures it before the budget is spent on it"]


def make_plan(
    budget_usd: float,
    predictor: Predictor,
    fit_version: str,
    hardware: str | None = None,
    pricing: str | None = None,
    dataset: str = "datacomp-1b",
    objective: Objective = "mean",
    top: int = 5,
    out: Path | None = None,
    binding: Binding | None = None,
    slice_chips: int | None = None,
    deadline_hours: float | None = None,
) -> PlanResult:
    """Plan and write the plan folder. Raises ClipaError for bad input or when no candidate fits the budget.

    ``binding``: where the data, evaluation set and tokenizer are (``planner.binding.resolve_binding``); written into
    the spec, and the body says whether the plan is executable and what is missing. For a ``clipa data synth`` folder
    the CPU search space goes up to the data's resolution. On CPU hardware candidates are
    priced with the measured overhead (``planner.pilot.overhead_for``): tiny towers there are not FLOP-bound.

    ``slice_chips`` (default: one host) and ``deadline_hours``: on accelerators every candidate is checked against
    the slice's memory and given a wall-clock and billed dollars (``planner.wallclock``); ``hardware="any"`` searches
    every catalogued hardware and pricing together."""
    dataset = canonical_dataset(dataset)
    any_hw = (hardware or "").strip().lower() == "any"
    if any_hw and pricing:
        raise ClipaError("pricing", "--hardware any chooses the pricing too; leave --pricing out")
    hw = get_hardware("tpu-v5e" if any_hw else (hardware or "a100-80gb"))
    pricing = pricing or default_pricing(hw.name)
    hw.price(pricing)  # validates the pricing name before any work
    if objective not in ("mean", "p10"):
        raise ClipaError("objective", f"{objective!r} is not 'mean' or 'p10'")
    if out is not None:
        check_writable(out)

    from planner.binding import dataset_folder, missing_bindings
    from planner.data_profile import profile_for
    from planner.pilot import apply_overhead, overhead_for

    fields = (binding or Binding()).fields()
    # the data's measured profile (issue 20): the search stops at its native resolution
    folder = dataset_folder(binding or Binding())
    profile, measured = profile_for(folder) if folder is not None else (None, None)
    space = space_for(hw, profile.resolution if profile else None)
    overhead = None
    calendar_notes: list[str] = []
    if hw.kind == "cpu" and not any_hw:
        cands = enumerate_candidates(space, hw.name, pricing)
        overhead = overhead_for(hw.name)
        cands = apply_overhead(cands, space, overhead, hw.price(pricing).usd_per_device_hour)
        considered = len(cands)
        if slice_chips not in (None, 1):
            raise ClipaError("slice", f"{hw.name} is one device; --slice {slice_chips} needs accelerator hardware")
        if deadline_hours is not None:  # one device, nothing to provision: wall-clock = device-hours
            cands = cands[cands["device_hours"] <= deadline_hours]
            if cands.empty:
                raise ClipaError("deadline", f"no candidate on {hw.name} finishes in {deadline_hours:g} h")
    else:
        from planner.wallclock import calendar_candidates

        cands, considered, calendar_notes = calendar_candidates(space, None if any_hw else (hw.name, pricing),
                                                                 budget_usd, slice_chips, deadline_hours)
    affordable = cands[cands["cost_usd"] <= budget_usd]
    if affordable.empty:
        cheapest = cands.loc[cands["cost_usd"].idxmin()]
        sched = format_schedule(candidate_stages(cheapest, space), cheapest.model)
        def usd(x: float) -> str:  # cents hide the CPU profile's sub-cent budgets
            return f"${x:,.2f}" if x >= 1 else f"${x:.3g}"

        raise ClipaError(
            "budget",
            f"{usd(budget_usd)} buys no candidate on {hw.name} ({pricing}); the cheapest plan is {cheapest.model} "
            f"'{sched}' at {usd(cheapest.cost_usd)}",
        )
    pred = predictor(candidate_features(affordable, space, dataset))
    ranked = affordable.join(pred[["predicted_top1", "low", "high", "extrapolated"]
                                  + (["flags"] if "flags" in pred else [])])
    key = "predicted_top1" if objective == "mean" else "low"
    # Ties (equal predictions) go to the cheaper candidate. On a local study (a pilot's few runs) an extrapolated
    # candidate's mean is a guess: the closed loop picked an unpiloted long fine-tune predicted at 73% that scored
    # 16%. So there, candidates inside the study's range go first whenever any fit the budget; so do candidates
    # beyond it in samples alone, by at most LOCAL_SAMPLES_REACH times the largest run of their model size (the
    # samples term is the law's best-measured extrapolation, and a plan confined to the pilot's largest run could
    # not spend a budget larger than it).
    ranked = ranked.sort_values([key, "cost_usd"], ascending=[False, True])
    trusted = ~ranked["extrapolated"]
    if "samples_excess" in pred:
        ranked = ranked.join(pred[["samples_excess", "other_excess"]])
        trusted |= (ranked["other_excess"] <= 1e-9) & (ranked["samples_excess"] <= np.log(LOCAL_SAMPLES_REACH))
    in_range_first = is_local(dataset) and bool(trusted.any())
    beyond = ranked[~trusted]
    if in_range_first:
        ranked = pd.concat([ranked[trusted], beyond])
    ranked, repeat_notes = _new_recipes_first(ranked, space, dataset)
    chosen_row = next(ranked.itertuples())
    chosen = _candidate_dict(chosen_row, space, dataset)
    runners = [_candidate_dict(r, space, dataset) for r in ranked.iloc[1 : max(top, 1)].itertuples()]

    stages = candidate_stages(chosen_row, space)
    train: dict[str, Any] = {}
    if hasattr(chosen_row, "chips"):
        from planner.wallclock import chosen_calendar

        hw = get_hardware(chosen_row.hardware)
        pricing = chosen_row.pricing
        stages, train, cal = chosen_calendar(chosen_row.model, stages, hw, pricing, int(chosen_row.chips))
        chosen.update(cal, compute_usd=float(chosen_row.compute_usd))  # cost_usd: billed, overheads included
        for r, row in zip(runners, ranked.iloc[1: max(top, 1)].itertuples()):
            r.update({"hardware": row.hardware, "pricing": row.pricing, "chips": int(row.chips),
                      "wall_clock_hours": float(row.wall_clock_hours)})
    spec = spec_from_dict({
        "model": chosen_row.model, "dataset": dataset, "hardware": hw.name, "pricing": pricing, **fields,
        "stages": [s.model_dump(mode="json", exclude_none=True) for s in stages], **({"train": train} if train else {}),
    })
    other_hw = []
    for name, other in catalog().items():
        for pr in other.prices:
            c = cost_stages(spec.model, spec.stages, name, pr)
            other_hw.append({"hardware": name, "pricing": pr, "device_hours": c.device_hours, "cost_usd": c.cost_usd})
    front = frontier(ranked, value=key)

    request = {"budget_usd": budget_usd, "hardware": "any" if any_hw else hw.name,
               "pricing": "any" if any_hw else pricing, "dataset": dataset,
               "objective": objective, "fit_version": fit_version}
    if slice_chips is not None:
        request["slice"] = slice_chips
    if deadline_hours is not None:
        request["deadline_hours"] = deadline_hours
    request_notes = ([f"local study: candidates inside the study's range (samples up to {LOCAL_SAMPLES_REACH:g}x its "
                      "largest run of the same model) ranked first"] if in_range_first else [])
    if in_range_first:
        request_notes += _beyond_the_study(beyond, chosen_row, key, space)
    request_notes += repeat_notes
    request_notes += [measured] if measured else []
    if profile is None and is_local(dataset) and hw.kind == "cpu":
        request_notes.append("no --data: the CPU space assumes 64 px images (the generated set's); give --data DIR "
                             "to plan within the data's native resolution")
    if profile is not None and max(s.image_res for s in stages) > profile.resolution:
        request_notes.append(f"stages above the data's native {profile.resolution} px train on upsampled images")
    if "data" in fields:  # what the plan was searched for; the other locations do not change the question
        request["data"] = fields["data"]
    if overhead is not None:
        request["overhead"] = {"scale": overhead.scale, "per_sample_s": overhead.per_sample_s,
                               "per_stage_s": overhead.per_stage_s, "source": overhead.source}
    plan_id = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
    plan_dir = out or (paths.plans_dir() / plan_id)
    check_writable(plan_dir)
    spec_path = plan_dir / "runs" / f"{spec.run_id}.yaml"
    missing = missing_bindings(spec)
    body = {
        "plan_id": plan_id,
        **request,
        "candidates_considered": considered,
        "notes": request_notes + calendar_notes,
        "candidates_within_budget": int(len(affordable)),
        "executable": not missing,
        "missing": missing,
        "chosen": {**chosen, "run_id": spec.run_id, "spec": str(spec_path)},
        "runners_up": runners,
        "frontier": front.to_dict(orient="records"),
        "other_hardware": other_hw,
        "runs": [{"run_id": spec.run_id, "spec": str(spec_path), "prediction": {
            "predicted_top1": chosen["predicted_top1"], "low": chosen["interval"][0], "high": chosen["interval"][1],
            "extrapolated": chosen["extrapolated"], "fit_version": fit_version,
            "flags": list(chosen.get("flags", []))}}],
    }
    spec.write(spec_path)
    atomic_write_text(plan_dir / "plan.json", json.dumps(body, indent=2) + "\n")
    return PlanResult(plan_id, plan_dir, body)


def load_plan(plan_dir: Path) -> tuple[dict[str, Any], list[tuple[RunSpec, dict[str, Any]]]]:
    """The plan body and its runs' specs with the prediction recorded for each."""
    from planner.spec import load_spec

    p = Path(plan_dir) / "plan.json"
    try:
        body = json.loads(p.read_text())
    except FileNotFoundError:
        raise ClipaError("plan", f"no plan.json in {plan_dir}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ClipaError("plan", f"{p} is unreadable: {e}") from None
    if not isinstance(body, dict) or not isinstance(body.get("runs", []), list):
        raise ClipaError("plan", f"{p} must be a JSON object whose 'runs' is a list")
    runs = []
    for i, r in enumerate(body.get("runs", [])):
        if not isinstance(r, dict) or not isinstance(r.get("spec"), str) or \
                not isinstance(r.get("prediction") or {}, dict):
            raise ClipaError(f"plan.runs[{i}]", f"{p}: each run needs a 'spec' path (and an optional "
                                                "'prediction' object)")
        spec_path = Path(r["spec"])
        if not spec_path.is_absolute() and not spec_path.exists():
            spec_path = Path(plan_dir) / "runs" / spec_path.name
        runs.append((load_spec(spec_path), r.get("prediction") or {}))
    return body, runs


def plot_frontier(body: dict[str, Any], path: Path, ranked: pd.DataFrame | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = pd.DataFrame(body["frontier"])
    key = "predicted_top1" if body["objective"] == "mean" else "low"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step(f["cost_usd"], f[key], where="post", label="best predicted top-1 at each cost")
    c = body["chosen"]
    ax.errorbar([c["cost_usd"]], [c["predicted_top1"]],
                yerr=[[c["predicted_top1"] - c["interval"][0]], [c["interval"][1] - c["predicted_top1"]]],
                fmt="o", color="C3", capsize=4, label=f"chosen: {c['model']} {c['schedule']}")
    ax.axvline(body["budget_usd"], color="grey", ls="--", lw=1, label="budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"cost (USD, {body['hardware']} {body['pricing']})")
    ax.set_ylabel("predicted zero-shot top-1 (%)")
    ax.set_title(f"clipa plan --budget {body['budget_usd']:,.0f}  ({body['dataset']})")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
