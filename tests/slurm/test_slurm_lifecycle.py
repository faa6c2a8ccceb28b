"""``clipa run --backend slurm`` end to end against a fake SLURM on PATH (tests/slurm/fake_slurm.py): the real
console script submits the real batch script, the fake runs it (bash, srun, `clipa train`), preempts the first job
once a checkpoint exists, and clipa follows, resubmits, resumes from that checkpoint, records one result whose cost
covers both jobs, and leaves no job behind. Plus the failure paths: a job that fails for good is not resubmitted
and nothing is recorded, Ctrl-C cancels the running job, and bad options are one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import REPO, env_with, write_spec
from fake_slurm import all_jobs

from planner.hardware import get_hardware
from planner.spec import load_spec

CLIPA = [sys.executable, "-c", "from trainer.cli import main; main()"]
SLURM_ARGS = ["--backend", "slurm", "--nodes", "1", "--gpus-per-node", "1", "--hardware", "a100-80gb",
              "--pricing", "on-demand", "--poll-interval", "0.2"]


def _calls(state: Path) -> list[list[str]]:
    p = state / "calls.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_nothing_left(state: Path) -> None:
    jobs = all_jobs(state)
    assert jobs and all(j["state"] not in ("PENDING", "RUNNING") for j in jobs), jobs
    for j in jobs:  # the job's processes (its batch script's group) are gone too
        if j["pgid"]:
            deadline = time.monotonic() + 10
            while _alive(j["pgid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(j["pgid"]), j


@pytest.mark.slow  # two training jobs of a tiny model and one zero-shot evaluation (~1-2 min on two cores)
def test_preempted_job_is_resubmitted_resumed_and_recorded_once(tmp_path, slurm, tiny_data, isolated_home):
    bin_dir, state = slurm
    spec_path = write_spec(tmp_path / "spec.json", tiny_data, steps=120)
    spec = load_spec(spec_path)
    runs = tmp_path / "shared runs"  # a space: every path reaches bash quoted
    run_dir = runs / spec.run_id
    env = env_with(bin_dir, CLIPA_HOME=str(isolated_home), FAKE_SLURM_PREEMPT_AFTER_CHECKPOINT=str(run_dir))
    proc = subprocess.run([*CLIPA, "run", str(spec_path), *SLURM_ARGS, "--run-dir", str(runs), "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(proc.stdout)["results"]
    assert len(results) == 1
    r = results[0]
    jobs = all_jobs(state)
    assert [(j["id"], j["state"]) for j in jobs] == [("1000", "PREEMPTED"), ("1001", "COMPLETED")]
    assert r["backend"] == "slurm" and r["run_id"] == spec.run_id
    assert (r["extra"]["slurm_jobs"], r["extra"]["slurm_attempts"], r["extra"]["slurm_resubmissions"]) == \
        ("1000,1001", 2, 1)
    # The cost covers both jobs: sacct's elapsed seconds x 1 node x 1 GPU x the profile's price.
    outcome = json.loads((run_dir / "slurm" / "outcome.json").read_text())
    elapsed = [a["elapsed_s"] for a in outcome["attempts"]]
    assert len(elapsed) == 2 and all(e >= 1 for e in elapsed)
    price = get_hardware("a100-80gb").price("on-demand").usd_per_device_hour
    assert r["device_hours"] == pytest.approx(sum(elapsed) / 3600)
    assert r["cost_usd"] == pytest.approx(sum(elapsed) / 3600 * price)
    assert 0 <= r["top1"] <= 100
    # The second job resumed from the first one's checkpoint and finished the run.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumes = [row for row in rows if row.get("kind") == "resume"]
    assert len(resumes) == 1 and resumes[0]["global_step"] >= 4
    # Each job's log starts with what the trainer runs on (here: the CPU, float32), the first one ends with the
    # trainer's SIGTERM checkpoint.
    log1, log2 = ((run_dir / "slurm" / f"job-{j}.out").read_text() for j in ("1000", "1001"))
    assert "cpu: 1 device(s) (cpu) in 1 process(es), compute float32" in log1 and "SIGTERM" in log1
    assert "cpu: 1 device(s) (cpu) in 1 process(es), compute float32" in log2
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 120
    # What clipa ran: sbatch twice, squeue/sacct to follow; never scancel (nothing needed cancelling).
    cmds = [c[0] for c in _calls(state)]
    assert cmds.count("sbatch") == 2 and "squeue" in cmds and "sacct" in cmds and "scancel" not in cmds
    _assert_nothing_left(state)
    assert len(list((isolated_home / "results" / "runs").glob("*.json"))) == 1

    # Rerun: the run is recorded, nothing is submitted.
    again = subprocess.run([*CLIPA, "run", str(spec_path), *SLURM_ARGS, "--run-dir", str(runs)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("skipped:"), again.stdout + again.stderr[-3000:]
    assert [c[0] for c in _calls(state)].count("sbatch") == 2


@pytest.mark.slow  # one short job (~30 s)
def test_a_job_that_fails_is_not_resubmitted(tmp_path, slurm, tiny_data, isolated_home):
    """The trainer exits 2 (bad input found on the node: here a tokenizer deleted after submission): FAILED, not
    retried, nothing recorded, exit 2 with one line naming the job."""
    bin_dir, state = slurm
    spec_path = write_spec(tmp_path / "spec.json", tiny_data, steps=8)
    spec = json.loads(spec_path.read_text())
    tok = tmp_path / "tok.json"
    tok.write_text((tiny_data / "tokenizer.json").read_text())
    spec["tokenizer"] = str(tok)
    spec_path.write_text(json.dumps(spec))
    env = env_with(bin_dir, CLIPA_HOME=str(isolated_home))
    p = subprocess.Popen([*CLIPA, "run", str(spec_path), *SLURM_ARGS, "--run-dir", str(tmp_path / "runs")], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _calls(state) and time.monotonic() < deadline:
        time.sleep(0.05)
    tok.write_text("not a tokenizer")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, out + err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: backend: run ") and "job 1000 ended FAILED (exit 2:0)" in last, last
    assert [j["state"] for j in all_jobs(state)] == ["FAILED"]
    assert not (isolated_home / "results" / "runs").exists() or not any((isolated_home / "results" / "runs").iterdir())
    _assert_nothing_left(state)


@pytest.mark.slow  # one job interrupted while it runs (~20 s)
def test_ctrl_c_cancels_the_running_job(tmp_path, slurm, tiny_data, isolated_home):
    bin_dir, state = slurm
    spec_path = write_spec(tmp_path / "spec.json", tiny_data, steps=400)
    env = env_with(bin_dir, CLIPA_HOME=str(isolated_home))
    p = subprocess.Popen([*CLIPA, "run", str(spec_path), *SLURM_ARGS, "--run-dir", str(tmp_path / "runs")], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(j["state"] == "RUNNING" for j in _jobs_or_none(state)):
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0
    assert ["scancel", "1000"] in _calls(state), err[-3000:]
    assert [j["state"] for j in all_jobs(state)] == ["CANCELLED"]
    _assert_nothing_left(state)


def _jobs_or_none(state: Path) -> list[dict]:
    return all_jobs(state) if (state / "jobs").exists() else []


@pytest.mark.parametrize("args, field", [
    (["--partition", "gpu;rm -rf ~"], "partition"),
    (["--time", "1 day"], "time"),
    (["--nodes", "0"], "nodes"),
    (["--hardware", "tpu-v5e"], "hardware"),
    (["--gpus-per-node", "3"], "stages[0].batch_size"),  # batch 8 over 3 GPUs
])
def test_bad_options_are_one_line(tmp_path, tiny_data, slurm, isolated_home, args, field):
    bin_dir, state = slurm
    spec_path = write_spec(tmp_path / "spec.json", tiny_data, steps=8)
    base = [a for a in SLURM_ARGS]
    if args[0] == "--hardware":
        base[base.index("--hardware") + 1] = args[1]
        args = []
    proc = subprocess.run([*CLIPA, "run", str(spec_path), *base, *args, "--run-dir", str(tmp_path / "runs")],
                          cwd=REPO, env=env_with(bin_dir, CLIPA_HOME=str(isolated_home)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), lines
    assert _calls(state) == []


@pytest.mark.slow  # one training job (~40 s)
def test_a_killed_launcher_follows_its_job_when_rerun(tmp_path, slurm, tiny_data, isolated_home):
    """`clipa run` SIGKILLed while its job runs (no chance to cancel it): rerun, it follows that job instead of
    submitting another, and records it with the job's cost."""
    bin_dir, state = slurm
    spec_path = write_spec(tmp_path / "spec.json", tiny_data, steps=120)
    env = env_with(bin_dir, CLIPA_HOME=str(isolated_home))
    argv = [*CLIPA, "run", str(spec_path), *SLURM_ARGS, "--run-dir", str(tmp_path / "runs"), "--json"]
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(j["state"] == "RUNNING" for j in _jobs_or_none(state)):
        time.sleep(0.1)
    first.kill()
    first.wait()
    assert [j["state"] for j in all_jobs(state)] == ["RUNNING"]
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "following job 1000 (attempt 1)" in again.stderr
    r = json.loads(again.stdout)["results"][0]
    assert [c[0] for c in _calls(state)].count("sbatch") == 1
    assert [j["state"] for j in all_jobs(state)] == ["COMPLETED"]
    assert r["extra"]["slurm_jobs"] == "1000" and r["device_hours"] > 0
    _assert_nothing_left(state)
