"""The closed loop: execute a plan's runs (train, evaluate, record), so that refits and comparisons see them.

``execute_run`` trains a spec in its run directory (resuming whatever is there), evaluates the final model zero-shot
on the spec's evaluation data, and writes ``results/runs/<run-id>.json`` atomically with the measured cost, speed
and accuracy next to the prediction the plan made. It is idempotent: a run with a result is skipped, a killed run
resumes from its last checkpoint, a finished-but-unevaluated run is evaluated, an evaluated-but-unrecorded run is
recorded from its saved ``eval.json``. A run that fails records nothing as a result and says why.

``execute_tpu_run`` does the same on a Cloud TPU slice (the launcher trains and evaluates there and fetches the
results); both build their record with ``build_result`` and differ in where the cost comes from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import ClipaError
from planner.runs import RecordedPrediction, RunResult, has_result, read_result, record_path, utcnow, write_result
from planner.spec import RunSpec
from planner.store import atomic_write_text

if TYPE_CHECKING:  # the TPU launcher is imported only when a run goes to a TPU
    from trainer.tpu.options import TpuOptions

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


# How long the other processes of a multi-host run wait for process 0's end-of-training evaluation. They wait on the
# JAX coordination service (a key process 0 sets when done), not in a device collective: collectives time out after
# seconds on some backends (Gloo: 30 s), while an ImageNet evaluation on one chip takes minutes. If process 0 dies,
# the coordination service (hosted by process 0) goes with it and the others are terminated; they never hang.
FINAL_EVAL_WAIT_S = 6 * 3600


class EvalFailedElsewhere(RuntimeError):
    """Process 0's end-of-training evaluation failed with an error that is not bad input (its log has the cause)."""


def whole_params(params: Any, device: Any | None) -> Any:
    """Every leaf of ``params`` whole, as a single-device array on ``device`` (one of this process's devices), or
    nothing (None) when ``device`` is None.

    Replicated leaves (``sharding: data``) are taken from a local copy, device to device (no copy where it already
    lies on ``device``). Leaves split over several hosts (``sharding: fsdp``) are all-gathered one at a time, a
    collective: in a multi-process run every process must call this with the same tree (which leaves need it depends
    only on their shardings, the same on every process), also the ones that keep nothing."""
    import jax
    import numpy as np

    def one(x):
        if isinstance(x, jax.Array) and x.is_fully_replicated:
            whole = x.addressable_data(0)
        elif isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            whole = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        else:
            whole = x
        return None if device is None else jax.device_put(whole, device)

    return jax.tree.map(one, params)


def _coordination_client():
    from jax._src import distributed  # the client jax.distributed.initialize() made (no public accessor in 0.10)

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("a multi-process run without a JAX coordination client")
    return client


def evaluate_at_end(spec: RunSpec, run_dir: Path, cfg: Any, params: Any,
                    wait_s: float = FINAL_EVAL_WAIT_S) -> dict[str, Any]:
    """``evaluate_run`` of a run's final parameters at the end of ``clipa train``, with any number of processes.

    Every process must call it. One process: ``evaluate_run`` as it is. Several (a multi-host slice): the whole
    parameters are put on ONE of process 0's devices (``whole_params``, which every process takes part in), and
    process 0 alone evaluates them there, so its numbers are those of a single-process ``clipa eval`` of the same
    parameters, and writes ``eval.json``; the others wait until it is done (or failed) and return the same
    top1/top5/n. A computation whose inputs all lie on one local device involves no other process, so nothing here
    can deadlock on a collective.
    A ClipaError on process 0 (bad eval data) is raised on every process (exit 2 everywhere, not retried); any
    other failure there raises ``EvalFailedElsewhere`` on the others."""
    import jax

    from trainer.model import TrainedModel

    if jax.process_count() == 1:
        return evaluate_run(spec, run_dir, TrainedModel(cfg, params))
    # Every process, before anyone goes its own way (FSDP leaves need a collective); process 0 keeps them.
    device = jax.local_devices()[0] if jax.process_index() == 0 else None
    local = whole_params(params, device)
    client = _coordination_client()
    key = f"clipa/final-eval/{spec.run_id}"
    if jax.process_index() == 0:
        try:
            ev = evaluate_run(spec, run_dir, TrainedModel(cfg, local))
        except BaseException as e:  # also KeyboardInterrupt/SIGTERM: the others must not wait for hours
            status = ({"field": e.field, "message": e.message} if isinstance(e, ClipaError)
                      else {"error": f"{type(e).__name__}: {e}"})
            client.key_value_set(key, json.dumps(status))
            raise
        client.key_value_set(key, json.dumps({"eval": {k: ev[k] for k in ("run_id", "top1", "top5", "n") if k in ev}}))
        return ev
    status = json.loads(client.blocking_key_value_get(key, int(wait_s * 1000)))
    if "field" in status:
        raise ClipaError(status["field"], f"{status['message']} (zero-shot evaluation on process 0)")
    if "error" in status:
        raise EvalFailedElsewhere(f"zero-shot evaluation failed on process 0: {status['error']}")
    return status["eval"]


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
        eval_task=eval_task(spec),
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
               **(extra or {})},
    )


