"""Multi-host SPMD on one machine: two processes with two fake CPU devices each train the same spec as one process
with one device. Each process feeds only its half of every batch (jax.make_array_from_process_local_data), the
checkpoint holds both processes' data positions, and the losses match the single-device run step by step (to
rtol 1e-5: the 4-device reductions add in another order)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from trainer_helpers import HERE, REPO, run_python, subprocess_env

from trainer.checkpoint import Checkpoints
from trainer.telemetry import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three JAX processes (~40 s)
def test_two_processes_train_like_one(tmp_path):
    worker = str(HERE / "_multiprocess_worker.py")
    single = run_python([worker, str(tmp_path / "one")])
    assert (single["processes"], single["devices"]) == (1, 1)

    port = _free_port()
    procs = []
    for pid in range(2):
        env = subprocess_env({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                              "JAX_PROCESS_ID": str(pid), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
        procs.append(subprocess.Popen([sys.executable, worker, str(tmp_path / "two")], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
        assert '"processes": 2, "devices": 4' in out

    one = [r["loss"] for r in read_metrics(tmp_path / "one") if r["kind"] == "step"]
    two = [r["loss"] for r in read_metrics(tmp_path / "two") if r["kind"] == "step"]  # written by process 0 only
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-5)
    store = Checkpoints(tmp_path / "two" / "checkpoints", read_only=True)
    meta = store.meta(store.latest_step())
    assert meta["data_states"] == [{"kind": "synthetic", "stage": 0, "step": 4}] * 2
