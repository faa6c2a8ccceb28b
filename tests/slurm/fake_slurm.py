"""A fake SLURM for tests: ``sbatch``, ``squeue``, ``sacct``, ``scancel`` and ``srun`` on one machine (a fixture in
tests/, never shipped). ``install(bin_dir, state_dir)`` writes the five commands as executables into ``bin_dir``;
put it first on PATH. Jobs really run: ``sbatch`` starts a detached runner that executes the batch script with
bash (``srun`` starts the step's tasks with the variables real srun sets), and the job table in ``state_dir``
answers squeue/sacct. Every call is appended to ``state_dir/calls.jsonl``.

Injected preemption: with ``FAKE_SLURM_PREEMPT_AFTER_CHECKPOINT=RUN_DIR`` in sbatch's environment, the first job is
preempted as SLURM does it (SIGTERM to the job's processes, SIGKILL after a grace time, state PREEMPTED) as soon as
``RUN_DIR/checkpoints`` holds a finished checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ACTIVE = ("PENDING", "RUNNING")
GRACE_S = 60.0


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for cmd in ("sbatch", "squeue", "sacct", "scancel", "srun"):
        exe = bin_dir / cmd
        exe.write_text(f'#!/bin/sh\nFAKE_SLURM_DIR="{state_dir}" exec "{sys.executable}" "{Path(__file__)}" {cmd} "$@"\n')
        exe.chmod(0o755)


def _state() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def _job_path(job_id: str) -> Path:
    return _state() / "jobs" / f"{job_id}.json"


def read_job(job_id: str, state_dir: Path | None = None) -> dict:
    return json.loads(((state_dir or _state()) / "jobs" / f"{job_id}.json").read_text())


def all_jobs(state_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((state_dir / "jobs").glob("*.json"))]


def _write_job(job: dict) -> None:
    p = _job_path(job["id"])
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(p)


def _log_call(argv: list[str]) -> None:
    with open(_state() / "calls.jsonl", "a") as f:
        f.write(json.dumps(argv) + "\n")


def _opt(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    directives = [line[len("#SBATCH "):].strip() for line in script.read_text().splitlines()
                  if line.startswith("#SBATCH ")]
    nodes = int(_opt(directives, "nodes") or 1)
    per_node = int(_opt(directives, "ntasks-per-node") or 1)
    if "--no-requeue" not in directives:
        sys.stderr.write("fake sbatch: clipa's jobs must not be requeued by SLURM\n")
        return 1
    counter = _state() / "next_id"
    job_id = str(int(counter.read_text()) if counter.exists() else 1000)
    counter.write_text(str(int(job_id) + 1))
    (_state() / "jobs").mkdir(exist_ok=True)
    output = (_opt(args, "output") or f"slurm-%j.out").replace("%j", job_id)
    preempt = os.environ.get("FAKE_SLURM_PREEMPT_AFTER_CHECKPOINT") if job_id == "1000" else None
    _write_job({"id": job_id, "state": "PENDING", "exit_code": "0:0", "nodes": nodes, "tasks": nodes * per_node,
                "tasks_per_node": per_node, "submitted": time.time(), "start": None, "end": None, "pgid": None,
                "output": output, "preempt_after_checkpoint": preempt})
    # The job table is written by this runner alone from now on (scancel leaves a flag file for it).
    subprocess.Popen([sys.executable, __file__, "_run", job_id, str(script)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job_id if "--parsable" in args else f"Submitted batch job {job_id}")
    return 0


def _has_checkpoint(run_dir: str) -> bool:
    d = Path(run_dir) / "checkpoints"
    return d.is_dir() and any(re.fullmatch(r"\d+", p.name) for p in d.iterdir())


def _run(job_id: str, script: str) -> int:
    """The job: pending briefly, then the batch script in its own process group, watched for preemption/scancel."""
    time.sleep(0.3)
    job = read_job(job_id)
    if (_state() / "jobs" / f"{job_id}.cancel").exists():
        job.update(state="CANCELLED", exit_code="0:15", start=time.time(), end=time.time())
        _write_job(job)
        return 0
    env = dict(os.environ, SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NAME="job",
               SLURM_JOB_NUM_NODES=str(job["nodes"]), SLURM_NNODES=str(job["nodes"]), SLURM_NTASKS=str(job["tasks"]),
               SLURM_NTASKS_PER_NODE=str(job["tasks_per_node"]), SLURM_JOB_NODELIST="localhost",
               SLURM_NODELIST="localhost", SLURM_SUBMIT_DIR=os.getcwd())
    with open(job["output"], "ab") as out:
        proc = subprocess.Popen(["bash", script], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    job.update(state="RUNNING", start=time.time(), pgid=proc.pid)
    _write_job(job)
    ended_by = None
    while proc.poll() is None:
        time.sleep(0.05)
        cancel = (_state() / "jobs" / f"{job_id}.cancel").exists()
        if cancel or (job["preempt_after_checkpoint"] and _has_checkpoint(job["preempt_after_checkpoint"])):
            ended_by = "CANCELLED" if cancel else "PREEMPTED"
            os.killpg(proc.pid, signal.SIGTERM)  # SLURM: SIGTERM to every process of the job, SIGKILL after grace
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rc = proc.returncode
    job = read_job(job_id)
    if ended_by:
        job.update(state=ended_by, exit_code="0:15")
    else:
        job.update(state="COMPLETED" if rc == 0 else "FAILED", exit_code=f"{rc if rc >= 0 else 0}:{-rc if rc < 0 else 0}")
    job["end"] = time.time()
    _write_job(job)
    return 0


def srun(args: list[str]) -> int:
    """The job step: one process per task, with the variables real srun sets for each (one node: localhost)."""
    while args and args[0].startswith("--"):
        args = args[1:]
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    step = {"SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_NODEID": "0"}
    procs = [subprocess.Popen(args, env=dict(os.environ, **step, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)))
             for i in range(ntasks)]
    # SLURM signals every process of the job itself (the fake runner signals the process group): nothing to forward.
    signal.signal(signal.SIGTERM, lambda *_: None)
    rcs = [p.wait() for p in procs]
    return next((rc for rc in rcs if rc != 0), 0)


def squeue(args: list[str]) -> int:
    job_id = _opt(args, "jobs")
    try:
        job = read_job(job_id)
    except FileNotFoundError:
        job = None
    if job is None or job["state"] not in ACTIVE:
        sys.stderr.write("slurm_load_jobs error: Invalid job id specified\n")
        return 1
    print(job["state"])
    return 0


def sacct(args: list[str]) -> int:
    job_id = _opt(args, "jobs")
    try:
        job = read_job(job_id)
    except FileNotFoundError:
        return 0
    start = job["start"]
    elapsed = 0 if start is None else int(round((job["end"] or time.time()) - start))
    print(f"{job_id}|{job['state']}|{job['exit_code']}|{elapsed}|{job['nodes']}")
    return 0


def scancel(args: list[str]) -> int:
    job_id = args[-1]
    if not _job_path(job_id).exists():
        sys.stderr.write(f"scancel: error: Invalid job id {job_id}\n")
        return 1
    (_state() / "jobs" / f"{job_id}.cancel").touch()
    return 0


def main() -> int:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "_run":
        return _run(args[0], args[1])
    _log_call([cmd, *args])
    return {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel, "srun": srun}[cmd](args)


if __name__ == "__main__":
    sys.exit(main())
