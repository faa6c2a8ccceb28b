"""What a SLURM launch is asked to do (``SlurmOptions``) and the ``clipa run --backend slurm`` options that say it.

Every value that reaches the batch script or a command line is validated here: numbers are numbers, and names
(partition, account, QOS) and the time limit match SLURM's own syntax, so nothing a spec or a user gives can change
what the script does. Paths are quoted where they are used (``trainer.slurm.script``). Imports nothing heavy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planner.errors import ClipaError, from_validation_error
# --max-attempts and --poll-interval of `clipa run` are shared with --backend tpu: their defaults are defined there.
from trainer.tpu.cli import DEFAULT_MAX_ATTEMPTS, DEFAULT_POLL_INTERVAL_S

DEFAULT_NODES = 1
DEFAULT_GPUS_PER_NODE = 8

# SLURM partition/account/QOS names: letters, digits, '_', '-', '.' (no spaces, no shell or sbatch syntax).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}")


class SlurmOptions(BaseModel):
    """Everything a SLURM launch needs besides the spec and the run folder. Bad values name the option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: Annotated[int, Field(gt=0, description="nodes per job")] = DEFAULT_NODES
    gpus_per_node: Annotated[int, Field(gt=0, description="GPUs per node; one task (JAX process) per GPU")] = \
        DEFAULT_GPUS_PER_NODE
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(None, description="time limit per job (sbatch --time); a job that hits it is resubmitted "
                                               "and resumes from its last checkpoint")
    hardware: str = Field(description="GPU hardware profile from budgets/hardware.yaml (prices the GPU-hours)")
    pricing: str = Field(description="pricing model of that profile (or custom:USD per GPU-hour)")
    clipa: str = Field(description="the clipa executable as the nodes see it (a venv on the shared filesystem)")
    max_attempts: Annotated[int, Field(gt=0, description="jobs submitted at most (first try + resubmissions)")] = \
        DEFAULT_MAX_ATTEMPTS
    poll_interval_s: Annotated[float, Field(gt=0)] = DEFAULT_POLL_INTERVAL_S
    # How long before the time limit (and on preemption, SLURM's grace time) the trainer gets SIGTERM to checkpoint.
    signal_before_s: Annotated[int, Field(ge=0)] = 300

    @field_validator("partition", "account", "qos")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a SLURM name (letters, digits, '_', '-', '.')")
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not _TIME.fullmatch(v):
            raise ValueError(f"{v!r} is not a SLURM time limit (MINUTES, HH:MM:SS or D-HH:MM:SS)")
        return v

    @field_validator("clipa")
    @classmethod
    def _clipa(cls, v: str) -> str:
        if not v or "\n" in v or "\0" in v:
            raise ValueError("the clipa executable must be one non-empty line")
        return v

    @property
    def tasks(self) -> int:
        return self.nodes * self.gpus_per_node


def default_clipa() -> str:
    """This installation's clipa executable (its venv's bin/clipa): the nodes run the same one, from the shared
    filesystem the checkout lives on."""
    import sys

    return str(Path(sys.executable).parent / "clipa")


def slurm_options(spec, *, nodes: int, gpus_per_node: int, partition: str | None, account: str | None,
                  qos: str | None, time: str | None, hardware: str | None, pricing: str | None, clipa: str | None,
                  max_attempts: int, poll_interval: float) -> SlurmOptions:
    """``SlurmOptions`` from the command line; the spec gives the hardware profile and pricing unless overridden.
    The profile must be a GPU one (it prices the GPU-hours the jobs take)."""
    from planner.hardware import get_hardware

    hw = get_hardware(hardware or spec.hardware)
    if hw.kind != "gpu":
        raise ClipaError("hardware", f"{hw.name!r} is a {hw.kind} profile; --backend slurm runs on GPUs (give "
                                     "--hardware with a GPU profile, e.g. a100-80gb)")
    price_name = pricing or spec.pricing
    hw.price(price_name)  # a ClipaError naming the pricing if the profile has no such price
    tasks = nodes * gpus_per_node
    if tasks > 0:  # as trainer.mesh.check_layout will on the nodes, before a job waits in the queue for nothing
        for i, st in enumerate(spec.stages):
            if st.batch_size % tasks:
                raise ClipaError(f"stages[{i}].batch_size", f"{st.batch_size} is not divisible by the {tasks} GPUs "
                                                            "(--nodes x --gpus-per-node)")
        mb = spec.train.micro_batch
        if mb is not None and mb % tasks:
            raise ClipaError("train.micro_batch", f"{mb} is not divisible by the {tasks} GPUs (--nodes x "
                                                  "--gpus-per-node)")
    try:
        return SlurmOptions(nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, account=account, qos=qos,
                            time=time, hardware=hw.name, pricing=price_name, clipa=clipa or default_clipa(),
                            max_attempts=max_attempts, poll_interval_s=poll_interval)
    except ValidationError as e:
        raise from_validation_error(e) from None


# The options of `clipa run --backend slurm`.
NodesOpt = Annotated[int, typer.Option("--nodes", help="--backend slurm: nodes per job")]
GpusPerNodeOpt = Annotated[int, typer.Option("--gpus-per-node", help="--backend slurm: GPUs per node (one JAX "
                                                                     "process per GPU)")]
PartitionOpt = Annotated[Optional[str], typer.Option("--partition", help="--backend slurm: SLURM partition")]
AccountOpt = Annotated[Optional[str], typer.Option("--account", help="--backend slurm: SLURM account")]
QosOpt = Annotated[Optional[str], typer.Option("--qos", help="--backend slurm: SLURM QOS")]
TimeOpt = Annotated[Optional[str], typer.Option("--time", help="--backend slurm: time limit per job (HH:MM:SS or "
                                                               "D-HH:MM:SS); a job that hits it is resubmitted")]
ClipaExeOpt = Annotated[Optional[str], typer.Option("--clipa", help="--backend slurm: the clipa executable on the "
                                                                    "nodes (default: this one)")]
