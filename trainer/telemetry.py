"""What a run reports while it trains: progress bar, metrics (JSONL + TensorBoard), cost meter, non-finite guard.

* Progress bar (rich, primary process only): stage, step, loss, samples/s, MFU, dollars so far, ETA.
* ``RUN_DIR/metrics.jsonl``: one JSON object per logged step (``kind: "step"``) and per stage boundary
  (``kind: "stage_start"``/``"stage_end"``, with a fingerprint of the parameters), appended across restarts; on
  resume, rows past the checkpoint being resumed are dropped so the file reads as one uninterrupted run.
* TensorBoard event files in ``RUN_DIR/tensorboard`` (tensorboardX), purged past the resume step the same way.
* ``CostMeter``: samples, model FLOPs, dollars (``planner.cost.dollars_for_flops`` at the spec's hardware and
  pricing: what the work done costs on that hardware at the planner's MFU) and measured wall-clock device-seconds;
  checkpointed with the run so a resumed run keeps counting.
* MFU = model FLOPs per second (``planner.flops``, 6 x forward MACs) / (peak FLOP/s of the spec's hardware profile
  x number of devices).
* ``NonFiniteError``: raised by the loop when the loss or the gradient norm is NaN or infinite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from trainer.run_layout import METRICS_FILE, TENSORBOARD_DIR


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite; training stopped and the last good checkpoint was kept."""

    def __init__(self, message: str, global_step: int, last_checkpoint: int | None):
        super().__init__(message)
        self.global_step = global_step
        self.last_checkpoint = last_checkpoint


@dataclasses.dataclass
class CostMeter:
    samples: int = 0
    flops: float = 0.0
    usd: float = 0.0  # planner's price of the work done, on the spec's hardware
    wall_s: float = 0.0  # measured training wall-clock (excludes compile of each stage's first step)
    device_s: float = 0.0  # wall_s x devices

    def add(self, samples: int, flops: float, usd: float, wall_s: float, devices: int) -> None:
        self.samples += samples
        self.flops += flops
        self.usd += usd
        self.wall_s += wall_s
        self.device_s += wall_s * devices

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> CostMeter:
        if not d:
            return cls()
        return cls(**{f.name: d.get(f.name, f.default) for f in dataclasses.fields(cls)})


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


class Telemetry:
    """Progress bar and metric writers of one run (only the primary process writes)."""

    def __init__(self, run_dir: str | Path, total_steps: int, *, primary: bool = True, progress: bool = True,
                 resume_global_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.primary = primary
        self.total_steps = total_steps
        self._progress = None
        self._task = None
        self._tb = None
        self._jsonl = None
        if not primary:
            return
        path = self.run_dir / METRICS_FILE
        if resume_global_step is not None and path.exists():
            self._truncate(path, resume_global_step)
        elif resume_global_step is None and path.exists():
            path.unlink()  # a fresh start in a run dir that never got to its first checkpoint
        self._jsonl = open(path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter

            purge = (resume_global_step + 1) if resume_global_step is not None else None
            self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)
        except Exception:  # TensorBoard is a convenience; JSONL is the record
            self._tb = None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=total_steps, info="",
                                                 completed=resume_global_step or 0)

    @staticmethod
    def _truncate(path: Path, last_step: int) -> None:
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            gs = row.get("global_step", 0)
            if gs < last_step or (gs == last_step and row.get("kind") != "stage_start"):
                keep.append(line)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        tmp.replace(path)

    def event(self, row: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row, sort_keys=True) + "\n")
            self._jsonl.flush()

    def log_step(self, row: dict[str, Any]) -> None:
        row = {"kind": "step", **row}
        self.event(row)
        if self._tb is not None:
            gs = row["global_step"]
            for k in ("loss", "grad_norm", "lr", "temperature", "samples_per_s", "mfu", "usd"):
                v = row.get(k)
                if v is not None:
                    self._tb.add_scalar(f"train/{k}", v, gs)

    def update_bar(self, global_step: int, stage: int, n_stages: int, stage_step: int, stage_steps: int,
                   loss: float, sps: float | None, mfu: float | None, usd: float, eta_s: float | None) -> None:
        if self._progress is None:
            return
        parts = [f"loss {loss:.4f}"]
        if sps is not None:
            parts.append(f"{sps:,.0f} samples/s")
        if mfu is not None:
            parts.append(f"MFU {mfu:.1%}")
        parts.append(f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}")
        if eta_s is not None:
            parts.append(f"ETA {_fmt_s(eta_s)}")
        self._progress.update(
            self._task,
            completed=global_step,
            description=f"stage {stage + 1}/{n_stages} {stage_step}/{stage_steps}",
            info="  ".join(parts),
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _fmt_s(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class RateWindow:
    """Steady-state step rate: steps after the first of a stage (which includes compilation)."""

    def __init__(self):
        self.t0: float | None = None
        self.steps = 0

    def tick(self) -> None:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        else:
            self.steps += 1

    def seconds_per_step(self) -> float | None:
        if self.t0 is None or self.steps == 0:
            return None
        return (time.perf_counter() - self.t0) / self.steps


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (lines cut short by a kill are skipped)."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows
