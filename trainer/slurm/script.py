"""The batch script of a SLURM attempt and the commands that submit, follow and cancel it (argv lists, no shell).

One task per GPU: ``--ntasks-per-node`` = ``--gpus-per-node``, and every task sees all of its node's GPUs.
``srun`` starts ``clipa train`` once per task with SLURM's variables set; ``trainer.mesh.maybe_initialize_distributed``
then calls ``jax.distributed.initialize()``, whose SLURM cluster detection takes the coordinator (first node of
``SLURM_STEP_NODELIST``, port from ``SLURM_JOB_ID``), process count (``SLURM_NTASKS``), process id (``SLURM_PROCID``)
and the task's GPU (``SLURM_LOCALID``) from them. Every path in the script is ``shlex.quote``d; the #SBATCH values
are validated names and numbers (``trainer.slurm.options``), so nothing from a spec reaches a shell unquoted.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from trainer.slurm.options import SlurmOptions

SCRIPT_FILE = "job.sbatch"
SPEC_FILE = "spec.json"  # the spec as the job reads it (RUN_DIR/slurm/spec.json)
# sacct fields read after a job ends: ElapsedRaw (seconds) x NNodes x GPUs per node = the GPU-hours it took.
SACCT_FIELDS = "JobID,State,ExitCode,ElapsedRaw,NNodes"


def job_name(run_id: str) -> str:
    return f"clipa-{run_id}"


def render_script(run_id: str, run_dir: Path, launch_dir: Path, options: SlurmOptions) -> str:
    """The sbatch script of one attempt: the same for every attempt (a resubmitted job resumes from the run folder's
    last checkpoint, so there is nothing attempt-specific in it)."""
    sb = [f"--job-name={job_name(run_id)}", f"--nodes={options.nodes}", f"--ntasks-per-node={options.gpus_per_node}",
          f"--gpus-per-node={options.gpus_per_node}"]
    sb += [f"--{k}={v}" for k, v in (("partition", options.partition), ("account", options.account),
                                      ("qos", options.qos), ("time", options.time)) if v is not None]
    # clipa resubmits itself (and counts the attempts); the trainer gets SIGTERM before the time limit and saves a
    # checkpoint (preemption sends SIGTERM too, SLURM's grace time before the kill).
    sb += ["--no-requeue", f"--signal=TERM@{options.signal_before_s}"]
    train = [options.clipa, "train", str(launch_dir / SPEC_FILE), "--run-dir", str(run_dir), "--no-progress"]
    lines = [
        "#!/bin/bash",
        f"# clipa run {run_id}: written by `clipa run --backend slurm`; one JAX process per GPU",
        *(f"#SBATCH {o}" for o in sb),
        "set -euo pipefail",
        # Each task sees its node's GPUs; JAX's SLURM detection picks the task's own (SLURM_LOCALID).
        "exec srun --kill-on-bad-exit=1 --cpu-bind=none " + shlex.join(train),
    ]
    return "\n".join(lines) + "\n"


def submit_argv(launch_dir: Path) -> list[str]:
    return ["sbatch", "--parsable", f"--output={launch_dir / 'job-%j.out'}", str(launch_dir / SCRIPT_FILE)]


def squeue_argv(job_id: str) -> list[str]:
    return ["squeue", "--noheader", "--jobs", job_id, "--format=%T"]


def sacct_argv(job_id: str) -> list[str]:
    return ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job_id, f"--format={SACCT_FIELDS}"]


def cancel_argv(job_id: str) -> list[str]:
    return ["scancel", job_id]
