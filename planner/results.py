"""The results the accuracy model learns from: the curated published store plus the runs this project executed.

* ``results/published/results.csv`` (one row per distinct published run; written by ``results/published/curate.py``,
  schema in that folder's README) and ``results/published/finetune_masking.csv`` (CLIPA-v2 Figure 2).
* ``results/runs/*.json``: one file per executed run, read by the one reader of run records
  (``planner.runs.read_runs``: the closed loop's records and hand-written ones; a bad file is left out and reported
  by name on stderr, as ``clipa compare`` does).

``load_results`` returns one DataFrame with the columns ``RESULT_COLUMNS``; ``origin`` is ``published`` or ``run``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from planner import paths
from planner.errors import ClipaError

RESULT_COLUMNS = [
    "key", "origin", "family", "model", "dataset", "schedule", "top1", "value_kind", "gpu_hours", "source",
    "citation", "notes",
]
CURVE_COLUMNS = ["model", "dataset", "finetune", "keep_ratio", "kept_image_tokens", "top1_drop", "value_kind",
                 "source", "citation", "notes"]


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


def load_runs(runs_dir: Path | None = None, report: bool = True) -> pd.DataFrame:
    """Executed runs from ``results/runs/*.json`` (sorted by file name), columns ``RESULT_COLUMNS`` plus the
    closed loop's ``eval_n``, ``n_classes`` and ``data_res`` (NaN for a hand-written record) and the spec's
    ``eval_data`` (None) that a local study reads its constants from. A bad file is left out and, with
    ``report``, named on stderr (``planner.runs.read_runs``)."""
    from planner.runs import read_runs, report_problems

    records, problems = read_runs(runs_dir)
    if report:
        report_problems(problems)

    def extra(r, key: str) -> float:
        v = r.result.extra.get(key) if r.result is not None else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

    rows = [{"key": r.key, "origin": "run", "family": "run", "model": r.model, "dataset": r.dataset,
             "schedule": r.schedule, "top1": r.top1, "value_kind": r.value_kind,
             "gpu_hours": r.gpu_hours if r.gpu_hours is not None else float("nan"), "source": r.source,
             "citation": r.file, "notes": r.notes, "eval_n": extra(r, "eval_n"), "n_classes": extra(r, "n_classes"),
             "data_res": extra(r, "data_res"), "eval_data": r.result.spec.eval_data if r.result is not None else None}
            for r in records]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS + ["eval_n", "n_classes", "data_res", "eval_data"])


def load_results(include_runs: bool = True) -> pd.DataFrame:
    """Published rows, then (optionally) executed runs; one row per run, columns ``RESULT_COLUMNS``."""
    frames = [load_published()]
    if include_runs:
        runs = load_runs()
        if len(runs):
            frames.append(runs[RESULT_COLUMNS])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
