"""Shared fixtures for the fault-injection suite: a tiny generated dataset, a tiny two-stage spec on it, and a
``clipa`` subprocess runner with its own CLIPA_HOME and a shared persistent JAX compilation cache (so only the first
subprocess of a session compiles; the rest start in seconds on two shared CPU cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CLIPA = [sys.executable, "-c", "from trainer.cli import main; main()"]


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


def clipa_env(home: Path, jax_cache: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CLIPA_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if jax_cache is not None:
        env.update({"JAX_COMPILATION_CACHE_DIR": str(jax_cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    env.update(extra or {})
    return env


def clipa(home: Path, *args: str, jax_cache: Path | None = None, extra_env: dict[str, str] | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess:
    """``clipa ARGS`` in a subprocess; the completed process (the caller checks the exit code)."""
    return subprocess.run([*CLIPA, *args], cwd=REPO, env=clipa_env(home, jax_cache, extra_env), capture_output=True,
                          text=True, timeout=timeout)


def clipa_ok(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    proc = clipa(home, *args, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"clipa {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """400 training and 64 evaluation samples at 16 px (one shard each), made by ``clipa data synth``."""
    out = tmp_path_factory.mktemp("faults_data") / "tiny"
    home = tmp_path_factory.mktemp("faults_datahome")
    clipa_ok(home, "data", "synth", "--out", str(out), "--samples", "400", "--resolution", "16", "--eval-samples",
             "64", "--json", timeout=300)
    return out


def tiny_spec_dict(data: Path, **overrides) -> dict:
    """Two stages of mu/8 at 16 px: 8 steps (text 4) then 6 steps (text 8), a checkpoint every 2 steps."""
    spec = {
        "name": "fault-tiny",
        "model": "mu/8",
        "dataset": "local:tiny",
        "data": str(data / "train"),
        "eval_data": str(data / "eval"),
        "tokenizer": str(data / "tokenizer.json"),
        "hardware": "cpu-2core",
        "pricing": "on-demand",
        "seed": 0,
        "stages": [
            {"samples": 64, "batch_size": 8, "image_res": 16, "text_len": 4, "lr_base": 0.01, "init": "scratch"},
            {"samples": 48, "batch_size": 8, "image_res": 16, "text_len": 8, "lr_base": 0.005, "init": "previous"},
        ],
        "train": {"checkpoint_every_steps": 2, "log_every_steps": 1},
    }
    spec.update(overrides)
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2))
    return path


def leftovers(*roots: Path) -> list[str]:
    """Half-written files under ``roots``: atomic-write temporaries (*.tmp) and orbax's unfinished step folders."""
    bad = []
    for root in roots:
        if not root.exists():
            continue
        for p in root.rglob("*"):
            if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name or p.name.endswith(".partial"):
                bad.append(str(p))
    return bad
