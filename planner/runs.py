"""The result store for executed runs: one JSON file per run in ``results/runs/<run-id>.json``, written atomically,
and its one reader.

A closed-loop record (``RunResult``) holds the spec, where and how long it ran, what it cost, what it measured
(zero-shot top-1/top-5, retrieval), and the prediction the plan made for it (value, interval, fit version), so that
``clipa compare`` can put predicted next to actual. Files are named by run id, so concurrent writers never touch the
same file unless they ran the same spec (then the later, equivalent record replaces the earlier one).

A hand-written record is accepted too: ``{"source": "run", "model": ..., "dataset": ..., "schedule": ...,
"top1": ...}`` (optional: ``run_id``, ``value_kind``, ``gpu_hours``, ``notes``). ``read_runs`` reads both shapes into
one record type (``RunRecord``; a closed-loop record keeps its ``RunResult``) for every consumer (the fit's rows,
local studies, ``clipa compare``, the pilot's overhead). One policy for bad files: a file that is not valid JSON,
lacks a field, names an unknown model or dataset, has an unparsable schedule or another schema version is skipped
and reported by name, on one line (``report_problems``), never silently and never hiding a good neighbour.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner import paths
from planner.errors import ClipaError, from_validation_error
from planner.spec import RunSpec
from planner.store import atomic_write_text

RESULT_SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecordedPrediction(_Strict):
    predicted_top1: float
    low: float
    high: float
    extrapolated: bool
    fit_version: str
    # thin data where the run stands (planner.accuracy: e.g. "no g/14 on datacomp-1b"), as the plan printed them
    flags: list[str] = Field(default_factory=list)


class RunResult(_Strict):
    schema_version: Literal[1] = RESULT_SCHEMA_VERSION
    run_id: str
    spec: RunSpec
    plan_id: str | None = None
    backend: Literal["local", "tpu", "slurm"] = "local"
    eval_task: str = Field(description="what top1 measures, e.g. 'imagenet-1k' or 'synth:<dataset>'")
    started_at: datetime
    finished_at: datetime
    wall_seconds: Annotated[float, Field(ge=0)]
    device_hours: Annotated[float, Field(ge=0)]
    cost_usd: Annotated[float, Field(ge=0)]
    samples_per_second: Annotated[float, Field(ge=0)]
    mfu: Annotated[float, Field(ge=0)]
    top1: Annotated[float, Field(ge=0, le=100)]
    top5: Annotated[float, Field(ge=0, le=100)] | None = None
    retrieval: dict[str, float] = {}
    prediction: RecordedPrediction | None = None
    extra: dict[str, float | str | int | bool | None] = {}

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def dataset(self) -> str:
        return self.spec.dataset


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def record_path(run_id: str, runs_dir: Path | None = None) -> Path:
    return (runs_dir or paths.runs_dir()) / f"{run_id}.json"


def write_result(result: RunResult, runs_dir: Path | None = None) -> Path:
    """Atomically write (or replace) the record of ``result.run_id``."""
    if result.run_id != result.spec.run_id:
        raise ValueError(f"result run_id {result.run_id} does not match its spec's {result.spec.run_id}")
    return atomic_write_text(record_path(result.run_id, runs_dir), result.model_dump_json(indent=2) + "\n")


def has_result(run_id: str, runs_dir: Path | None = None) -> bool:
    return record_path(run_id, runs_dir).exists()


def find_record(spec: RunSpec, runs_dir: Path | None = None) -> Path | None:
    """The record of ``spec``'s run: ``<run_id>.json``, else one written under the spec's pre-whitelist id
    (``RunSpec.legacy_run_id``). Old records are read as they are: their stored ``run_id`` stays their key (the fits'
    data rows are keyed by it), so no file is renamed and no fit version changes."""
    for rid in (spec.run_id, spec.legacy_run_id):
        if has_result(rid, runs_dir):
            return record_path(rid, runs_dir)
    return None


def run_folder(root: Path, spec: RunSpec) -> Path:
    """``root/<run_id>``; a folder started under the spec's old id (``root/<legacy_run_id>``) when only that exists,
    so a run interrupted before run ids covered only what is learned resumes where it was."""
    new, old = Path(root) / spec.run_id, Path(root) / spec.legacy_run_id
    return old if old.is_dir() and not new.exists() else new


def read_result(path: Path) -> RunResult:
    """One record; raises ValueError naming the file for malformed content or another schema version."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path.name}: unreadable result file ({str(e).splitlines()[0] if str(e) else e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a result file must hold a JSON object")
    version = data.get("schema_version")
    if version != RESULT_SCHEMA_VERSION:
        raise ValueError(f"{path.name}: result schema version {version!r}, this clipa reads version {RESULT_SCHEMA_VERSION}")
    try:
        return RunResult.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{path.name}: {from_validation_error(e)}") from None


