"""What a TPU run cost and how it went: ``TpuAttempt`` per slice created, ``TpuRunOutcome`` for the run.

Cost is measured, not predicted: each attempt is billed from the moment the launcher saw its queued resource
ACTIVE until the moment it saw the slice end (preemption detected, or deletion confirmed), times the slice's chips
times the catalog's price per chip-hour for the pricing model. Preempted attempts count: their chip-hours were
bought even though the work after the last checkpoint was lost. Both bounds come from polling, so the figure can be
off by up to one poll interval per attempt in either direction. The outcome is a pydantic model
(``extra="forbid"``) that the run's result embeds; it is written to ``RUN_DIR/tpu/outcome.json`` after every
state change so that a crashed launcher still leaves its record.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AttemptEnd = Literal["completed", "preempted", "worker_failed", "provisioning_failed", "provisioning_timeout",
                     "interrupted", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TpuAttempt(_Model):
    """One queued resource the launcher created (the first try or a requeue)."""

    index: int = Field(description="1-based creation number")
    queued_resource: str = Field(description="full resource name of the queued resource (and its node)")
    requested_at: float = Field(description="epoch seconds of the create call")
    active_at: float | None = Field(None, description="epoch seconds when it was first seen ACTIVE")
    ended_at: float | None = Field(None, description="epoch seconds when billing stopped: preemption seen, or "
                                                     "deletion confirmed")
    end: AttemptEnd | None = None
    detail: str | None = None
    hosts: int | None = None
    worker_exit_codes: list[int | None] = Field(default_factory=list)
    chips: int
    usd_per_chip_hour: float
    node_hours: float = 0.0
    chip_hours: float = 0.0
    cost_usd: float = 0.0

    def close(self, ended_at: float, end: AttemptEnd, detail: str | None = None) -> None:
        """Record how it ended and price it (only the first call counts: a later deletion does not extend a
        preempted attempt's bill)."""
        if self.end is not None:
            return
        self.end = end
        self.detail = detail
        if self.active_at is not None:
            self.ended_at = max(ended_at, self.active_at)
            self.node_hours = (self.ended_at - self.active_at) / 3600.0
            self.chip_hours = self.node_hours * self.chips
            self.cost_usd = self.chip_hours * self.usd_per_chip_hour
        else:
            self.ended_at = ended_at


class TpuRunOutcome(_Model):
    """The record of one ``run_on_tpu`` call; ``cost_usd`` is what the slices cost, all attempts together."""

    status: Literal["running", "succeeded", "failed", "interrupted"]
    run_name: str
    run_id: str
    project: str
    zone: str
    hardware: str
    pricing: Literal["spot", "on-demand"]
    accelerator_type: str
    runtime_version: str
    chips: int
    usd_per_chip_hour: float
    price_source: str
    remote_run_dir: str
    started_at: float
    finished_at: float | None = None
    attempts: list[TpuAttempt] = Field(default_factory=list)
    preemptions: int = 0
    node_hours: float = 0.0
    chip_hours: float = 0.0
    cost_usd: float = 0.0
    fetched: list[str] = Field(default_factory=list, description="files copied from the run dir in the bucket")
    fetch_error: str | None = Field(None, description="why copying the results back failed (they stay in the bucket)")
    error: str | None = None
    leaked: list[str] = Field(default_factory=list, description="resources teardown could not delete")

    def total(self) -> None:
        self.preemptions = sum(1 for a in self.attempts if a.end == "preempted")
        self.node_hours = sum(a.node_hours for a in self.attempts)
        self.chip_hours = sum(a.chip_hours for a in self.attempts)
        self.cost_usd = sum(a.cost_usd for a in self.attempts)

    def summary(self) -> str:
        return (f"{self.status}: {self.run_name} on {self.accelerator_type} ({self.pricing}) in {self.zone}, "
                f"{len(self.attempts)} slice(s), {self.preemptions} preemption(s), {self.chip_hours:.4f} chip-hours, "
                f"${self.cost_usd:.4f}")
