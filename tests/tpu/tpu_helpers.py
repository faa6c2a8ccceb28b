"""Helpers for the TPU launcher tests: small specs, launch options with short polls, a checkpoint watcher."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from planner.spec import spec_from_dict
from trainer.tpu.options import TpuOptions

WORKER_SCRIPT = Path(__file__).with_name("worker_script.py")
PROJECT = "clipa-test-1"
ZONE = "us-central1-a"


def stage(samples: int, batch: int = 4, init: str = "previous") -> dict:
    return {"samples": samples, "batch_size": batch, "image_res": 16, "text_len": 8, "lr_base": 1e-3, "init": init}


def write_spec(path: Path, name: str | None = "tpu-test", stages: list[dict] | None = None) -> Path:
    data = {"model": "mu/8", "dataset": "local:synth", "hardware": "tpu-v5e", "pricing": "spot",
            "stages": stages or [stage(40, init="scratch"), stage(40)]}
    if name is not None:
        data["name"] = name
    spec_from_dict(data)  # fail early here, not inside the launcher, if the test's spec is wrong
    path.write_text(json.dumps(data))
    return path


def fast_options(bucket: Path, **overrides) -> TpuOptions:
    kw = dict(project=PROJECT, zone=ZONE, hardware="tpu-v5e", slice=16, pricing="spot", bucket=f"file://{bucket}",
              install=False, provision_timeout_s=20.0, poll_initial_s=0.01, poll_max_s=0.05, monitor_interval_s=0.1,
              preemption_grace_s=1.0, api_timeout_s=10.0, teardown_timeout_s=20.0)
    kw.update(overrides)
    return TpuOptions.create(**kw)


class Watcher:
    """Calls ``action`` once, from a background thread, as soon as ``predicate()`` is true (polled every 10 ms)."""

    def __init__(self, predicate, action):
        self.fired = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(predicate, action), daemon=True)
        self._thread.start()

    def _watch(self, predicate, action) -> None:
        while not self._stop.is_set():
            if predicate():
                action()
                self.fired.set()
                return
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def checkpoint_reached(checkpoint: Path, stage: int, step: int):
    """For worker_script.py's checkpoint: true once it is at (stage, step) or later."""

    def predicate() -> bool:
        try:
            state = json.loads(checkpoint.read_text())
        except (OSError, ValueError):
            return False
        return (state["stage"], state["step"]) >= (stage, step)

    return predicate
