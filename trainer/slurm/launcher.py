"""Submit a spec's training to SLURM, follow it, resubmit after preemption/node failure/time limit, account for it.

``Launch.run`` writes ``RUN_DIR/slurm/{spec.json,job.sbatch}``, submits the script with ``sbatch``, follows the job
with ``squeue`` (while it is queued or running) and ``sacct`` (its final state, exit code, elapsed time, nodes), and
submits it again when it ended in a way a resumed job fixes: preempted, node failure, boot failure, time limit, or
the trainer stopped by SIGTERM after saving a checkpoint (exit 143). Training resumes from the last checkpoint in
the run folder, which must be on a filesystem every node shares. Each attempt's GPU-hours (elapsed x nodes x GPUs
per node) and cost are kept in ``RUN_DIR/slurm/outcome.json``, saved after every change, so a launcher that is
killed and started again follows the job it had submitted instead of submitting another. Interrupted (Ctrl-C,
SIGTERM), it cancels its job: no job is left behind.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import ClipaError
from planner.spec import RunSpec
from planner.store import atomic_write_text
from trainer.slurm import script as sc
from trainer.slurm.options import SlurmOptions

LAUNCH_DIR = "slurm"  # RUN_DIR/slurm: script, spec, job logs, outcome.json
OUTCOME_FILE = "outcome.json"
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
          "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STOPPED"}
# Ends that a resubmitted job (resuming from the last checkpoint) gets past.
RESUBMIT = {"PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "TIMEOUT", "DEADLINE"}
EXIT_SIGTERM = 128 + 15  # `clipa train` stopped by SIGTERM after saving a checkpoint


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlurmAttempt(_Model):
    index: int
    job_id: str
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    state: str | None = Field(None, description="sacct's final State (None while the job is queued or running)")
    exit_code: str | None = None
    elapsed_s: float = 0.0
    nodes: int = 0
    gpu_hours: float = 0.0
    cost_usd: float = 0.0


class SlurmRunOutcome(_Model):
    """The record of a run's SLURM jobs: every attempt of every ``Launch.run`` of it (killed ones' included)."""

    status: Literal["running", "succeeded", "failed", "interrupted"]
    run_id: str
    hardware: str
    pricing: str
    nodes: int
    gpus_per_node: int
    usd_per_gpu_hour: float
    attempts: list[SlurmAttempt] = Field(default_factory=list)
    preemptions: int = 0
    gpu_hours: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None

    def total(self) -> None:
        self.preemptions = sum(1 for a in self.attempts if a.state in RESUBMIT or _interrupted(a))
        self.gpu_hours = sum(a.gpu_hours for a in self.attempts)
        self.cost_usd = sum(a.cost_usd for a in self.attempts)

    def summary(self) -> str:
        return (f"{self.status}: run {self.run_id}, {len(self.attempts)} job(s), {self.preemptions} resubmission(s), "
                f"{self.gpu_hours:.4f} GPU-hours, ${self.cost_usd:.4f}")


def _interrupted(a: SlurmAttempt) -> bool:
    return a.state == "FAILED" and (a.exit_code or "").split(":")[0] == str(EXIT_SIGTERM)


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """One SLURM command (argv, no shell); a missing command is a ClipaError naming it."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise ClipaError("backend", f"{argv[0]} not found: --backend slurm runs on a SLURM login node") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} timed out")


def _stderr(message: str) -> None:
    sys.stderr.write(f"slurm: {message}\n")
    sys.stderr.flush()


def check_run_dir(run_dir: Path) -> None:
    """sbatch expands '%' in --output and the script is one line per command: refuse paths that would break them."""
    if any(c in str(run_dir) for c in "%\n\r\0"):
        raise ClipaError("run_dir", f"{str(run_dir)!r}: a SLURM run folder cannot contain '%' or line breaks")


