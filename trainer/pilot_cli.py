"""``clipa pilot``: design, execute and fit a pilot for a local dataset (the design itself is ``planner.pilot``).

Registered in ``trainer.cli.REGISTRARS``; JAX is imported only when a run executes. The pilot folder is reused when it
exists (its design is never recomputed, since the measured overhead changes as runs finish), and every run goes
through ``trainer.closed_loop.execute_run``, so a killed pilot resumes where it stopped without recording twice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.errors import ClipaError


def register(app: typer.Typer) -> None:
    @app.command("pilot")
    def pilot_cmd(
        budget: Annotated[str, typer.Option("--budget", "-b", help="USD for the whole pilot (e.g. 0.015)")],
        dataset: Annotated[str, typer.Option("--dataset", "-d", help="the local dataset, local:NAME")],
        data: Annotated[Path, typer.Option("--data", help="its folder: train/, eval/, classes.txt, tokenizer.json (see clipa data check DIR)")],
        hardware: Annotated[str, typer.Option("--hardware", help="hardware profile")] = "cpu-2core",
        pricing: Annotated[Optional[str], typer.Option("--pricing", help="pricing model")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="pilot folder (default plans/pilot-<id>)")] = None,
        models: Annotated[Optional[str], typer.Option("--models", help="comma-separated model axis, e.g. mu/8")] = None,
        runs: Annotated[Optional[int], typer.Option("--runs", help="keep only this many runs of the design (>= 3)")] = None,
        min_samples: Annotated[Optional[int], typer.Option("--min-samples", help="fewest pre-training samples of a run (default: where the generated data's learning curve takes off, planner.pilot.MIN_PILOT_SAMPLES)")] = None,
        run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="parent of the runs' folders (default runs/)")] = None,
        design_only: Annotated[bool, typer.Option("--design-only", help="write the design, run nothing")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Design a small grid of cheap runs on a local dataset, run them, refit, and print the study's fitted law.

        The grid spans model size x pre-training resolution x text length x samples (an L9 orthogonal array, plus
        two fine-tuned runs of different lengths), for plans of 1x, 3x and 10x the pilot's budget: the models those
        plans can afford, each model's samples in step with what they afford it, scaled to the budget with the cost
        model and the measured CPU overhead. Afterwards
        `clipa plan --dataset local:NAME --data DIR --hardware cpu-2core --budget B` extrapolates from it.
        """
        from planner.cli import console, print_json
        from planner.datasets import canonical_dataset, is_local
        from planner.hardware import default_pricing, get_hardware
        from planner.paths import plans_dir, project_root
        from planner.pilot import design_pilot, pilot_id, write_pilot
        from planner.plan import load_plan, parse_budget

        usd = parse_budget(budget)
        ds = canonical_dataset(dataset)
        if not is_local(ds):
            raise ClipaError("dataset", f"a pilot is for a local dataset (local:NAME), not {ds}")
        hw = get_hardware(hardware)
        pricing = pricing or default_pricing(hw.name)
        pid = pilot_id(usd, ds, hw.name, pricing, data)
        folder = (out or plans_dir() / pid).absolute()
        if (folder / "plan.json").exists():
            body, todo = load_plan(folder)
            reused = True
        else:
            mods = tuple(m.strip() for m in models.split(",")) if models else None
            from planner.pilot import MIN_PILOT_SAMPLES

            design = design_pilot(usd, ds, data, hw.name, pricing, models=mods, n_runs=runs,
                                  min_samples=min_samples or MIN_PILOT_SAMPLES)
            body = write_pilot(design, folder, pid)
            _, todo = load_plan(folder)
            reused = False
        if not json_out:
            console.print(f"pilot {pid}: {len(todo)} runs, designed cost ${body['cost_usd']:.4f} of ${usd:.4f} "
                          f"({'reusing' if reused else 'wrote'} {folder}/plan.json)")
            for r in body["runs"]:
                console.print(f"  {r['run_id'][:10]} {r['model']:7s} {r['schedule']}  ${r['cost_usd']:.5f}")
            for note in body.get("notes", []):  # what the design took from the data (issue 20)
                console.print(f"  note: {note}")
        if design_only:
            if json_out:
                print_json({"plan_dir": str(folder), **body})
            return
        from trainer.closed_loop import execute_run, preflight

        for spec, _ in todo:
            preflight(spec)
        root = (run_dir or project_root() / "runs").absolute()
        results = []
        for i, (spec, _) in enumerate(todo):
            o = execute_run(spec, root / spec.run_id, prediction=None, plan_id=pid, progress=progress)
            r = o.result
            results.append(r)
            if not json_out:
                planned_h = float(r.extra.get("planned_cost_usd", 0.0)) / max(r.cost_usd / max(r.device_hours, 1e-12), 1e-12)
                console.print(f"[{i + 1}/{len(todo)}] {o.status}: {r.model} {r.spec.schedule}: top-1 {r.top1:.2f}%, "
                              f"{r.device_hours * 3600:.1f} device-s (FLOP model: {planned_h * 3600:.2f} s)")
            sys.stdout.flush()

        from planner.accuracy import load_or_fit

        fit = load_or_fit(refit=True)
        st = fit.studies.get(ds)
        if json_out:
            from planner.cli_model import json_safe, study_json

            print_json(json_safe({"plan_dir": str(folder), "pilot_id": pid, "notes": body.get("notes", []), "runs": [
                {"run_id": r.run_id, "model": r.model, "schedule": r.spec.schedule, "top1": r.top1,
                 "device_hours": r.device_hours, "planned_cost_usd": r.extra.get("planned_cost_usd"),
                 "cost_usd": r.cost_usd} for r in results],
                "study": study_json(st) if st else None}))
            return
        if st is None:
            console.print(f"no study fit for {ds}: it needs at least 3 recorded runs")
            return
        from planner.cli_model import print_study

        print_study(st)
        console.print(f"next: clipa plan --budget B --dataset {ds} --data {data} --hardware {hw.name}")
