"""What a run on Cloud TPU cost, and which launch it was: the launch records in ``RUN_DIR/tpu``.

Every launch of a run leaves a record (``TpuRunOutcome``: slices, attempts, preemptions, billed node- and chip-hours,
price). ``finished_launch`` returns the record of a launch that trained and evaluated the run, launching it
(``trainer.tpu.launcher.run_on_tpu``) unless an earlier launch already finished; the record of an earlier launch that
did not finish is kept under another name, because it was paid for. ``launches_cost`` sums them all: a run's cost is
the billed chip-hours of every slice of every launch (preempted ones included) x the catalog price.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner.errors import ClipaError
from planner.spec import RunSpec
from trainer.run_layout import (EARLIER_OUTCOME_GLOB, LAUNCHER_DIR, OUTCOME_FILE, earlier_outcome_file,
                                finished_files)
from trainer.tpu.options import TpuOptions
from trainer.tpu.outcome import TpuRunOutcome


def read_outcome(path: Path) -> TpuRunOutcome | None:
    """A launch record written by the launcher, or None when there is none (or it is unreadable: a torn write)."""
    try:
        return TpuRunOutcome.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError):
        return None


def finished_launch(spec: RunSpec, run_dir: Path, options: TpuOptions, **launch: Any) -> TpuRunOutcome:
    """The record of a launch of ``spec`` that succeeded, launching one with ``options`` (the ``launch`` keywords go
    to ``run_on_tpu``) unless the last one succeeded and its results are in ``run_dir``. A launch that fails raises a
    ClipaError saying why (nothing is recorded; its record stays in RUN_DIR/tpu)."""
    tpu_dir = run_dir / LAUNCHER_DIR
    last = read_outcome(tpu_dir / OUTCOME_FILE)
    if last is not None and not (last.status == "succeeded" and finished_files(run_dir, (spec.run_id, spec.legacy_run_id))):
        # An earlier launch that did not finish (failed, interrupted, killed): keep its record, it was paid for.
        n = 1 + sum(1 for _ in tpu_dir.glob(EARLIER_OUTCOME_GLOB))
        (tpu_dir / OUTCOME_FILE).replace(tpu_dir / earlier_outcome_file(n))
        last = None
    if last is None:
        from trainer.tpu.launcher import run_on_tpu

        last = run_on_tpu(spec, run_dir, options, **launch)
        if last.status != "succeeded":
            why = (last.error or last.status).removeprefix("tpu: ")  # the launcher's errors name the field already
            raise ClipaError("tpu", f"run {spec.run_id}: {why} (nothing recorded; the launch record is in "
                                    f"{tpu_dir / OUTCOME_FILE})")
        if last.fetch_error:
            raise ClipaError("tpu", f"run {spec.run_id}: trained, but fetching its results from "
                                    f"{last.remote_run_dir} failed: {last.fetch_error}")
    return last


@dataclass
class LaunchesCost:
    chip_hours: float
    cost_usd: float
    extra: dict[str, float | str | int | bool | None]  # what the run record keeps of the launches


def launches_cost(run_dir: Path, last: TpuRunOutcome) -> LaunchesCost:
    """The cost of every launch of the run in ``run_dir``: the earlier, unfinished ones and ``last``."""
    tpu_dir = run_dir / LAUNCHER_DIR
    earlier = (read_outcome(p) for p in sorted(tpu_dir.glob(EARLIER_OUTCOME_GLOB)))
    outcomes = [*(o for o in earlier if o is not None), last]
    chip_hours = sum(o.chip_hours for o in outcomes)
    return LaunchesCost(
        chip_hours=chip_hours,
        cost_usd=sum(o.cost_usd for o in outcomes),
        extra={"hardware": last.hardware, "pricing": last.pricing, "accelerator_type": last.accelerator_type,
               "chips": last.chips, "usd_per_chip_hour": last.usd_per_chip_hour,
               "tpu_launches": len(outcomes), "tpu_attempts": sum(len(o.attempts) for o in outcomes),
               "tpu_preemptions": sum(o.preemptions for o in outcomes),
               "tpu_node_hours": sum(o.node_hours for o in outcomes), "tpu_chip_hours": chip_hours,
               "remote_run_dir": last.remote_run_dir},
    )
