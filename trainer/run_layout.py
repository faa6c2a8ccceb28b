"""The run folder: every file and folder name inside a run directory, and where run directories are.

One owner for the layout, so that the train loop, the checkpoints, the commands, the run recorder and the TPU
launcher agree on it without importing each other::

    RUN_DIR/
      spec.json             the spec this folder belongs to (train loop; a folder holds one run)
      checkpoints/<step>/   params, optimiser state, meta (trainer.checkpoint)
      metrics.jsonl         one row per logged step and stage boundary (trainer.telemetry)
      tensorboard/          TensorBoard event files (trainer.telemetry)
      jax_cache/            compiled programs, so a resumed run does not compile again (clipa train)
      train_summary.json    steps, final loss, cost meter: written when training is complete (clipa train)
      eval.json             the final model's zero-shot evaluation (trainer.evaluation)
      started.json          when the run was first started, kept across resumes (trainer.closed_loop)
      tpu/                  the TPU launcher's files: spec sent, source archive, launch records
        outcome.json        the last launch's record (trainer.tpu.launcher)
        outcome-<n>.json    earlier launches that did not finish (kept: they were paid for)

The TPU launcher fetches the run directory's top-level files (not ``checkpoints/``), so whatever a recorder needs
after a remote run (``train_summary.json``, ``eval.json``, ``metrics.jsonl``) sits at the top level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import ClipaError

SPEC_FILE = "spec.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
COMPILE_CACHE_DIR = "jax_cache"
SUMMARY_FILE = "train_summary.json"
EVAL_FILE = "eval.json"
STARTED_FILE = "started.json"
LAUNCHER_DIR = "tpu"
OUTCOME_FILE = "outcome.json"  # in LAUNCHER_DIR
EARLIER_OUTCOME_GLOB = "outcome-*.json"  # in LAUNCHER_DIR


def earlier_outcome_file(n: int) -> str:
    """The name an unfinished launch's record is kept under (n = 1, 2, ...) when the run is launched again."""
    return f"outcome-{n}.json"


def default_run_dir(spec) -> Path:
    """``runs/<run_id>`` under the project root (``CLIPA_HOME``), or the folder of the same run started under its
    legacy id."""
    from planner.paths import project_root

    from planner.runs import run_folder

    return run_folder(project_root() / "runs", spec)  # runs/<run id>, or a folder started under the old id


def local_run_dir(run_dir: str | Path) -> Path:
    """The run directory as a local path (``file://`` accepted). Object-store URLs are refused: the spec, metrics
    and TensorBoard files are written with local file IO; mount the bucket (e.g. gcsfuse) and pass the mount path."""
    text = str(run_dir)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise ClipaError("run_dir", f"{text}: URL run directories are not supported; mount the bucket (e.g. with "
                                    "gcsfuse) and pass its local path")
    return Path(text).expanduser().absolute()


def run_dir_of(path: Path) -> Path | None:
    """The run directory a checkpoint path belongs to (RUN_DIR, RUN_DIR/checkpoints or one step), if any."""
    p = Path(path).absolute()
    for cand in (p, p.parent, p.parent.parent):
        if (cand / SPEC_FILE).exists():
            return cand
    return None


def read_run_file(run_dir: Path, name: str, run_id: str | tuple[str, ...]) -> dict[str, Any] | None:
    """A JSON file of the run folder (``EVAL_FILE``, ``SUMMARY_FILE``) when it belongs to run ``run_id`` (one id, or
    the run's ids: current and legacy); None when it is missing, unreadable (a torn write) or another run's."""
    ids = (run_id,) if isinstance(run_id, str) else tuple(run_id)
    try:
        doc = json.loads((Path(run_dir) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("run_id") in ids else None


def finished_files(run_dir: Path, run_id: str | tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(eval.json, train_summary.json) of run ``run_id``: what a trained and evaluated run leaves at the top level
    (and the TPU launcher fetches); None when either is missing or another run's."""
    ev, summary = read_run_file(run_dir, EVAL_FILE, run_id), read_run_file(run_dir, SUMMARY_FILE, run_id)
    return None if ev is None or summary is None else (ev, summary)
