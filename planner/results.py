"""The results the accuracy model learns from: the curated published store plus the runs this project executed.

* ``results/published/results.csv`` (one row per distinct published run; written by ``results/published/curate.py``,
  schema in that folder's README) and ``results/published/finetune_masking.csv`` (CLIPA-v2 Figure 2).
* ``results/runs/*.json``: one file per executed run. Two shapes are read:

  - the closed loop's record (``planner.runs.RunResult``): ``{"schema_version": 1, "spec": {...RunSpec...},
    "top1": ..., "eval_task": ..., ...}``;
  - a minimal hand-written record: ``{"source": "run", "model": ..., "dataset": ..., "schedule": ..., "top1": ...}``
    (optional: ``run_id``, ``value_kind``, ``gpu_hours``, ``notes``).

  Nothing is skipped silently: a file that is not valid JSON, lacks a field, names an unknown model or dataset or
  has an unparsable schedule raises ``ClipaError`` naming the file.

``load_results`` returns one DataFrame with the columns ``RESULT_COLUMNS``; ``origin`` is ``published`` or ``run``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from planner import paths
from planner.datasets import canonical_dataset
from planner.errors import ClipaError

RESULT_COLUMNS = [
    "key", "origin", "family", "model", "dataset", "schedule", "top1", "value_kind", "gpu_hours", "source",
    "citation", "notes",
]
CURVE_COLUMNS = ["model", "dataset", "finetune", "keep_ratio", "kept_image_tokens", "top1_drop", "value_kind",
                 "source", "citation", "notes"]
VALUE_KINDS = ("reported", "digitized", "external")


def _published_file(name: str) -> Path:
    p = paths.published_dir() / name
    if not p.exists():
        raise ClipaError("results", f"published results file missing: {p} (regenerate with results/published/curate.py)")
    return p


def load_published() -> pd.DataFrame:
    """The curated published runs (``results/published/results.csv``) in the ``RESULT_COLUMNS`` layout."""
    df = pd.read_csv(_published_file("results.csv"), dtype={"gpu_hours": float}, keep_default_na=False,
                     na_values={"gpu_hours": [""]})
    missing = {"key", "family", "model", "dataset", "schedule", "top1", "value_kind"} - set(df.columns)
    if missing:
        raise ClipaError("results/published/results.csv", f"missing columns: {', '.join(sorted(missing))}")
    df["origin"] = "published"
    df["top1"] = df["top1"].astype(float)
    return df.reindex(columns=RESULT_COLUMNS)


def load_finetune_masking() -> pd.DataFrame:
    """CLIPA-v2 Figure 2: top-1 change of a masked 128M fine-tune against the unmasked one, per model and keep ratio."""
    df = pd.read_csv(_published_file("finetune_masking.csv"), keep_default_na=False)
    missing = set(CURVE_COLUMNS) - set(df.columns)
    if missing:
        raise ClipaError("results/published/finetune_masking.csv", f"missing columns: {', '.join(sorted(missing))}")
    for c in ("keep_ratio", "top1_drop"):
        df[c] = df[c].astype(float)
    return df[CURVE_COLUMNS]


def _run_row(path: Path, data: Any) -> dict[str, Any]:
    """One run file's row; every problem is a ClipaError whose field is the file name."""
    from planner.schedule import format_schedule, parse_schedule
    from planner.spec import spec_from_dict
    from planner.variants import VariantError, decode_variant

    where = f"results/runs/{path.name}"
    if not isinstance(data, dict):
        raise ClipaError(where, "a run record must be a JSON object")
    top1 = data.get("top1")
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not math.isfinite(top1) or not 0 <= top1 <= 100:
        raise ClipaError(where, f"top1 must be a number of percent in [0, 100], got {top1!r}")
    if "spec" in data:  # the closed loop's RunResult record
        try:
            spec = spec_from_dict(data["spec"], source="spec")
        except ClipaError as e:
            raise ClipaError(where, f"spec.{e.field}: {e.message}" if e.field else e.message) from None
        model, dataset, schedule = spec.model, spec.dataset, spec.schedule
        run_id = data.get("run_id") or spec.run_id
        eval_task = data.get("eval_task", "")
        notes = f"eval_task {eval_task}" if eval_task else ""
        source = f"run {run_id}" + (f" (plan {data['plan_id']})" if data.get("plan_id") else "")
        gpu_hours = None
    else:
        if data.get("source") != "run":
            raise ClipaError(where, "a run record needs either a 'spec' (RunResult) or \"source\": \"run\"")
        for k in ("model", "dataset", "schedule"):
            if not isinstance(data.get(k), str) or not data[k].strip():
                raise ClipaError(where, f"missing or empty field {k!r}")
        try:
            model = decode_variant(data["model"]).name
        except VariantError as e:
            raise ClipaError(where, f"model: {e}") from None
        try:
            dataset = canonical_dataset(data["dataset"])
            stages = parse_schedule(data["schedule"], model)
            # the spec's own checks (resolution a multiple of the patch, ...) apply to a recorded run too
            spec_from_dict({"model": model, "dataset": dataset, "stages": [s.model_dump(mode="json") for s in stages]})
            schedule = format_schedule(stages, model)
        except ClipaError as e:
            raise ClipaError(where, f"{e.field}: {e.message}") from None
        run_id = data.get("run_id") or path.stem
        source = f"run {run_id}"
        notes = str(data.get("notes", ""))
        gpu_hours = data.get("gpu_hours")
    value_kind = data.get("value_kind", "reported")
    if value_kind not in VALUE_KINDS:
        raise ClipaError(where, f"value_kind must be one of {', '.join(VALUE_KINDS)}, got {value_kind!r}")
    return {
        "key": f"run-{run_id}", "origin": "run", "family": "run", "model": model, "dataset": dataset,
        "schedule": schedule, "top1": float(top1), "value_kind": value_kind,
        "gpu_hours": float(gpu_hours) if isinstance(gpu_hours, (int, float)) else float("nan"),
        "source": source, "citation": where, "notes": notes,
    }


def load_runs(runs_dir: Path | None = None) -> pd.DataFrame:
    """Executed runs from ``results/runs/*.json`` (sorted by file name); a bad file raises, naming it."""
    d = runs_dir or paths.runs_dir()
    rows = []
    for path in sorted(d.glob("*.json")) if d.exists() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ClipaError(f"results/runs/{path.name}", f"not a readable JSON file ({first})") from None
        rows.append(_run_row(path, data))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def load_results(include_runs: bool = True) -> pd.DataFrame:
    """Published rows, then (optionally) executed runs; one row per run, columns ``RESULT_COLUMNS``."""
    frames = [load_published()]
    if include_runs:
        runs = load_runs()
        if len(runs):
            frames.append(runs)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