def _already_recorded(spec: RunSpec, runs_dir: Path | None) -> RunOutcome | None:
    """The "skipped" outcome of a run that has a result already (runs are recorded once), else None."""
    if has_result(spec.run_id, runs_dir):
        return RunOutcome(spec.run_id, "skipped", read_result(record_path(spec.run_id, runs_dir)))
    return None


def _open_run_dir(run_dir: Path):
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
    if (done := _already_recorded(spec, runs_dir)) is not None:
        return done
    preflight(spec)
    from planner.hardware import get_hardware
    from trainer.loop import train
    from trainer.model import TrainedModel

    run_dir, started = _open_run_dir(run_dir)
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


# --- Cloud TPU -------------------------------------------------------------------------------------------------------
OUTCOME_FILE = "outcome.json"  # RUN_DIR/tpu/outcome.json, written by the launcher


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
    if (done := _already_recorded(spec, runs_dir)) is not None:
        return done
    preflight(spec)
    from trainer.tpu.launcher import LAUNCHER_DIR, run_on_tpu

    run_dir, started = _open_run_dir(run_dir)
    tpu_dir = run_dir / LAUNCHER_DIR
    last = _read_outcome(tpu_dir / OUTCOME_FILE)
    if last is not None and not (last.status == "succeeded" and _finished_files(spec, run_dir)):
        # An earlier launch that did not finish (failed, interrupted, killed): keep its record, it was paid for.
        n = 1 + sum(1 for _ in tpu_dir.glob("outcome-*.json"))
        (tpu_dir / OUTCOME_FILE).replace(tpu_dir / f"outcome-{n}.json")
        last = None
    if last is None:
        last = run_on_tpu(spec, run_dir, options, **launch)
        if last.status != "succeeded":
            why = (last.error or last.status).removeprefix("tpu: ")  # the launcher's errors name the field already
            raise ClipaError("tpu", f"run {spec.run_id}: {why} (nothing recorded; the launch record is in "
                                    f"{tpu_dir / OUTCOME_FILE})")
        if last.fetch_error:
            raise ClipaError("tpu", f"run {spec.run_id}: trained, but fetching its results from "
                                    f"{last.remote_run_dir} failed: {last.fetch_error}")
    files = _finished_files(spec, run_dir)
    if files is None:
        raise ClipaError("eval_data", f"run {spec.run_id}: trained, but {EVAL_FILE} or {_summary_name()} of this run "
                                      f"is missing from {last.remote_run_dir}; nothing recorded")
    ev, summary = files
    outcomes = [*(o for p in sorted(tpu_dir.glob("outcome-*.json")) if (o := _read_outcome(p)) is not None), last]
    from planner.hardware import get_hardware

    hw = get_hardware(last.hardware)
    chip_hours = sum(o.chip_hours for o in outcomes)
    result = build_result(
        spec, ev, dict(summary.get("cost") or {}), backend="tpu", started=started, device_hours=chip_hours,
        cost_usd=sum(o.cost_usd for o in outcomes), peak_flops=hw.peak_flops, prediction=prediction,
        plan_id=plan_id,
        extra={"hardware": last.hardware, "pricing": last.pricing, "accelerator_type": last.accelerator_type,
               "chips": last.chips, "usd_per_chip_hour": last.usd_per_chip_hour,
               "tpu_launches": len(outcomes), "tpu_attempts": sum(len(o.attempts) for o in outcomes),
               "tpu_preemptions": sum(o.preemptions for o in outcomes),
               "tpu_node_hours": sum(o.node_hours for o in outcomes), "tpu_chip_hours": chip_hours,
               "remote_run_dir": last.remote_run_dir},
    )
    write_result(result, runs_dir)
    return RunOutcome(spec.run_id, "recorded", result)


def _summary_name() -> str:
    from trainer.train_cli import SUMMARY_FILE

    return SUMMARY_FILE


def _read_outcome(path: Path):
    """A launch record written by the launcher, or None when there is none (or it is unreadable: a torn write)."""
    from pydantic import ValidationError

    from trainer.tpu.outcome import TpuRunOutcome

    try:
        return TpuRunOutcome.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError):
        return None


def _finished_files(spec: RunSpec, run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(eval.json, train_summary.json) of this run in ``run_dir``, or None when either is missing or belongs to
    another run."""
    docs = []
    for name in (EVAL_FILE, _summary_name()):
        try:
            doc = json.loads((run_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("run_id") != spec.run_id:
            return None
        docs.append(doc)
    return docs[0], docs[1]


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
