"""Exact resume: a run stopped by SIGTERM in stage 1 and SIGKILLed in stage 2, restarted each time, ends with the
same parameters (bitwise), the same per-step losses (bitwise) and the same data as an uninterrupted run.

Each run is a subprocess (``_train_worker.py``); they share a persistent JAX compilation cache so that only the first
one compiles. The synthetic source is slowed down (0.12 s per batch) so the test can catch the run at a chosen step.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from trainer_helpers import HERE, REPO, make_spec, run_python, subprocess_env

from trainer.checkpoint import Checkpoints, load_params
from trainer.telemetry import read_metrics

DELAY = "0.12"


def _last_step(run_dir) -> int:
    steps = [r["global_step"] for r in read_metrics(run_dir) if r.get("kind") == "step"]
    return max(steps) if steps else 0


def _start(spec_path, run_dir, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "_train_worker.py"), str(spec_path), str(run_dir), DELAY],
                            cwd=REPO, env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_step(proc: subprocess.Popen, run_dir, step: int, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while _last_step(run_dir) < step:
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before step {step}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"step {step} not reached in {timeout} s")
        time.sleep(0.02)


@pytest.mark.slow  # four training processes (~1-2 min on two shared cores)
def test_sigterm_and_sigkill_then_resume_equal_an_uninterrupted_run(tmp_path):
    spec = make_spec([
        dict(samples=8 * 20, batch_size=8, image_res=16, text_len=4, lr_base=0.02, warmup_samples=8 * 4),
        dict(samples=8 * 16, batch_size=8, image_res=32, text_len=8, lr_base=0.005, image_mask="random",
             mask_ratio=0.3, init="previous"),
    ], checkpoint_every_steps=5, log_every_steps=1, posemb="learn")  # learned posemb: resampled between stages
    spec_path = spec.write(tmp_path / "spec.json")
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}

    run_python([str(HERE / "_train_worker.py"), str(spec_path), str(tmp_path / "a"), "0"], env)

    rng = random.Random()
    stop_1, stop_2 = rng.randint(2, 18), rng.randint(23, 34)  # in stage 1 (steps 1-20), in stage 2 (21-36)
    where = f"(SIGTERM at step >= {stop_1}, SIGKILL at step >= {stop_2})"
    b = tmp_path / "b"
    proc = _start(spec_path, b, env)
    _wait_for_step(proc, b, stop_1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (where, out, err[-3000:])
    stopped_at = json.loads(out.strip().splitlines()[-1])["interrupted"]
    store = Checkpoints(b / "checkpoints", read_only=True)
    assert store.latest_step() == stopped_at, where  # the signal saved a checkpoint at the step it stopped
    store.close()

    proc = _start(spec_path, b, env)
    _wait_for_step(proc, b, stop_2)
    proc.kill()  # SIGKILL: no chance to save anything
    proc.wait(timeout=60)

    done = run_python([str(HERE / "_train_worker.py"), str(spec_path), str(b), "0"], env)
    assert done["global_step"] == 36, where

    # same final parameters, bit for bit
    cfg_a, params_a, meta_a = load_params(tmp_path / "a")
    cfg_b, params_b, meta_b = load_params(b)
    assert meta_a["global_step"] == meta_b["global_step"] == 36
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params_a), jax.tree.leaves(params_b)):
        assert np.array_equal(np.asarray(x), np.asarray(y)), (where, jax.tree_util.keystr(path))
    assert meta_a["cost"]["samples"] == meta_b["cost"]["samples"] == 36 * 8
    assert meta_a["cost"]["usd"] == pytest.approx(meta_b["cost"]["usd"], rel=1e-12)

    # the metrics read as one run: every step once, the same loss at every step, the data in order
    rows_a = [r for r in read_metrics(tmp_path / "a") if r["kind"] == "step"]
    rows_b = [r for r in read_metrics(b) if r["kind"] == "step"]
    assert [r["global_step"] for r in rows_b] == list(range(1, 37)), where
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a], where
    for stage, n in ((0, 20), (1, 16)):
        positions = [r["data_state"]["step"] for r in rows_b if r["stage"] == stage]
        assert positions == list(range(1, n + 1)), (where, stage, positions)  # no batch twice, none skipped
    resumes = [r for r in read_metrics(b) if r["kind"] == "resume"]
    assert len(resumes) == 2 and resumes[0]["global_step"] == stopped_at, (where, resumes)