class Launch:
    """One spec's jobs on SLURM (see the module docstring). ``runner`` runs one SLURM command (default: a
    subprocess, no shell), ``sleep`` waits between polls."""

    def __init__(self, spec: RunSpec, run_dir: Path, options: SlurmOptions, *, runner: Runner = run_command,
                 sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = _stderr):
        from planner.hardware import get_hardware

        self.spec, self.options, self.runner, self.sleep, self.say = spec, options, runner, sleep, say
        self.run_dir = Path(run_dir).absolute()
        check_run_dir(self.run_dir)
        self.dir = self.run_dir / LAUNCH_DIR
        self.price = get_hardware(options.hardware).price(options.pricing).usd_per_device_hour
        self.outcome = self._load() or SlurmRunOutcome(
            status="running", run_id=spec.run_id, hardware=options.hardware, pricing=options.pricing,
            nodes=options.nodes, gpus_per_node=options.gpus_per_node, usd_per_gpu_hour=self.price)

    # -- files -------------------------------------------------------------------------------------------------------
    def _load(self) -> SlurmRunOutcome | None:
        try:
            o = SlurmRunOutcome.model_validate_json((self.dir / OUTCOME_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return o if o.run_id == self.spec.run_id else None

    def _save(self) -> None:
        self.outcome.total()
        atomic_write_text(self.dir / OUTCOME_FILE, self.outcome.model_dump_json(indent=2) + "\n")

    def write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / sc.SPEC_FILE, self.spec.model_dump_json(indent=2) + "\n")
        atomic_write_text(self.dir / sc.SCRIPT_FILE,
                          sc.render_script(self.spec.run_id, self.run_dir, self.dir, self.options))

    # -- SLURM -------------------------------------------------------------------------------------------------------
    def _submit(self) -> str:
        p = self.runner(sc.submit_argv(self.dir))
        job_id = p.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER"
        if p.returncode != 0 or not job_id.isdigit():
            raise ClipaError("backend", f"sbatch failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()}")
        return job_id

    def _queue_state(self, job_id: str) -> str | None:
        """squeue's state of a queued or running job; None once it left the queue (or squeue does not know it)."""
        p = self.runner(sc.squeue_argv(job_id))
        state = p.stdout.strip().split("\n")[0].strip() if p.returncode == 0 else ""
        return state or None

    def _accounting(self, job_id: str) -> dict[str, str] | None:
        p = self.runner(sc.sacct_argv(job_id))
        for line in p.stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) == 5 and fields[0] == job_id:
                return dict(zip(("job_id", "state", "exit_code", "elapsed", "nodes"), fields))
        return None

    def _cancel(self, job_id: str) -> None:
        p = self.runner(sc.cancel_argv(job_id))
        if p.returncode != 0:
            self.say(f"scancel {job_id} failed: {(p.stderr or p.stdout).strip()} (cancel it by hand)")

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def _follow(self, a: SlurmAttempt) -> None:
        """Wait until attempt ``a``'s job has ended and fill in its state and cost from sacct."""
        gone_polls = 0
        while True:
            state = self._queue_state(a.job_id)
            if state in ACTIVE:
                if state == "RUNNING" and a.started_at is None:
                    a.started_at = time.time()
                    self.say(f"job {a.job_id} is running")
                    self._save()
                self.sleep(self.options.poll_interval_s)
                continue
            acct = self._accounting(a.job_id)
            final = (acct or {}).get("state", "").split(" ")[0]  # "CANCELLED by 1000" -> CANCELLED
            if acct is None or final in ACTIVE or not final:
                gone_polls += 1  # accounting lags the queue by a few seconds on busy clusters
                if gone_polls > 30:
                    raise ClipaError("backend", f"job {a.job_id} left the queue but sacct does not report its end")
                self.sleep(min(self.options.poll_interval_s, 10.0))
                continue
            self._account(a, acct)
            self._save()
            return

    def settle(self) -> None:
        """Final accounting of attempts whose end this launcher (or a killed earlier one) did not see: a run found
        finished in the run folder is recorded with what all of its jobs cost."""
        for a in self.outcome.attempts:
            if a.state is None:
                self._follow(a)

    def run(self, finished: Callable[[], bool]) -> SlurmRunOutcome:
        """Submit and follow attempts until ``finished()`` (the run folder has the trainer's results) or a failure.
        Returns the outcome (status succeeded or failed); Ctrl-C/SIGTERM/SIGHUP cancel the current job and
        re-raise."""
        from trainer.tpu.launcher import signals_deferred, signals_raise_interrupt  # the TPU launcher's, reused

        o, opts = self.outcome, self.options
        o.status, o.error = "running", None
        o.nodes, o.gpus_per_node, o.usd_per_gpu_hour = opts.nodes, opts.gpus_per_node, self.price
        self.write_files()
        self._save()
        self._current: SlurmAttempt | None = None
        try:
            with signals_raise_interrupt():
                return self._loop(finished)
        except BaseException:
            a = self._current
            if a is not None and a.state is None:
                with signals_deferred(self.say):  # a second Ctrl-C must not leave the job running
                    self.say(f"cancelling job {a.job_id}")
                    self._cancel(a.job_id)
                    self._follow_briefly(a)
                    o.status = "interrupted"
                    self._save()
            raise

    def _loop(self, finished: Callable[[], bool]) -> SlurmRunOutcome:
        o = self.outcome
        while True:
            last = o.attempts[-1] if o.attempts else None
            if last is not None and last.state is None:
                self._current = last  # submitted by an earlier launcher that was killed: follow it
                self.say(f"following job {last.job_id} (attempt {last.index})")
            elif len(o.attempts) >= self.options.max_attempts:
                return self._end("failed", f"{len(o.attempts)} jobs submitted (--max-attempts), the last ended "
                                           f"{last.state if last else '?'}")
            else:
                self._current = SlurmAttempt(index=len(o.attempts) + 1, job_id=self._submit(),
                                             submitted_at=time.time())
                o.attempts.append(self._current)
                self._save()
                self.say(f"submitted job {self._current.job_id} (attempt {self._current.index}) for run "
                         f"{self.spec.run_id}")
            a = self._current
            self._follow(a)
            self._current = None
            self.say(f"job {a.job_id} ended {a.state} (exit {a.exit_code}) after {a.elapsed_s:.0f} s")
            if a.state == "COMPLETED":
                if finished():
                    return self._end("succeeded")
                return self._end("failed", f"job {a.job_id} completed but the run folder {self.run_dir} has no "
                                           f"results (the jobs' logs are in {self.dir})")
            if a.state in RESUBMIT or _interrupted(a):
                continue  # resubmit: the trainer resumes from the last checkpoint
            return self._end("failed", f"job {a.job_id} ended {a.state} (exit {a.exit_code}); its log is "
                                       f"{self.dir / f'job-{a.job_id}.out'}")

    def _account(self, a: SlurmAttempt, acct: dict[str, str]) -> None:
        """An ended job's state and cost from its sacct line: elapsed x nodes x GPUs per node = GPU-hours."""
        a.state, a.exit_code, a.ended_at = acct["state"].split(" ")[0], acct["exit_code"], time.time()
        a.elapsed_s, a.nodes = float(acct["elapsed"] or 0), int(acct["nodes"] or 0)
        a.gpu_hours = a.elapsed_s * a.nodes * self.options.gpus_per_node / 3600.0
        a.cost_usd = a.gpu_hours * self.price

    def _follow_briefly(self, a: SlurmAttempt) -> None:
        """After scancel: the attempt's final accounting if SLURM has it within a few polls (it was paid for)."""
        for _ in range(5):
            acct = self._accounting(a.job_id)
            if acct and acct["state"].split(" ")[0] not in ACTIVE:
                self._account(a, acct)
                return
            time.sleep(1.0)

    def _end(self, status: Literal["succeeded", "failed"], error: str | None = None) -> SlurmRunOutcome:
        self.outcome.status, self.outcome.error = status, error
        self._save()
        self.say(self.outcome.summary() + (f": {error}" if error else ""))
        return self.outcome


def dry_run(spec: RunSpec, run_dir: Path, options: SlurmOptions) -> dict[str, Any]:
    """What ``Launch.run`` would write and run for ``spec``, without writing or running anything."""
    from planner.hardware import get_hardware

    run_dir = Path(run_dir).absolute()
    check_run_dir(run_dir)
    launch_dir = run_dir / LAUNCH_DIR
    job = "JOB_ID"
    return {
        "job_name": sc.job_name(spec.run_id),
        "nodes": options.nodes,
        "gpus": options.tasks,
        "hardware": options.hardware,
        "pricing": options.pricing,
        "usd_per_gpu_hour": get_hardware(options.hardware).price(options.pricing).usd_per_device_hour,
        "max_attempts": options.max_attempts,
        "files": [str(launch_dir / sc.SPEC_FILE), str(launch_dir / sc.SCRIPT_FILE)],
        "commands": {"submit": sc.submit_argv(launch_dir), "follow": [sc.squeue_argv(job), sc.sacct_argv(job)],
                     "on_interrupt": sc.cancel_argv(job)},
        "script": sc.render_script(spec.run_id, run_dir, launch_dir, options),
    }
