"""The closed loop: execute a plan's runs (train, evaluate, record), so that refits and comparisons see them.

``execute_run`` trains a spec in its run directory (resuming whatever is there), evaluates the final model zero-shot
on the spec's evaluation data, and writes ``results/runs/<run-id>.json`` atomically with the measured cost, speed
and accuracy next to the prediction the plan made. It is idempotent: a run with a result is skipped, a killed run
resumes from its last checkpoint, a finished-but-unevaluated run is evaluated, an evaluated-but-unrecorded run is
recorded from its saved ``eval.json``. A run that fails records nothing as a result and says why.

``execute_tpu_run`` does the same on a Cloud TPU slice (the launcher trains and evaluates there and fetches the
results); both build their record with ``build_result`` and differ in where the cost comes from: the trainer's cost
meter (local) or the billed chip-hours of the TPU launches (``trainer.tpu.accounting``).

This module records runs; the evaluation and its cache are ``trainer.evaluation``'s, the end-of-training evaluation
of a multi-host run ``trainer.multihost_eval``'s, the run folder's file names ``trainer.run_layout``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.datasets import eval_task
from planner.errors import ClipaError
from planner.runs import RecordedPrediction, RunResult, find_record, read_result, utcnow, write_result
from planner.spec import RunSpec
from planner.store import atomic_write_text
from trainer.evaluation import evaluate_run
from trainer.run_layout import CHECKPOINT_DIR, EVAL_FILE, STARTED_FILE, SUMMARY_FILE, finished_files

if TYPE_CHECKING:  # the TPU launcher is imported only when a run goes to a TPU
    from trainer.tpu.options import TpuOptions


@dataclass
class RunOutcome:
    run_id: str
    status: str  # "recorded" (now), "skipped" (had a result already)
    result: RunResult


def preflight(spec: RunSpec) -> None:
    """Problems that would only surface after training: say them before spending anything."""
    from planner.binding import missing_bindings

    for m in missing_bindings(spec):  # data, eval_data (a run must be evaluated to be recorded), tokenizer
        if m["field"] == "tokenizer" and spec.data and "://" in spec.data:
            continue  # the trainer looks for tokenizer.json beside bucket data
        raise ClipaError(m["field"], f"run {spec.run_id}: {m['problem']} (supply it with {m['option']})")


def local_memory(devices) -> tuple[float, str]:
    """Bytes one of this machine's JAX devices may use, and what that figure is: the accelerator's allocator limit,
    or for CPU devices (which share the host's memory) the host's memory divided among them."""
    import os

    stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{stats['bytes_limit'] / 1e9:.0f} GB of {devices[0].device_kind}"
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host / len(devices), f"{host / 1e9:.0f} GB of host memory shared by {len(devices)} {devices[0].platform} device(s)"


def local_fit_problem(spec: RunSpec) -> str | None:
    """Why ``spec`` cannot train on this machine's devices, or None: a stage whose analytic peak per device
    (``planner.memory``, with the stage's micro_batch/remat/sharding) exceeds what a local device has. Checked before
    anything starts, so a plan priced for a GPU node or a TPU slice says where to run it instead of dying in the
    allocator after the data pipeline is up."""
    import jax

    from planner.memory import estimate

    devices = jax.local_devices()
    limit, what = local_memory(devices)
    for i, st in enumerate(spec.stages):
        opts = spec.stage_train(i)
        est = estimate(spec.model, st, len(devices), opts.micro_batch, opts.remat, opts.sharding)
        if est.peak_bytes > limit:
            return (f"run {spec.run_id}: stage {i + 1} of {len(spec.stages)} ({spec.model}, batch {st.batch_size} at "
                    f"{st.image_res} px) needs about {est.peak_bytes / 1e9:,.0f} GB per device; this machine has "
                    f"{what}. The plan is priced for {spec.hardware}")
    return None


def tpu_preflight(spec: RunSpec) -> None:
    """What a TPU VM cannot reach: data given as a path on this machine (it needs a URL, e.g. gs://...)."""
    for field, value in (("data", spec.data), ("eval_data", spec.eval_data)):
        if value and "://" not in value:
            raise ClipaError(field, f"run {spec.run_id}: {value} is a path on this machine, which the TPU workers "
                                    "cannot read; give a gs:// URL")


def predict_now(spec: RunSpec) -> RecordedPrediction:
    """The current fit's prediction, for a spec run without a plan."""
    from planner.accuracy import load_or_fit, predict_stages

    fit = load_or_fit()
    p = predict_stages(fit, spec.model, spec.dataset, spec.stages)
    return RecordedPrediction(predicted_top1=p.predicted_top1, low=p.low, high=p.high,
                              extrapolated=bool(p.extrapolated), fit_version=fit.version, flags=list(p.flags))


def _started_at(run_dir: Path):
    from datetime import datetime

    p = run_dir / STARTED_FILE
    if p.exists():
        try:
            return datetime.fromisoformat(json.loads(p.read_text())["started_at"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):  # damaged: start the clock again
            pass
    now = utcnow()
    atomic_write_text(p, json.dumps({"started_at": now.isoformat()}) + "\n")
    return now


def _pct(x: float | None) -> float | None:
    """Evaluation reports fractions; results store percent."""
    if x is None:
        return None
    return float(x) * 100.0 if float(x) <= 1.0 else float(x)


def build_result(
    spec: RunSpec,
    ev: dict[str, Any],
    meter: dict[str, float],
    *,
    backend: str,
    started,
    device_hours: float,
    cost_usd: float,
    peak_flops: float,
    prediction: RecordedPrediction | None,
    plan_id: str | None,
    extra: dict[str, float | str | int | bool | None] | None = None,
) -> RunResult:
    """The record of a finished, evaluated run: what both backends share. ``meter`` is the trainer's cost meter
    (samples, flops, training wall and device seconds); what the run cost (``device_hours``, ``cost_usd``) is the
    backend's to say: the local meter, or the TPU slices' billed node-hours."""
    wall = float(meter.get("wall_s", 0.0))
    device_s = float(meter.get("device_s", 0.0))
    finished = utcnow()
    retrieval = {k: _pct(v) for k, v in (ev.get("retrieval") or {}).items() if isinstance(v, (int, float))}
    return RunResult(
        run_id=spec.run_id,
        spec=spec,
        plan_id=plan_id,
        backend=backend,
        eval_task=eval_task(spec.dataset),
        started_at=started,
        finished_at=finished,
        wall_seconds=max((finished - started).total_seconds(), 0.0),
        device_hours=device_hours,
        cost_usd=cost_usd,
        samples_per_second=(meter.get("samples", 0) / wall) if wall > 0 else 0.0,
        mfu=(meter.get("flops", 0.0) / (device_s * peak_flops)) if device_s > 0 else 0.0,
        top1=_pct(ev["top1"]),
        top5=_pct(ev.get("top5")),
        retrieval=retrieval,
        prediction=prediction,
        extra={"planned_cost_usd": float(meter.get("usd", 0.0)), "train_wall_seconds": wall,
               "eval_n": int(ev.get("n", 0)),
               # the class count the top-1 was measured against: a local study's chance level (issue 20)
               **({"n_classes": int(ev["classes"])} if isinstance(ev.get("classes"), int) else {}),
               # each class-name word's top-1 ("top1_colour", "top1_shape") where the data names them
               **{f"top1_{a}": _pct(v) for a, v in (ev.get("attributes") or {}).items()},
               **(extra or {})},
    )


def already_recorded(spec: RunSpec, runs_dir: Path | None) -> RunOutcome | None:
    """The "skipped" outcome of a run that has a result already (runs are recorded once), else None."""
    recorded = find_record(spec, runs_dir)  # also finds a record made under the spec's old run id
    if recorded is not None:
        return RunOutcome(spec.run_id, "skipped", read_result(recorded))
    return None


def open_run_dir(run_dir: Path):
    """The run directory (created) and when its run started (kept across resumes)."""
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, _started_at(run_dir)


def execute_run(
    spec: RunSpec,
    run_dir: Path,
    prediction: RecordedPrediction | None = None,
    plan_id: str | None = None,
    runs_dir: Path | None = None,
    progress: bool = True,
    eval_limit: int | None = None,
) -> RunOutcome:
    """Train, evaluate and record ``spec`` (locally), resuming or skipping whatever is already done."""
    if (done := already_recorded(spec, runs_dir)) is not None:
        return done
    preflight(spec)
    from planner.hardware import get_hardware
    from trainer.embed import TrainedModel
    from trainer.loop import train

    run_dir, started = open_run_dir(run_dir)
    trained = None
    if not (run_dir / EVAL_FILE).exists():
        tr = train(spec, run_dir, progress=progress)
        trained = TrainedModel(tr.cfg, tr.params)
    ev = evaluate_run(spec, run_dir, trained, limit=eval_limit)
    meter = _meter(run_dir)
    hw = get_hardware(spec.hardware)
    device_hours = meter.get("device_s", 0.0) / 3600.0
    from trainer.data.profile import record_extras

    result = build_result(spec, ev, meter, backend="local", started=started, device_hours=device_hours,
                          cost_usd=device_hours * hw.price(spec.pricing).usd_per_device_hour,
                          peak_flops=hw.peak_flops, prediction=prediction, plan_id=plan_id,
                          extra=record_extras(spec))  # the data's native resolution (issue 20)
    write_result(result, runs_dir)
    return RunOutcome(spec.run_id, "recorded", result)


def execute_tpu_run(
    spec: RunSpec,
    run_dir: Path,
    options: TpuOptions,
    prediction: RecordedPrediction | None = None,
    plan_id: str | None = None,
    runs_dir: Path | None = None,
    **launch: Any,
) -> RunOutcome:
    """Train ``spec`` on a Cloud TPU slice (``trainer.tpu.launcher.run_on_tpu`` with ``options``; the ``launch``
    keywords go to it), then record it as ``execute_run`` does, from the files the launcher fetched into
    ``run_dir`` (eval.json, which ``clipa train`` writes at the end, and train_summary.json) and the launch outcome:
    cost = the billed chip-hours of every slice (preempted ones included, and those of earlier launches of this run
    that failed or were interrupted) x the catalog price; hardware = the slice's catalog entry.

    Idempotent like ``execute_run``: a run with a result is skipped; a launch that succeeded but was not recorded is
    recorded without launching again; otherwise the launch resumes from the checkpoints in the bucket. A launch that
    fails records nothing and raises a ClipaError saying why.
    """
    if (done := already_recorded(spec, runs_dir)) is not None:
        return done
    preflight(spec)
    from planner.hardware import get_hardware
    from trainer.tpu.accounting import finished_launch, launches_cost

    run_dir, started = open_run_dir(run_dir)
    last = finished_launch(spec, run_dir, options, **launch)
    files = finished_files(run_dir, (spec.run_id, spec.legacy_run_id))
    if files is None:
        raise ClipaError("eval_data", f"run {spec.run_id}: trained, but {EVAL_FILE} or {SUMMARY_FILE} of this run "
                                      f"is missing from {last.remote_run_dir}; nothing recorded")
    ev, summary = files
    cost = launches_cost(run_dir, last)
    result = build_result(
        spec, ev, dict(summary.get("cost") or {}), backend="tpu", started=started, device_hours=cost.chip_hours,
        cost_usd=cost.cost_usd, peak_flops=get_hardware(last.hardware).peak_flops, prediction=prediction,
        plan_id=plan_id, extra=cost.extra,
    )
    write_result(result, runs_dir)
    return RunOutcome(spec.run_id, "recorded", result)


def _meter(run_dir: Path) -> dict[str, float]:
    """The cost meter of the run's last checkpoint (it survives restarts, so it covers every attempt)."""
    from trainer import checkpoint as ckpt

    store = ckpt.Checkpoints(run_dir / CHECKPOINT_DIR)
    try:
        step = store.latest_step()
        meta = store.meta(step) if step is not None else None
    finally:
        store.close()
    return dict((meta or {}).get("cost") or {})
