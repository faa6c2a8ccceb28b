"""The closed loop: execute a plan's runs (train, evaluate, record), so that refits and comparisons see them.

``execute_run`` trains a spec in its run directory (resuming whatever is there), evaluates the final model zero-shot
on the spec's evaluation data, and writes ``results/runs/<run-id>.json`` atomically with the measured cost, speed
and accuracy next to the prediction the plan made. It is idempotent: a run with a result is skipped, a killed run
resumes from its last checkpoint, a finished-but-unevaluated run is evaluated, an evaluated-but-unrecorded run is
recorded from its saved ``eval.json``. A run that fails records nothing as a result and says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import ClipaError
from planner.runs import RecordedPrediction, RunResult, has_result, read_result, record_path, utcnow, write_result
from planner.spec import RunSpec
from planner.store import atomic_write_text

EVAL_FILE = "eval.json"
STARTED_FILE = "started.json"


@dataclass
class RunOutcome:
    run_id: str
    status: str  # "recorded" (now), "skipped" (had a result already)
    result: RunResult


def eval_task(spec: RunSpec) -> str:
    """What the recorded top-1 measures: ImageNet zero-shot for web datasets, the dataset's own eval split else."""
    return f"zeroshot:{spec.dataset}" if spec.dataset.startswith("local:") else "imagenet-1k"


def preflight(spec: RunSpec) -> None:
    """Problems that would only surface after training: say them before spending anything."""
    if not spec.eval_data:
        raise ClipaError("eval_data", f"run {spec.run_id} has no eval_data: a run must be evaluated to be recorded")
    if not spec.data:
        raise ClipaError("data", f"run {spec.run_id} has no training data (spec field 'data')")
    for field, value in (("data", spec.data), ("eval_data", spec.eval_data)):
        if "://" not in value and not Path(value).exists():
            raise ClipaError(field, f"{value} does not exist")


def predict_now(spec: RunSpec) -> RecordedPrediction:
    """The current fit's prediction, for a spec run without a plan."""
    from planner.accuracy import load_or_fit, predict_stages

    fit = load_or_fit()
    p = predict_stages(fit, spec.model, spec.dataset, spec.stages)
    return RecordedPrediction(predicted_top1=p.predicted_top1, low=p.low, high=p.high,
                              extrapolated=bool(p.extrapolated), fit_version=fit.version)


def evaluate_run(spec: RunSpec, run_dir: Path, trained: Any | None = None, limit: int | None = None) -> dict[str, Any]:
    """Zero-shot top-1/top-5 (and retrieval) of the run's final model on ``spec.eval_data``; cached in eval.json."""
    from trainer.data.zeroshot import evaluate
    from trainer.model import embed_images, embed_texts

    cached = run_dir / EVAL_FILE
    if cached.exists():
        try:
            ev = json.loads(cached.read_text())
            if isinstance(ev, dict) and ev.get("run_id") == spec.run_id:
                return ev
        except json.JSONDecodeError:
            pass  # a torn file from an old crash: evaluate again (writes are atomic now)
    if trained is None:
        from trainer.checkpoint import load_trained

        trained = load_trained(run_dir)
    final = spec.stages[-1]
    ev = evaluate(
        spec.eval_data, lambda x: embed_images(trained, x), lambda t: embed_texts(trained, t),
        image_res=final.image_res, text_len=final.text_len, tokenizer=spec.tokenizer, spec=spec, limit=limit,
    )
    ev = {"run_id": spec.run_id, **ev}
    atomic_write_text(cached, json.dumps(ev, indent=2, default=float) + "\n")
    return ev


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
    if has_result(spec.run_id, runs_dir):
        return RunOutcome(spec.run_id, "skipped", read_result(record_path(spec.run_id, runs_dir)))
    preflight(spec)
    from planner.cost import seconds_per_sample  # noqa: F401  (keeps the one cost model in view)
    from planner.hardware import get_hardware
    from trainer.loop import train
    from trainer.model import TrainedModel

    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = _started_at(run_dir)
    trained = None
    if not (run_dir / EVAL_FILE).exists():
        tr = train(spec, run_dir, progress=progress)
        trained = TrainedModel(tr.cfg, tr.params)
    ev = evaluate_run(spec, run_dir, trained, limit=eval_limit)
    meter = _meter(run_dir)
    hw = get_hardware(spec.hardware)
    rate = hw.price(spec.pricing).usd_per_device_hour
    device_hours = meter.get("device_s", 0.0) / 3600.0
    wall = meter.get("wall_s", 0.0)
    finished = utcnow()
    retrieval = {k: _pct(v) for k, v in (ev.get("retrieval") or {}).items() if isinstance(v, (int, float))}
    result = RunResult(
        run_id=spec.run_id,
        spec=spec,
        plan_id=plan_id,
        backend="local",
        eval_task=eval_task(spec),
        started_at=started,
        finished_at=finished,
        wall_seconds=max((finished - started).total_seconds(), 0.0),
        device_hours=device_hours,
        cost_usd=device_hours * rate,
        samples_per_second=(meter.get("samples", 0) / wall) if wall > 0 else 0.0,
        mfu=(meter.get("flops", 0.0) / (meter.get("device_s", 0.0) * hw.peak_flops)) if meter.get("device_s") else 0.0,
        top1=_pct(ev["top1"]),
        top5=_pct(ev.get("top5")),
        retrieval=retrieval,
        prediction=prediction,
        extra={"planned_cost_usd": float(meter.get("usd", 0.0)), "train_wall_seconds": float(wall),
               "eval_n": int(ev.get("n", 0))},
    )
    write_result(result, runs_dir)
    return RunOutcome(spec.run_id, "recorded", result)


def _meter(run_dir: Path) -> dict[str, float]:
    """The cost meter of the run's last checkpoint (it survives restarts, so it covers every attempt)."""
    from trainer import checkpoint as ckpt

    store = ckpt.Checkpoints(run_dir / ckpt.CHECKPOINT_DIR)
    try:
        step = store.latest_step()
        meta = store.meta(step) if step is not None else None
    finally:
        store.close()
    return dict((meta or {}).get("cost") or {})
