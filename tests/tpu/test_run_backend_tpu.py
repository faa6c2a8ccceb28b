"""``clipa run PLAN --backend tpu`` end to end against the fake Cloud TPU API with a local worker running the real
``clipa train``: a one-run plan whose slice is preempted once, requeued and resumed, then evaluated on the worker
(eval.json) and recorded exactly once, with the cost of both slices; a second invocation records nothing new; a run
whose launch fails records nothing and exits 2 with one line, and the launch that completes it later pays for the
failed one too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tpu_helpers import PROJECT, ZONE, Watcher

from planner.cli import run_app
from planner.hardware import get_hardware
from planner.spec import load_spec, spec_from_dict
from trainer.cli import build_app
from fake_server import FakeConfig

PREDICTION = {"predicted_top1": 5.0, "low": 1.0, "high": 9.0, "extrapolated": True, "fit_version": "test"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from trainer.data.synth import write_synth

    out = tmp_path_factory.mktemp("data") / "tiny"
    write_synth(out, samples=96, eval_samples=32, resolution=16, shard_size=48, vocab_size=300)
    return out


def _plan(tmp_path: Path, data: Path) -> tuple[Path, str]:
    """A plan folder with one tiny spec (mu/8 at 16 px, 12 steps, a checkpoint every 2), as `clipa plan` writes it."""
    spec = {"name": "tpu-plan-run", "model": "mu/8", "dataset": "local:tiny", "hardware": "tpu-v5e",
            "pricing": "spot", "data": str(data / "train"), "eval_data": str(data / "eval"),
            "tokenizer": str(data / "tokenizer.json"),
            "stages": [{"samples": 96, "batch_size": 8, "image_res": 16, "text_len": 8, "lr_base": 1e-3,
                        "init": "scratch"}],
            "train": {"checkpoint_every_steps": 2, "log_every_steps": 1}}
    run_id = spec_from_dict(spec).run_id
    plan = tmp_path / "plan"
    (plan / "runs").mkdir(parents=True)
    (plan / "runs" / f"{run_id}.json").write_text(json.dumps(spec))
    (plan / "plan.json").write_text(json.dumps({"plan_id": "plan-tpu-test", "runs": [
        {"spec": str(plan / "runs" / f"{run_id}.json"), "prediction": PREDICTION}]}))
    assert load_spec(plan / "runs" / f"{run_id}.json").run_id == run_id
    return plan, run_id


def _argv(tmp_path: Path, plan: Path, *extra: str) -> list[str]:
    return ["run", str(plan), "--backend", "tpu", "--project", PROJECT, "--zone", ZONE, "--bucket",
            f"file://{tmp_path}/bucket", "--slice", "8", "--poll-interval", "0.05",
            "--run-dir", str(tmp_path / "runs"), "--no-progress", *extra]


def _cli(argv, capsys):
    build_app()
    code = run_app(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _steps(path: Path) -> list[int]:
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.mark.slow  # two trainer start-ups (preempted, resumed) and a zero-shot eval: about a minute on two cores
def test_plan_runs_on_a_preempted_slice_and_is_recorded_once(tmp_path, tiny_data, fake, local_workers, isolated_home,
                                                             capsys):
    plan, run_id = _plan(tmp_path, tiny_data)
    remote = tmp_path / "bucket" / f"clipa-{run_id}"
    watcher = Watcher(lambda: any(s >= 4 for s in _steps(remote / "checkpoints")), lambda: fake.fake.preempt())
    try:
        code, out, err = _cli(_argv(tmp_path, plan, "--json"), capsys)
    finally:
        watcher.close()
    run_dir = tmp_path / "runs" / run_id
    logs = sorted((run_dir / "tpu" / "logs").rglob("worker-0.log"))
    assert code == 0, (err[-3000:], [p.read_text()[-3000:] for p in logs])
    assert watcher.fired.is_set()
    records = sorted((isolated_home / "results" / "runs").glob("*.json"))
    assert [p.stem for p in records] == [run_id]
    (res,) = json.loads(out)["results"]
    assert res == json.loads(records[0].read_text())
    outcome = json.loads((run_dir / "tpu" / "outcome.json").read_text())
    assert [a["end"] for a in outcome["attempts"]] == ["preempted", "completed"]
    # Cost: both slices, billed from their chip-hours at the catalog's spot price; hardware: the slice's entry.
    assert res["backend"] == "tpu" and res["plan_id"] == "plan-tpu-test"
    assert res["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in outcome["attempts"]))
    assert all(a["cost_usd"] > 0 for a in outcome["attempts"])
    assert res["device_hours"] == pytest.approx(sum(a["chip_hours"] for a in outcome["attempts"]))
    spot = get_hardware("tpu-v5e").price("spot").usd_per_device_hour
    assert res["cost_usd"] == pytest.approx(res["device_hours"] * spot) and outcome["usd_per_chip_hour"] == spot
    assert res["extra"]["hardware"] == "tpu-v5e" and res["extra"]["accelerator_type"] == "v5litepod-8"
    assert res["extra"]["tpu_attempts"] == 2 and res["extra"]["tpu_preemptions"] == 1
    # Accuracy: the eval.json the trainer wrote on the worker, fetched with the run's other top-level files.
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["run_id"] == run_id and (remote / "eval.json").exists()
    assert res["top1"] == pytest.approx(100 * ev["top1"]) and res["extra"]["eval_n"] == 32
    assert res["samples_per_second"] > 0 and res["prediction"] == {**PREDICTION, "flags": []}  # recorded as planned
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [e["kind"] for e in events if e.get("kind") == "resume"] == ["resume"]
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}

    # Again: the run is recorded, so nothing is launched and the record is untouched.
    before = records[0].read_bytes()
    outcome_before = (run_dir / "tpu" / "outcome.json").read_bytes()
    code, out, err = _cli(_argv(tmp_path, plan), capsys)
    assert code == 0, err
    assert out.startswith(f"skipped: run {run_id} ")
    assert records[0].read_bytes() == before and (run_dir / "tpu" / "outcome.json").read_bytes() == outcome_before
    assert sorted((isolated_home / "results" / "runs").glob("*.json")) == records
    assert "requesting" not in err


@pytest.mark.parametrize("fake_config", [FakeConfig(quota_errors=10**6)])
def test_a_failed_launch_records_nothing_and_says_why(tmp_path, tiny_data, fake, local_workers, isolated_home,
                                                      capsys):
    plan, run_id = _plan(tmp_path, tiny_data)
    code, out, err = _cli(_argv(tmp_path, plan, "--provision-timeout", "0.2"), capsys)
    assert code == 2 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith(f"error: tpu: run {run_id}: could not create clipa-{run_id}-a1 within 0.2 s")
    assert "nothing recorded" in last
    assert not list((isolated_home / "results" / "runs").glob("*.json"))
    outcome = json.loads((tmp_path / "runs" / run_id / "tpu" / "outcome.json").read_text())
    assert outcome["status"] == "failed"
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}


def test_dry_run_shows_each_launch_and_creates_nothing(tmp_path, tiny_data, capsys, monkeypatch):
    import subprocess

    import trainer.tpu.api as api

    def refuse(*a, **k):
        raise AssertionError("--dry-run must not call anything")

    monkeypatch.setattr(api, "connect", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    plan, run_id = _plan(tmp_path, tiny_data)
    code, out, err = _cli(["run", str(plan), "--backend", "tpu", "--project", PROJECT, "--zone", ZONE, "--bucket",
                           "gs://my-bucket/runs", "--run-dir", str(tmp_path / "runs"), "--dry-run"], capsys)
    # Local data paths cannot be read on a real slice: refused before anything is bought.
    assert code == 2 and err.startswith("error: data: ") and err.count("\n") == 1
    spec = json.loads((plan / "runs" / f"{run_id}.json").read_text())
    spec.update(data="gs://my-bucket/tiny/train", eval_data="gs://my-bucket/tiny/eval")
    (plan / "runs" / f"{run_id}.json").write_text(json.dumps(spec))
    run_id = load_spec(plan / "runs" / f"{run_id}.json").run_id
    code, out, err = _cli(["run", str(plan), "--backend", "tpu", "--project", PROJECT, "--zone", ZONE, "--bucket",
                           "gs://my-bucket/runs", "--run-dir", str(tmp_path / "runs"), "--dry-run"], capsys)
    assert code == 0, err
    (item,) = json.loads(out)["runs"]
    assert item["run_id"] == run_id and item["launch"]["remote_run_dir"] == f"gs://my-bucket/runs/clipa-{run_id}"
    assert any("gcsfuse" in c[-1] for c in item["launch"]["worker_commands"]["setup"])
    assert not (tmp_path / "runs").exists()
    # A multi-host slice: the trainer starts on every host (`clipa train` evaluates multi-process runs on process 0).
    code, out, err = _cli(["run", str(plan), "--backend", "tpu", "--project", PROJECT, "--zone", ZONE, "--bucket",
                           "gs://my-bucket/runs", "--run-dir", str(tmp_path / "runs"), "--slice", "16", "--dry-run"],
                          capsys)
    assert code == 0, err
    (item,) = json.loads(out)["runs"]
    assert (item["launch"]["accelerator_type"], item["launch"]["hosts"]) == ("v5litepod-16", 2)
    assert [c[8] for c in item["launch"]["worker_commands"]["start"]] == ["--worker=0", "--worker=1"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # one trainer start-up killed at once, one full run with its eval: about 20 s on two cores
@pytest.mark.parametrize("fake_config", [FakeConfig(preempt_after_node_polls=[2])])
def test_a_relaunch_after_a_failed_launch_pays_for_both(tmp_path, tiny_data, fake, local_workers, isolated_home,
                                                        capsys):
    """The first invocation's only slice is preempted (--max-attempts 1): it fails and records nothing, but that slice
    was bought; the second invocation completes the run and its record includes the first launch's cost."""
    plan, run_id = _plan(tmp_path, tiny_data)
    code, out, err = _cli(_argv(tmp_path, plan, "--max-attempts", "1"), capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith(f"error: tpu: run {run_id}: gave up after 1 slices (1 preemptions)")
    assert not list((isolated_home / "results" / "runs").glob("*.json"))
    tpu_dir = tmp_path / "runs" / run_id / "tpu"
    first = json.loads((tpu_dir / "outcome.json").read_text())
    assert first["status"] == "failed" and first["cost_usd"] > 0

    code, out, err = _cli(_argv(tmp_path, plan, "--json"), capsys)
    assert code == 0, err[-3000:]
    (res,) = json.loads(out)["results"]
    assert json.loads((tpu_dir / "outcome-1.json").read_text()) == first  # kept, not overwritten
    second = json.loads((tpu_dir / "outcome.json").read_text())
    assert second["status"] == "succeeded" and [a["end"] for a in second["attempts"]] == ["completed"]
    assert res["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    assert res["device_hours"] == pytest.approx(first["chip_hours"] + second["chip_hours"])
    assert (res["extra"]["tpu_launches"], res["extra"]["tpu_attempts"], res["extra"]["tpu_preemptions"]) == (2, 2, 1)
    assert [p.stem for p in (isolated_home / "results" / "runs").glob("*.json")] == [run_id]
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}


@pytest.mark.slow  # two local workers (one JAX job of 2 processes) train and evaluate: about a minute on two cores
def test_a_multi_host_slice_is_trained_evaluated_and_recorded(tmp_path, tiny_data, fake, local_workers, isolated_home,
                                                              capsys):
    """A v5litepod-16 is 2 hosts: the launcher starts `clipa train` on both (2 processes of one JAX job, local
    workers here); process 0 evaluates at the end and writes eval.json, which is fetched and recorded."""
    plan, run_id = _plan(tmp_path, tiny_data)
    argv = _argv(tmp_path, plan, "--json")
    argv[argv.index("--slice") + 1] = "16"
    code, out, err = _cli(argv, capsys)
    run_dir = tmp_path / "runs" / run_id
    logs = sorted((run_dir / "tpu" / "logs").rglob("worker-*.log"))
    assert code == 0, (err[-3000:], [p.read_text()[-3000:] for p in logs])
    assert [p.name for p in logs] == ["worker-0.log", "worker-1.log"]
    (res,) = json.loads(out)["results"]
    outcome = json.loads((run_dir / "tpu" / "outcome.json").read_text())
    (attempt,) = outcome["attempts"]
    assert attempt["end"] == "completed" and attempt["hosts"] == 2 and attempt["worker_exit_codes"] == [0, 0]
    assert res["extra"]["accelerator_type"] == "v5litepod-16" and res["extra"]["chips"] == 16
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["run_id"] == run_id and res["extra"]["eval_n"] == 32 and res["top1"] == pytest.approx(100 * ev["top1"])
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 12
    assert fake.fake.allocated() == {"queued_resources": [], "nodes": []}
