"""Getting a slice: quota errors retried with backoff, slow provisioning waited out, failed requests requeued, and
a clear error at the deadline; in every case nothing stays allocated."""

from __future__ import annotations

import pytest
from tpu_helpers import WORKER_SCRIPT, fast_options, write_spec

from fake_server import FakeConfig
from trainer.tpu.launcher import run_on_tpu
from trainer.tpu.workers import LocalExec


def _run(tmp_path, tpu_api, **opts):
    spec = write_spec(tmp_path / "spec.json", stages=[{"samples": 8, "batch_size": 4, "image_res": 16,
                                                       "text_len": 8, "lr_base": 1e-3, "init": "scratch"}])
    lines: list[str] = []
    outcome = run_on_tpu(spec, tmp_path / "run", fast_options(tmp_path / "bucket", slice=8, **opts), api=tpu_api,
                         workers=LocalExec(tmp_path / "vms"), worker_entry=[str(WORKER_SCRIPT)], echo=lines.append)
    return outcome, lines


def _nothing_allocated(fake, tpu_api):
    assert tpu_api.list_queued_resources() == [] and tpu_api.list_nodes() == []
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}


@pytest.mark.parametrize("fake_config", [FakeConfig(quota_errors=3)])
def test_quota_errors_are_retried_with_backoff(tmp_path, fake, tpu_api):
    outcome, lines = _run(tmp_path, tpu_api)
    assert outcome.status == "succeeded", outcome.error
    assert fake.fake.methods_called().count("CreateQueuedResource") == 4
    retries = [line for line in lines if "RESOURCE_EXHAUSTED" in line and "retrying in" in line]
    assert len(retries) == 3
    delays = [float(line.rsplit("retrying in ", 1)[1].split()[0]) for line in retries]
    assert delays == sorted(delays) and delays[-1] > delays[0]  # backoff grows
    assert len(outcome.attempts) == 1  # a rejected create is not a slice
    _nothing_allocated(fake, tpu_api)


@pytest.mark.parametrize("fake_config", [FakeConfig(quota_errors=10**6)])
def test_quota_never_granted_fails_clearly_at_the_deadline(tmp_path, fake, tpu_api):
    outcome, _ = _run(tmp_path, tpu_api, provision_timeout_s=0.5)
    assert outcome.status == "failed"
    assert "could not create clipa-tpu-test-a1 within 0.5 s" in outcome.error
    assert "RESOURCE_EXHAUSTED" in outcome.error and "Quota" in outcome.error
    assert [a.end for a in outcome.attempts] == ["provisioning_timeout"]
    assert outcome.cost_usd == 0.0
    _nothing_allocated(fake, tpu_api)


@pytest.mark.parametrize("fake_config", [FakeConfig(waiting_polls=6, provisioning_polls=4)])
def test_slow_provisioning_is_waited_for(tmp_path, fake, tpu_api):
    outcome, lines = _run(tmp_path, tpu_api)
    assert outcome.status == "succeeded", outcome.error
    seen = [line.split(": ", 1)[1] for line in lines if line.startswith("[tpu] clipa-tpu-test-a1: ")]
    assert seen[:3] == ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]
    assert fake.fake.methods_called().count("GetQueuedResource") >= 11
    _nothing_allocated(fake, tpu_api)


@pytest.mark.parametrize("fake_config", [FakeConfig(waiting_polls=10**6)])
def test_no_capacity_by_the_deadline_deletes_the_request(tmp_path, fake, tpu_api):
    outcome, _ = _run(tmp_path, tpu_api, provision_timeout_s=0.5)
    assert outcome.status == "failed"
    assert "no v5litepod-8 capacity in us-central1-a within 0.5 s (last state WAITING_FOR_RESOURCES)" in outcome.error
    assert [a.end for a in outcome.attempts] == ["provisioning_timeout"]
    assert "DeleteQueuedResource" in fake.fake.methods_called()
    assert outcome.leaked == []
    _nothing_allocated(fake, tpu_api)


@pytest.mark.parametrize("fake_config", [FakeConfig(failed_requests=1)])
def test_a_failed_request_is_replaced(tmp_path, fake, tpu_api):
    outcome, _ = _run(tmp_path, tpu_api)
    assert outcome.status == "succeeded", outcome.error
    assert [a.end for a in outcome.attempts] == ["provisioning_failed", "completed"]
    assert outcome.attempts[0].cost_usd == 0.0  # never active, never billed
    _nothing_allocated(fake, tpu_api)


def test_on_demand_uses_the_guaranteed_tier_and_its_price(tmp_path, fake, tpu_api):
    outcome, _ = _run(tmp_path, tpu_api, pricing="on-demand", hardware="tpu-v6e")
    assert outcome.status == "succeeded", outcome.error
    (create,) = [r for m, r in fake.fake.calls if m == "CreateQueuedResource"]
    qr = create["queuedResource"]
    assert "guaranteed" in qr and "spot" not in qr
    assert qr["tpu"]["nodeSpec"][0]["node"]["acceleratorType"] == "v6e-8"
    assert qr["tpu"]["nodeSpec"][0]["node"]["runtimeVersion"] == "v2-alpha-tpuv6e"
    assert outcome.usd_per_chip_hour == 2.70
    _nothing_allocated(fake, tpu_api)


@pytest.mark.parametrize("fake_config", [FakeConfig(deleting_polls=3, lro_polls=2)])
def test_deletion_is_waited_for(tmp_path, fake, tpu_api):
    outcome, _ = _run(tmp_path, tpu_api)
    assert outcome.status == "succeeded", outcome.error
    _nothing_allocated(fake, tpu_api)
