"""The prepared GPU benchmark (benchmarks/gpu_train_step.py) must run unchanged when a GPU machine is lent, so its
plumbing runs here on CPU: ``--smoke`` measures a tiny model end to end and writes the JSON the report reads; a
spent deadline skips configurations but still writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_train_step.py"


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "OUT": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    out = tmp_path / "gpu_train_step.json"
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_smoke_run_measures_every_configuration_with_the_planner_flop_count(tmp_path):
    from planner.flops import stage_flops
    from planner.spec import Stage

    proc, result = _run(tmp_path, "--smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["backend"] == "cpu" and result["smoke"] is True
    assert {p["dtype"] for p in result["peak"]} == {"bfloat16", "float32"}
    peak = result["measured_bf16_peak_tflops"] * 1e12
    assert peak > 0
    rows = result["rows"]
    assert rows and not [r for r in rows if "error" in r or "skipped" in r], rows
    for r in rows:
        stage = Stage(samples=r["batch"], batch_size=r["batch"], image_res=r["res"], text_len=r["text"], lr_base=1e-3)
        assert r["flops_per_sample"] == stage_flops(r["model"], stage).train_per_sample
        achieved = r["flops_per_sample"] * r["batch"] / r["step_s"]
        assert r["mfu_vs_measured"] == pytest.approx(achieved / peak)
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert r["compile"]["compiles"] == 1  # one compile per configuration: nothing recompiles between steps
    assert "wrote" in proc.stdout


def test_spent_deadline_skips_configurations_and_still_writes_the_json(tmp_path):
    proc, result = _run(tmp_path, "--smoke", "--deadline-s", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["rows"] and all(r["skipped"].startswith("deadline") for r in result["rows"])
    assert result["peak"] and "wall_s" in result
