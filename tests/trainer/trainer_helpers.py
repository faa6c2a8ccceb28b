"""Shared helpers for the trainer tests: tiny specs and subprocess runners.

Tiny towers only (mu/8, mini/8 at 16-32 px, text 4-8, batch 8-16): every distinct shape costs a compile on two shared
CPU cores, so tests reuse the same few shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from planner.spec import RunSpec

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

BASE_STAGE = dict(samples=48, batch_size=8, image_res=16, text_len=4, lr_base=2e-3, init="scratch")


def make_spec(stages: list[dict], model: str = "mu/8", seed: int = 0, **train) -> RunSpec:
    return RunSpec.model_validate(dict(
        model=model, dataset="local:synthetic", hardware="cpu-2core", pricing="on-demand", seed=seed,
        stages=[{**BASE_STAGE, **s} for s in stages], train=train,
    ))


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # XLA's SPMD chatter goes to stderr, which the tests print on failure
    env.update(extra or {})
    return env


def run_python(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """Run ``python ARGS`` from the repository root; return the JSON object it prints last on stdout."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(env_extra), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def eight_devices() -> dict[str, str]:
    return {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
