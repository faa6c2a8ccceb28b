"""Helpers of the SLURM tests: paths, the tiny spec, the environment of a `clipa` subprocess with the fake on PATH."""

from __future__ import annotations

import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def write_spec(path: Path, data: Path, steps: int) -> Path:
    """mu/8 at 16 px, batch 8, ``steps`` steps, a checkpoint every 4 (so that there is one to resume from)."""
    spec = {"name": "slurm-demo", "model": "mu/8", "dataset": "local:tiny", "hardware": "cpu-2core",
            "pricing": "on-demand", "seed": 0, "data": str(data / "train"), "eval_data": str(data / "eval"),
            "tokenizer": str(data / "tokenizer.json"),
            "stages": [{"samples": 8 * steps, "batch_size": 8, "image_res": 16, "text_len": 8, "lr_base": 0.01,
                        "init": "scratch"}],
            "train": {"checkpoint_every_steps": 4, "log_every_steps": 1}}
    path.write_text(json.dumps(spec))
    return path


def env_with(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for k in [k for k in env if k.startswith("SLURM")]:  # a test run inside a real SLURM job
        del env[k]
    env.update(extra)
    return env
