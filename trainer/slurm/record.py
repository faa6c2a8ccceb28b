"""``clipa run --backend slurm``: train a spec through ``trainer.slurm.launcher`` and record it like a local run.

The run folder is on the cluster's shared filesystem, so the trainer's ``eval.json`` and ``train_summary.json`` are
read where the jobs wrote them. The recorded cost is the GPU-hours of every job of the run (preempted, timed-out and
failed ones included, also those of an earlier ``clipa run`` that was interrupted) x the profile's price.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.errors import ClipaError
from planner.runs import RecordedPrediction, write_result
from planner.spec import RunSpec
from trainer.closed_loop import RunOutcome, already_recorded, build_result, open_run_dir, preflight
from trainer.run_layout import finished_files
from trainer.slurm.launcher import LAUNCH_DIR, OUTCOME_FILE, Launch
from trainer.slurm.options import SlurmOptions


def execute_slurm_run(spec: RunSpec, run_dir: Path, options: SlurmOptions,
                      prediction: RecordedPrediction | None = None, plan_id: str | None = None,
                      runs_dir: Path | None = None, **launch: Any) -> RunOutcome:
    """Train ``spec`` on SLURM (``Launch(..., **launch).run``), then record it. Idempotent like ``execute_run``: a
    recorded run is skipped, a finished run is recorded without submitting, a launcher killed mid-run follows its
    job again when rerun. A launch that fails records nothing and raises a ClipaError saying why."""
    if (done := already_recorded(spec, runs_dir)) is not None:
        return done
    preflight(spec)
    run_dir, started = open_run_dir(run_dir)
    job = Launch(spec, run_dir, options, **launch)
    files = finished_files(run_dir, (spec.run_id, spec.legacy_run_id))
    if files is None:
        out = job.run(finished=lambda: finished_files(run_dir, (spec.run_id, spec.legacy_run_id)) is not None)
        if out.status != "succeeded":
            raise ClipaError("backend", f"run {spec.run_id}: {out.error} (nothing recorded; the launch record is "
                                        f"in {run_dir / LAUNCH_DIR / OUTCOME_FILE})")
        files = finished_files(run_dir, (spec.run_id, spec.legacy_run_id))
    ev, summary = files
    job.settle()  # jobs whose end was not seen (a clipa run killed after the run finished) are accounted too
    out = job.outcome
    out.total()
    from planner.hardware import get_hardware

    hw = get_hardware(options.hardware)
    result = build_result(
        spec, ev, dict(summary.get("cost") or {}), backend="slurm", started=started, device_hours=out.gpu_hours,
        cost_usd=out.cost_usd, peak_flops=hw.peak_flops, prediction=prediction, plan_id=plan_id,
        extra={"hardware": hw.name, "pricing": options.pricing, "nodes": options.nodes,
               "gpus_per_node": options.gpus_per_node, "usd_per_gpu_hour": out.usd_per_gpu_hour,
               "slurm_jobs": ",".join(a.job_id for a in out.attempts), "slurm_attempts": len(out.attempts),
               "slurm_resubmissions": out.preemptions, "gpu_hours": out.gpu_hours},
    )
    write_result(result, runs_dir)
    return RunOutcome(spec.run_id, "recorded", result)
