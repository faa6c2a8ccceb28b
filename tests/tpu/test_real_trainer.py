"""The launch flow with the real trainer: ``python -m trainer.cli train spec.json --run-dir DIR --synthetic`` in a
local worker process, a tiny two-stage mu/8 spec, preempted in the second stage, requeued and resumed from the
trainer's own orbax checkpoint (the preempted worker is SIGKILLed, as a vanishing VM would be, so it cannot save on
the way out). Skipped while the ``train`` command is not registered in ``trainer.cli``."""

from __future__ import annotations

import json

import pytest
from tpu_helpers import Watcher, fast_options, write_spec

from trainer.cli import build_app
from trainer.tpu.launcher import run_on_tpu
from trainer.tpu.workers import LocalExec


def _train_command():
    app = build_app()
    for cmd in app.registered_commands:
        if (cmd.name or cmd.callback.__name__) == "train":
            return cmd
    return None


pytestmark = pytest.mark.skipif(_train_command() is None, reason="`clipa train` is not registered in trainer.cli yet")


def _checkpoint_steps(path):
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.mark.slow  # two trainer start-ups with JAX compilation: about a minute on two cores
def test_real_trainer_is_preempted_requeued_and_resumes(tmp_path, fake, tpu_api):
    stage = {"batch_size": 8, "image_res": 16, "text_len": 8, "lr_base": 1e-3}
    spec = write_spec(tmp_path / "spec.json", name="real", stages=[
        {**stage, "samples": 48, "init": "scratch"}, {**stage, "samples": 48, "init": "previous"}])
    data = json.loads(spec.read_text())
    data["train"] = {"checkpoint_every_steps": 2, "log_every_steps": 1}
    spec.write_text(json.dumps(data))
    remote = tmp_path / "bucket" / "clipa-real"
    # Preempt once the trainer has checkpointed inside the second stage (global steps 7-12).
    watcher = Watcher(lambda: any(s >= 8 for s in _checkpoint_steps(remote / "checkpoints")),
                      lambda: fake.fake.preempt())
    try:
        options = fast_options(tmp_path / "bucket", slice=8, trainer_args=("--synthetic",), monitor_interval_s=0.2,
                               preemption_grace_s=5.0)
        outcome = run_on_tpu(spec, tmp_path / "run", options, api=tpu_api, workers=LocalExec(tmp_path / "vms"),
                             echo=lambda line: None)
    finally:
        watcher.close()
    logs = sorted((tmp_path / "run" / "tpu" / "logs").rglob("worker-0.log"))
    assert outcome.status == "succeeded", (outcome.error, [p.read_text()[-3000:] for p in logs])
    assert watcher.fired.is_set()
    assert [a.end for a in outcome.attempts] == ["preempted", "completed"]
    events = [json.loads(line) for line in (remote / "metrics.jsonl").read_text().splitlines() if line.strip()]
    resumes = [e for e in events if e.get("kind") == "resume"]
    assert len(resumes) == 1 and resumes[0]["stage"] == 1 and resumes[0]["global_step"] >= 8
    assert "metrics.jsonl" in outcome.fetched and (tmp_path / "run" / "metrics.jsonl").exists()
    assert outcome.cost_usd == pytest.approx(sum(a.cost_usd for a in outcome.attempts)) and outcome.cost_usd > 0
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}
