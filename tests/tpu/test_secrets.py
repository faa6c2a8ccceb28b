"""No credential or token of the launching machine appears in any output: logs, printed requests, outcome files,
the spec sent to workers, the workers' environment. Fake secrets are planted in the environment (including a
service-account key file named by GOOGLE_APPLICATION_CREDENTIALS) and every output is searched for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tpu_helpers import PROJECT, WORKER_SCRIPT, ZONE, fast_options, write_spec

from planner.cli import run_app
from trainer.cli import build_app
from trainer.tpu.launcher import run_on_tpu
from trainer.tpu.redact import MASK, LineRedactor, Redactor, worker_base_env
from trainer.tpu.workers import LocalExec

KEY_MATERIAL = "FAKEPRIVATEKEYMATERIAL0123456789"
SECRETS = {
    "CLOUDSDK_AUTH_ACCESS_TOKEN": "ya29.fake-access-token-abcdef",
    "GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.another-fake-token-zzz",
    "CLIPA_TEST_API_KEY": "AIza" + "F" * 35,
    "MY_SECRET": "s3cr3t-value-xyz",
    "HF_TOKEN": "hf_fakeTokenValue1234",
}
FILE_SECRETS = [KEY_MATERIAL, "fakekeyid0123456789abcdef", "fake-client-secret-42424242"]
WORKER_PRINTED = ["ya29.FAKE-worker-token-123", "WORKERPRIVATEKEY"]


@pytest.fixture
def planted(tmp_path, monkeypatch):
    key = tmp_path / "creds" / "key.json"
    key.parent.mkdir()
    key.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": FILE_SECRETS[1],
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n",
        "client_email": "trainer@clipa-test-1.iam.gserviceaccount.com", "client_secret": FILE_SECRETS[2],
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return list(SECRETS.values()) + FILE_SECRETS + WORKER_PRINTED


def _scan(paths: list[Path], texts: list[str], secrets: list[str]) -> None:
    blobs = list(texts)
    for root in paths:
        for f in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if f.suffix != ".gz":
                blobs.append(f.read_text(encoding="utf-8", errors="replace"))
    assert blobs
    for secret in secrets:
        for blob in blobs:
            assert secret not in blob


def test_no_secret_in_any_output_of_a_run(tmp_path, fake, tpu_api, planted, capsys):
    spec = write_spec(tmp_path / "spec.json")
    remote = tmp_path / "bucket" / "clipa-tpu-test"
    remote.mkdir(parents=True)
    (remote / "print-secrets").write_text("")
    lines: list[str] = []
    outcome = run_on_tpu(spec, tmp_path / "run", fast_options(tmp_path / "bucket", slice=16), api=tpu_api,
                         workers=LocalExec(tmp_path / "vms"), worker_entry=[str(WORKER_SCRIPT)], echo=lines.append)
    assert outcome.status == "succeeded", outcome.error
    # The worker really printed its environment and the token-shaped strings; the logs hold the masked lines.
    log = (tmp_path / "run" / "tpu" / "logs" / "clipa-tpu-test-a1" / "worker-0.log").read_text()
    env_line = next(line for line in log.splitlines() if line.startswith("environment: "))
    worker_env = json.loads(env_line.removeprefix("environment: "))
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in worker_env
    assert not set(SECRETS) & set(worker_env)
    assert f"token: {MASK}" in log and MASK in log
    # Worker 1 runs too, and keeps its own log on its "VM".
    assert (tmp_path / "vms" / "clipa-tpu-test-a1" / "worker-1" / "clipa-run" / "train.log").exists()
    out = capsys.readouterr()
    _scan([tmp_path / "run", tmp_path / "bucket", tmp_path / "vms"],
          lines + [out.out, out.err, outcome.model_dump_json()], planted)


def test_no_secret_in_dry_run_or_status_output(tmp_path, fake, planted, capsys):
    spec = write_spec(tmp_path / "spec.json")
    build_app()
    common = ["--project", PROJECT, "--zone", ZONE]
    assert run_app(["tpu", "run", str(spec), "--run-dir", str(tmp_path / "run"), *common,
                    "--bucket", "gs://my-bucket/runs", "--dry-run"]) == 0
    assert run_app(["tpu", "up", *common, "--name", "clipa-s", "--slice", "8",
                    "--provision-timeout", "30"]) == 0
    assert run_app(["tpu", "status", *common, "--json"]) == 0
    assert run_app(["tpu", "down", *common, "--name", "clipa-s"]) == 0
    out = capsys.readouterr()
    assert "clipa-s" in out.out and "v5litepod-8" in out.out
    _scan([], [out.out, out.err], planted)


def test_redactor_masks_values_and_token_shapes(planted):
    r = Redactor()
    text = " ".join(planted) + ' {"private_key": "abc", "access_token": "xyz"} Authorization: Bearer qqq'
    masked = r.redact(text)
    for secret in planted:
        if secret != "WORKERPRIVATEKEY":  # a bare unknown string: masked only inside its PEM block (below)
            assert secret not in masked
    assert '"private_key": "[redacted]"' in masked and "Bearer [redacted]" in masked
    assert r.redact("stage 1 step 3/10") == "stage 1 step 3/10"  # ordinary lines are untouched
    lines = LineRedactor(r)
    block = ["ok", "x -----BEGIN RSA PRIVATE KEY-----", "WORKERPRIVATEKEY", "-----END RSA PRIVATE KEY----- y", "ok"]
    assert [lines(b) for b in block] == ["ok", f"x {MASK}", MASK, f"{MASK} y", "ok"]


def test_workers_inherit_only_allow_listed_variables(planted, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    env = worker_base_env()
    assert env.get("PATH") == "/usr/bin"
    assert not set(env) & (set(SECRETS) | {"GOOGLE_APPLICATION_CREDENTIALS"})
