"""The result store for executed runs: one JSON file per run in ``results/runs/<run-id>.json``, written atomically.

A record holds the spec, where and how long it ran, what it cost, what it measured (zero-shot top-1/top-5,
retrieval), and the prediction the plan made for it (value, interval, fit version), so that ``clipa compare`` can
put predicted next to actual. Files are named by run id, so concurrent writers never touch the same file unless
they ran the same spec (then the later, equivalent record replaces the earlier one: one record per run).
Reading never silently skips: a malformed file or one from another schema version is reported by name.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner import paths
from planner.errors import from_validation_error
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


def load_results(runs_dir: Path | None = None) -> tuple[list[RunResult], list[str]]:
    """All readable records, and one problem line per file that could not be read (named)."""
    d = runs_dir or paths.runs_dir()
    results, problems = [], []
    if not d.exists():
        return results, problems
    for path in sorted(d.glob("*.json")):
        try:
            results.append(read_result(path))
        except ValueError as e:
            problems.append(str(e))
    return results, problems
