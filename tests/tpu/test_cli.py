"""``clipa tpu up|status|logs|down|run`` against the fake API over 127.0.0.1 (CLIPA_TPU_ENDPOINT, set by the ``fake``
fixture), with the CLI conventions: JSON on stdout with --json, progress on stderr, one-line errors (bad input or a
failed run) with exit code 2."""

from __future__ import annotations

import json

import pytest
from tpu_helpers import PROJECT, ZONE, write_spec

from planner.cli import run_app
from trainer.cli import build_app
from fake_server import FakeConfig

COMMON = ["--project", PROJECT, "--zone", ZONE]
FAST = ["--poll-interval", "0.02"]


def cli(argv, capsys):
    build_app()
    code = run_app(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("fake_config", [FakeConfig(waiting_polls=2, provisioning_polls=1)])
def test_up_status_down(fake, capsys):
    code, out, err = cli(["tpu", "up", *COMMON, *FAST, "--name", "manual-1", "--hardware", "tpu-v6e",
                          "--slice", "16", "--pricing", "on-demand", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["state"] == "READY" and info["accelerator_type"] == "v6e-16" and not info["spot"]
    assert len(info["workers"]) == 2
    assert "WAITING_FOR_RESOURCES" in err

    code, out, _ = cli(["tpu", "status", *COMMON, "--json"], capsys)
    status = json.loads(out)
    assert [q["state"] for q in status["queued_resources"]] == ["ACTIVE"]
    assert [n["name"].rsplit("/", 1)[-1] for n in status["nodes"]] == ["manual-1"]
    code, out, _ = cli(["tpu", "status", *COMMON, "--name", "manual-1"], capsys)
    assert "node manual-1: READY v6e-16 (on-demand), 2 worker(s)" in out

    code, _, err = cli(["tpu", "down", *COMMON, *FAST, "--name", "manual-1"], capsys)
    assert code == 0 and "manual-1: deleted" in err
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}
    code, _, err = cli(["tpu", "down", *COMMON, "--name", "manual-1"], capsys)
    assert code == 0 and "nothing to delete" in err


@pytest.mark.parametrize("fake_config", [FakeConfig(waiting_polls=10**6)])
def test_up_deletes_what_it_could_not_finish(fake, capsys):
    code, out, err = cli(["tpu", "up", *COMMON, *FAST, "--name", "never", "--slice", "8",
                          "--provision-timeout", "0.3"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith("error: tpu: no v5litepod-8 capacity in us-central1-a within 0.3 s")
    assert "never: deleted" in err
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}


@pytest.mark.parametrize("fake_config", [FakeConfig(quota_errors=10**6)])
def test_run_reports_failure_with_exit_2_and_outcome_json(tmp_path, fake, local_workers, capsys):
    spec = write_spec(tmp_path / "spec.json")
    code, out, err = cli(["tpu", "run", str(spec), "--run-dir", str(tmp_path / "run"), *COMMON, *FAST,
                          "--bucket", f"file://{tmp_path}/bucket", "--provision-timeout", "0.2", "--json"], capsys)
    assert code == 2
    outcome = json.loads(out)
    assert outcome["status"] == "failed" and "RESOURCE_EXHAUSTED" in outcome["error"]
    assert err.splitlines()[-1].startswith("error: tpu: could not create clipa-tpu-test-a1")
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}


def test_logs_prints_a_worker_log(local_workers, capsys):
    log = local_workers / "clipa-x-a1" / "worker-0" / "clipa-run" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("stage 0 step 1/10\ntoken ya29.leaked-token-value\n")
    code, out, _ = cli(["tpu", "logs", *COMMON, "--name", "clipa-x-a1"], capsys)
    assert code == 0
    assert out == "stage 0 step 1/10\ntoken [redacted]\n"


def test_every_command_has_a_dry_run_that_calls_nothing(tmp_path, capsys, monkeypatch):
    import subprocess

    import trainer.tpu.api as api

    def refuse(*a, **k):
        raise AssertionError("--dry-run must not call anything")

    monkeypatch.setattr(api, "connect", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    spec = write_spec(tmp_path / "spec.json")
    for argv, rpc in [
        (["tpu", "up", *COMMON, "--name", "x-1", "--dry-run"], "CreateQueuedResource"),
        (["tpu", "status", *COMMON, "--dry-run"], "ListQueuedResources"),
        (["tpu", "status", *COMMON, "--name", "x-1", "--dry-run"], "GetNode"),
        (["tpu", "down", *COMMON, "--name", "x-1", "--dry-run"], "DeleteQueuedResource"),
        (["tpu", "logs", *COMMON, "--name", "x-1", "--dry-run"], None),
        (["tpu", "run", str(spec), "--run-dir", str(tmp_path / "r"), *COMMON, "--bucket", "gs://my-bucket",
          "--dry-run"], "CreateQueuedResource"),
    ]:
        code, out, err = cli(argv, capsys)
        assert code == 0, err
        doc = json.loads(out)
        if rpc is None:
            assert doc["worker_commands"]["logs"][0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
        else:
            assert any(r["rpc"].endswith("/" + rpc) for r in doc["api_requests"])
    assert not (tmp_path / "r").exists()  # nothing written either


def test_launch_option_defaults_are_the_tpu_options_defaults():
    from trainer.tpu import cli
    from trainer.tpu.options import TpuOptions

    fields = TpuOptions.model_fields
    assert cli.DEFAULT_SLICE == fields["slice"].default
    assert cli.DEFAULT_PROVISION_TIMEOUT_S == fields["provision_timeout_s"].default
    assert cli.DEFAULT_MAX_ATTEMPTS == fields["max_attempts"].default
    assert cli.DEFAULT_POLL_INTERVAL_S == fields["poll_max_s"].default
