"""The whole launch against the fake API with local worker processes: provision, start, preemption mid-stage,
requeue, resume, finish, teardown; plus worker crashes. Nothing may be left allocated afterwards."""

from __future__ import annotations

import json

import pytest

from tpu_helpers import WORKER_SCRIPT, Watcher, checkpoint_reached, fast_options, write_spec
from fake_server import FakeConfig
from trainer.tpu.launcher import run_on_tpu
from trainer.tpu.workers import LocalExec


def _run(tmp_path, fake, tpu_api, spec, **opts):
    bucket = tmp_path / "bucket"
    options = fast_options(bucket, **opts)
    lines: list[str] = []
    outcome = run_on_tpu(spec, tmp_path / "run", options, api=tpu_api, workers=LocalExec(tmp_path / "vms"),
                         worker_entry=[str(WORKER_SCRIPT)], echo=lines.append)
    return outcome, bucket / outcome.run_name, lines


def _nothing_allocated(fake, tpu_api):
    assert tpu_api.list_queued_resources() == []
    assert tpu_api.list_nodes() == []
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}


@pytest.mark.parametrize("fake_config", [FakeConfig(waiting_polls=2, provisioning_polls=2, lro_polls=2)])
def test_two_stage_run_survives_preemption_mid_stage(tmp_path, fake, tpu_api):
    spec = write_spec(tmp_path / "spec.json")
    remote = tmp_path / "bucket" / "clipa-tpu-test"
    watcher = Watcher(checkpoint_reached(remote / "checkpoint.json", stage=1, step=3), lambda: fake.fake.preempt())
    try:
        outcome, remote_dir, lines = _run(tmp_path, fake, tpu_api, spec)
    finally:
        watcher.close()
    assert watcher.fired.is_set()
    assert remote_dir == remote
    assert outcome.status == "succeeded", outcome.error
    # Two slices: the first preempted in stage 2, the second resumed and completed.
    assert [a.end for a in outcome.attempts] == ["preempted", "completed"]
    assert outcome.preemptions == 1
    assert [a.queued_resource.rsplit("/", 1)[-1] for a in outcome.attempts] == ["clipa-tpu-test-a1",
                                                                                  "clipa-tpu-test-a2"]
    assert all(a.hosts == 2 for a in outcome.attempts)  # v5e-16: two hosts, two worker processes
    assert outcome.attempts[1].worker_exit_codes == [0, 0]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["processes"] == 2
    (stage, step), = result["resumed_at"]
    assert stage == 1 and step >= 3  # resumed in the middle of the second stage, not from scratch
    assert "result.json" in outcome.fetched
    # Cost covers both attempts: each billed from ACTIVE to its end, at the catalog's v5e spot price.
    for a in outcome.attempts:
        assert a.active_at is not None and a.ended_at >= a.active_at
        assert a.chip_hours == pytest.approx((a.ended_at - a.active_at) / 3600 * 16)
        assert a.cost_usd == pytest.approx(a.chip_hours * 0.213)
        assert a.cost_usd > 0
    assert outcome.cost_usd == pytest.approx(sum(a.cost_usd for a in outcome.attempts))
    assert outcome.usd_per_chip_hour == 0.213 and outcome.accelerator_type == "v5litepod-16"
    # The record on disk matches, and worker 0's output was streamed.
    saved = json.loads((tmp_path / "run" / "tpu" / "outcome.json").read_text())
    assert saved["status"] == "succeeded" and len(saved["attempts"]) == 2
    assert any(line.startswith("[w0] stage 1 step") for line in lines)
    # Requests were what the pricing asks for: spot queued resources, created twice.
    creates = [req for m, req in fake.fake.calls if m == "CreateQueuedResource"]
    assert len(creates) == 2
    assert all("spot" in c["queuedResource"] and c["queuedResource"]["tpu"]["nodeSpec"][0]["node"]
               ["schedulingConfig"]["spot"] for c in creates)
    assert "GetOperation" in fake.fake.methods_called()  # long-running operations were polled, not assumed done
    _nothing_allocated(fake, tpu_api)


def test_worker_crash_is_requeued_and_resumed(tmp_path, fake, tpu_api):
    spec = write_spec(tmp_path / "spec.json")
    remote = tmp_path / "bucket" / "clipa-tpu-test"
    remote.mkdir(parents=True)
    (remote / "crash-once").write_text("")
    outcome, _, _ = _run(tmp_path, fake, tpu_api, spec, slice=8)
    assert outcome.status == "succeeded", outcome.error
    assert [a.end for a in outcome.attempts] == ["worker_failed", "completed"]
    assert outcome.attempts[0].worker_exit_codes == [3]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["resumed_at"] == [[0, 2]]
    _nothing_allocated(fake, tpu_api)


def test_bad_input_is_not_requeued(tmp_path, fake, tpu_api):
    spec = write_spec(tmp_path / "spec.json")
    remote = tmp_path / "bucket" / "clipa-tpu-test"
    remote.mkdir(parents=True)
    (remote / "bad-input").write_text("")
    outcome, _, _ = _run(tmp_path, fake, tpu_api, spec, slice=8)
    assert outcome.status == "failed"
    assert "exit code 2" in outcome.error
    assert [a.end for a in outcome.attempts] == ["worker_failed"]
    _nothing_allocated(fake, tpu_api)


@pytest.mark.parametrize("fake_config", [FakeConfig(preempt_after_node_polls=[1, 1])])
def test_gives_up_after_max_attempts_and_prices_every_one(tmp_path, fake, tpu_api):
    spec = write_spec(tmp_path / "spec.json")
    outcome, _, _ = _run(tmp_path, fake, tpu_api, spec, slice=8, max_attempts=2)
    assert outcome.status == "failed"
    assert "gave up after 2 slices" in outcome.error
    assert [a.end for a in outcome.attempts] == ["preempted", "preempted"]
    assert outcome.preemptions == 2
    assert outcome.chip_hours == pytest.approx(sum(a.chip_hours for a in outcome.attempts))
    _nothing_allocated(fake, tpu_api)


class _PreemptedDuringSetup(LocalExec):
    """Local workers whose first setup meets a VM that is preempted mid-copy (as scp/ssh fail on a vanished VM)."""

    def __init__(self, root, fake):
        super().__init__(root)
        self._fake = fake
        self.setups = 0

    def setup(self, node, hosts, files, install, remote_run_dir=None):
        self.setups += 1
        if self.setups == 1:
            self._fake.fake.preempt(node)
            from trainer.tpu.workers import WorkerSetupError

            raise WorkerSetupError(f"scp on {node} failed with exit code 255: Connection closed")
        super().setup(node, hosts, files, install, remote_run_dir)


def test_preemption_during_setup_is_requeued(tmp_path, fake, tpu_api):
    spec = write_spec(tmp_path / "spec.json")
    workers = _PreemptedDuringSetup(tmp_path / "vms", fake)
    outcome = run_on_tpu(spec, tmp_path / "run", fast_options(tmp_path / "bucket", slice=8), api=tpu_api,
                         workers=workers, worker_entry=[str(WORKER_SCRIPT)], echo=lambda line: None)
    assert outcome.status == "succeeded", outcome.error
    assert [a.end for a in outcome.attempts] == ["preempted", "completed"]
    assert outcome.attempts[0].detail == "node PREEMPTED during setup"
    _nothing_allocated(fake, tpu_api)