VALUE_KINDS = ("reported", "digitized", "external")


class RunRecord(_Strict):
    """One executed run as the planner reads it, from either shape of file."""

    run_id: str
    model: str
    dataset: str
    schedule: str  # the papers' notation, normalised
    top1: float
    value_kind: Literal["reported", "digitized", "external"] = "reported"
    gpu_hours: float | None = None
    source: str  # "run <id> (plan <id>)"
    notes: str = ""
    file: str  # results/runs/<name>
    result: RunResult | None = None  # the closed loop's record; None for a hand-written one

    @property
    def key(self) -> str:
        return f"run-{self.run_id}"

    @property
    def eval_task(self) -> str:
        """What top1 measures: the closed loop's recorded task, else the dataset's (``planner.datasets.eval_task``)."""
        from planner.datasets import eval_task

        return self.result.eval_task if self.result is not None else eval_task(self.dataset)


def _hand_record(path: Path, data: dict) -> RunRecord:
    """A hand-written record; every problem is a ClipaError whose message says what is wrong."""
    from planner.datasets import canonical_dataset
    from planner.recipe import format_schedule
    from planner.schedule import parse_schedule
    from planner.spec import spec_from_dict
    from planner.variants import VariantError, decode_variant

    if data.get("source") != "run":
        raise ClipaError("", "a run record needs either a 'spec' (RunResult) or \"source\": \"run\"")
    for k in ("model", "dataset", "schedule"):
        if not isinstance(data.get(k), str) or not data[k].strip():
            raise ClipaError("", f"missing or empty field {k!r}")
    try:
        model = decode_variant(data["model"]).name
    except VariantError as e:
        raise ClipaError("", f"model: {e}") from None
    try:
        dataset = canonical_dataset(data["dataset"])
        stages = parse_schedule(data["schedule"], model)
        # the spec's own checks (resolution a multiple of the patch, ...) apply to a recorded run too
        spec_from_dict({"model": model, "dataset": dataset, "stages": [s.model_dump(mode="json") for s in stages]})
    except ClipaError as e:
        raise ClipaError("", f"{e.field}: {e.message}") from None
    run_id = data.get("run_id") or path.stem
    gpu_hours = data.get("gpu_hours")
    return RunRecord(run_id=str(run_id), model=model, dataset=dataset, schedule=format_schedule(stages, model),
                     top1=float(data["top1"]), value_kind=data.get("value_kind", "reported"),
                     gpu_hours=float(gpu_hours) if isinstance(gpu_hours, (int, float)) and not isinstance(gpu_hours, bool)
                     else None, source=f"run {run_id}", notes=str(data.get("notes", "")),
                     file=f"results/runs/{path.name}")


def read_run(path: Path) -> RunRecord:
    """One run file of either shape; raises ValueError '<file name>: <what is wrong>' (one line)."""
    import math

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path.name}: not a readable JSON file ({first})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a run record must be a JSON object")
    top1 = data.get("top1")
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not math.isfinite(top1) or not 0 <= top1 <= 100:
        raise ValueError(f"{path.name}: top1 must be a number of percent in [0, 100], got {top1!r}")
    value_kind = data.get("value_kind", "reported")
    if "spec" not in data and value_kind not in VALUE_KINDS:
        raise ValueError(f"{path.name}: value_kind must be one of {', '.join(VALUE_KINDS)}, got {value_kind!r}")
    if "spec" in data:  # the closed loop's record
        r = read_result(path)
        source = f"run {r.run_id}" + (f" (plan {r.plan_id})" if r.plan_id else "")
        return RunRecord(run_id=r.run_id, model=r.spec.model, dataset=r.spec.dataset, schedule=r.spec.schedule,
                         top1=r.top1, source=source, notes=f"eval_task {r.eval_task}" if r.eval_task else "",
                         file=f"results/runs/{path.name}", result=r)
    try:
        return _hand_record(path, data)
    except ClipaError as e:
        raise ValueError(f"{path.name}: {e.message}") from None


def read_runs(runs_dir: Path | None = None) -> tuple[list[RunRecord], list[str]]:
    """Every readable run file in ``results/runs/`` (sorted by name), and one problem line per file that could not be
    read, naming it."""
    d = runs_dir or paths.runs_dir()
    records, problems = [], []
    for path in sorted(d.glob("*.json")) if d.exists() else []:
        try:
            records.append(read_run(path))
        except ValueError as e:
            problems.append(str(e))
    return records, problems


def report_problems(problems: list[str]) -> None:
    """Each unreadable run file on one line of stderr, by name (the run is left out of what reads it)."""
    import sys

    for p in problems:
        sys.stderr.write(f"warning: skipped unreadable result {p}\n")
