"""Ctrl-C and SIGTERM: the launcher (in its own process) stops the workers, deletes every resource it created,
records the attempt, and exits 130; while provisioning too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tpu_helpers import write_spec

from fake_server import FakeConfig

HERE = Path(__file__).parent


def _start(tmp_path, fake):
    spec = write_spec(tmp_path / "spec.json", stages=[{"samples": 4000, "batch_size": 4, "image_res": 16,
                                                       "text_len": 8, "lr_base": 1e-3, "init": "scratch"}])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent.parent)])}
    proc = subprocess.Popen([sys.executable, str(HERE / "drive_launcher.py"), fake.address, str(spec),
                             str(tmp_path / "run"), str(tmp_path / "bucket"), str(tmp_path / "vms")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    return proc, lines, reader


def _wait_for(predicate, proc, what: str, limit_s: float = 60.0) -> None:
    # A bound on a hang, not a timing assertion: the event normally comes within a second or two.
    end = time.monotonic() + limit_s
    while not predicate():
        assert proc.poll() is None, f"launcher exited before {what}"
        assert time.monotonic() < end, f"no {what}"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_training_tears_everything_down(tmp_path, fake, tpu_api, sig):
    proc, lines, reader = _start(tmp_path, fake)
    ckpt = tmp_path / "bucket" / "clipa-tpu-test" / "checkpoint.json"
    _wait_for(ckpt.exists, proc, "checkpoint")
    pid_files = sorted((tmp_path / "vms" / "clipa-tpu-test-a1").glob("worker-*/clipa-run/pid-*"))
    assert len(pid_files) == 2
    pids = [int(p.read_text()) for p in pid_files]
    assert fake.fake.allocated()["nodes"]
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130, "".join(lines)
    reader.join(timeout=5)
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}
    assert tpu_api.list_queued_resources() == [] and tpu_api.list_nodes() == []
    assert not [pid for pid in pids if _alive(pid)]
    outcome = json.loads((tmp_path / "run" / "tpu" / "outcome.json").read_text())
    assert outcome["status"] == "interrupted" and outcome["leaked"] == []
    (attempt,) = outcome["attempts"]
    assert attempt["end"] == "interrupted" and attempt["cost_usd"] > 0


@pytest.mark.parametrize("fake_config", [FakeConfig(waiting_polls=10**6)])
def test_interrupt_while_waiting_for_capacity_deletes_the_request(tmp_path, fake, tpu_api):
    proc, lines, reader = _start(tmp_path, fake)
    _wait_for(lambda: any("WAITING_FOR_RESOURCES" in line for line in lines), proc, "queued request")
    assert fake.fake.allocated()["queued_resources"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, "".join(lines)
    reader.join(timeout=5)
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}
    outcome = json.loads((tmp_path / "run" / "tpu" / "outcome.json").read_text())
    assert outcome["status"] == "interrupted"
    assert outcome["attempts"][0]["cost_usd"] == 0.0
