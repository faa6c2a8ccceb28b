"""``clipa run`` and ``clipa pilot``: execute plans and record their results (the closed loop's commands).

Registered in ``trainer.cli.REGISTRARS``; JAX and the cloud client are imported inside the command bodies.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.errors import ClipaError


def _runs_root(run_dir: Path | None) -> Path:
    from planner.paths import project_root

    return (run_dir or project_root() / "runs").absolute()


def _targets(target: Path):
    """(plan_id, [(spec, prediction dict)]) from a plan folder, or a single spec file."""
    from planner.plan import load_plan
    from planner.spec import load_spec

    if target.is_dir():
        body, runs = load_plan(target)
        return body.get("plan_id"), runs
    return None, [(load_spec(target), {})]


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        target: Annotated[Path, typer.Argument(help="a plan folder (plans/<plan-id>) or a run spec file")],
        backend: Annotated[str, typer.Option(help="'local' (this machine's devices) or 'tpu' (a Cloud TPU slice)")] = "local",
        run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="parent of the runs' folders (default runs/)")] = None,
        eval_limit: Annotated[Optional[int], typer.Option(help="evaluate on at most this many held-out samples")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
        json_out: Annotated[bool, typer.Option("--json", help="print the recorded results as JSON")] = False,
    ) -> None:
        """Execute every run of a plan (or one spec): train (resuming), evaluate zero-shot, record the result.

        Each result lands in results/runs/<run-id>.json with the measured cost, speed and accuracy and the plan's
        prediction. Rerunning after a crash finishes what is missing and never records a run twice.
        """
        from planner.cli import console, print_json
        from planner.runs import RecordedPrediction

        if backend not in ("local", "tpu"):
            raise ClipaError("backend", f"{backend!r} is not 'local' or 'tpu'")
        plan_id, runs = _targets(target)
        if not runs:
            raise ClipaError("plan", f"{target} lists no runs")
        root = _runs_root(run_dir)
        if backend == "tpu":
            raise ClipaError(
                "backend",
                "clipa run --backend tpu: use 'clipa tpu run SPEC --project P --zone Z --bucket gs://B' for each "
                "spec of the plan (see trainer/tpu/README.md); recording TPU results from a plan is not wired yet",
            )
        from trainer.closed_loop import execute_run, preflight
        from trainer.loop import TrainingInterrupted
        from trainer.telemetry import NonFiniteError
        from trainer.train_cli import EXIT_NON_FINITE

        for spec, _ in runs:  # every run's inputs are checked before the first one starts
            preflight(spec)
        recorded = []
        for spec, pred in runs:
            prediction = RecordedPrediction(**pred) if pred else None
            if prediction is None:
                from trainer.closed_loop import predict_now

                prediction = predict_now(spec)
            try:
                out = execute_run(spec, root / spec.run_id, prediction=prediction, plan_id=plan_id,
                                  progress=progress, eval_limit=eval_limit)
            except NonFiniteError as e:  # as `clipa train` reports them: one line, no traceback
                sys.stderr.write(f"error: run {spec.run_id}: {e}\n")
                raise typer.Exit(EXIT_NON_FINITE) from None
            except TrainingInterrupted as e:
                sys.stderr.write(f"run {spec.run_id}: {e}\n")
                raise typer.Exit(128 + e.signum) from None
            r = out.result
            recorded.append(r)
            if not json_out:
                p = r.prediction
                pred_txt = f"predicted {p.predicted_top1:.1f} [{p.low:.1f}, {p.high:.1f}]" if p else "no prediction"
                console.print(f"{out.status}: run {r.run_id} {r.model} {r.spec.schedule}: top-1 {r.top1:.2f}% "
                              f"({pred_txt}), {r.device_hours:.4f} device-hours, ${r.cost_usd:.4f}")
        if json_out:
            print_json({"plan_id": plan_id, "results": [r.model_dump(mode="json") for r in recorded]})
        sys.stdout.flush()
