"""The closed loop end to end on a tiny generated dataset: pilot -> refit -> plan -> run -> compare, and a plan
killed mid-run (SIGKILL) that finishes on the second try without redoing or duplicating anything.

Every command is the real ``clipa`` console script in a subprocess with its own CLIPA_HOME; mu/8 at 16 px only, so
that the whole loop stays around two minutes on two shared CPU cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIPA = [sys.executable, "-c", "from trainer.cli import main; main()"]


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CLIPA_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def clipa(home: Path, *args: str, timeout: float = 600) -> dict:
    proc = subprocess.run([*CLIPA, *args], cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"clipa {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    home = tmp_path_factory.mktemp("datahome")
    clipa(home, "data", "synth", "--out", str(out), "--samples", "3000", "--resolution", "16", "--eval-samples", "300",
          "--json")
    return out


@pytest.mark.slow
def test_pilot_plan_run_compare(tiny_data, isolated_home, tmp_path):
    home = isolated_home
    pilot = clipa(home, "pilot", "--budget", "0.0007", "--dataset", "local:tiny", "--data", str(tiny_data),
                  "--models", "mu/8", "--runs", "3", "--min-samples", "1000", "--run-dir", str(tmp_path / "runs"), "--json")
    assert len(pilot["runs"]) == 3 and pilot["study"] is not None
    study = pilot["study"]
    assert study["study"] == "zeroshot:local:tiny" and study["metrics"]["rows"] == 3
    assert all(r["device_hours"] > 0 and 0 <= r["top1"] <= 100 for r in pilot["runs"])
    # a rerun of the same pilot finds everything done: no new records
    again = clipa(home, "pilot", "--budget", "0.0007", "--dataset", "local:tiny", "--data", str(tiny_data),
                  "--models", "mu/8", "--runs", "3", "--min-samples", "1000", "--run-dir", str(tmp_path / "runs"), "--json")
    assert [r["run_id"] for r in again["runs"]] == [r["run_id"] for r in pilot["runs"]]
    assert len(list((home / "results" / "runs").glob("*.json"))) == 3

    plan = clipa(home, "plan", "--budget", "0.0005", "--dataset", "local:tiny", "--data", str(tiny_data),
                 "--hardware", "cpu-2core", "--json")
    chosen = plan["chosen"]
    assert chosen["cost_usd"] <= 0.0005 and "+" in plan["fit_version"]  # the study's fit made the prediction
    lo, hi = chosen["interval"]
    assert lo <= chosen["predicted_top1"] <= hi
    spec = json.loads(json.dumps(__import__("yaml").safe_load(Path(chosen["spec"]).read_text())))
    assert spec["data"] == str(tiny_data / "train") and spec["eval_data"] == str(tiny_data / "eval")
    assert spec["tokenizer"] == str(tiny_data / "tokenizer.json")

    ran = clipa(home, "run", plan["plan_dir"], "--run-dir", str(tmp_path / "runs"), "--no-progress", "--json")
    (res,) = ran["results"]
    assert res["prediction"]["fit_version"] == plan["fit_version"]
    assert res["eval_task"] == "zeroshot:local:tiny"
    # the generated classes are "colour shape": the record scores each word too, and a right class needs both
    extra = json.loads((home / "results" / "runs" / f"{res['run_id']}.json").read_text())["extra"]
    assert res["top1"] <= min(extra["top1_colour"], extra["top1_shape"]) <= 100
    cmp = clipa(home, "compare", "--json")
    row = next(r for r in cmp["runs"] if r["run_id"] == res["run_id"])
    assert row["predicted_top1"] == pytest.approx(chosen["predicted_top1"])
    assert row["error"] == pytest.approx(res["top1"] - chosen["predicted_top1"])


@pytest.mark.slow
def test_killed_plan_finishes_without_redoing_or_duplicating(tiny_data, isolated_home, tmp_path):
    home = isolated_home
    design = clipa(home, "pilot", "--budget", "0.0008", "--dataset", "local:tiny", "--data", str(tiny_data),
                   "--models", "mu/8", "--runs", "3", "--min-samples", "1000", "--design-only", "--out", str(tmp_path / "plan"), "--json")
    ids = [r["run_id"] for r in design["runs"]]
    runs = home / "results" / "runs"
    proc = subprocess.Popen([*CLIPA, "run", str(tmp_path / "plan"), "--run-dir", str(tmp_path / "runs"),
                             "--no-progress"], cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # kill it while the second run trains: after the first record, once the second run has a folder
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline and proc.poll() is None:
            if (runs / f"{ids[0]}.json").exists() and (tmp_path / "runs" / ids[1]).exists():
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the plan finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    first = (runs / f"{ids[0]}.json").read_bytes()
    assert not (runs / f"{ids[2]}.json").exists()

    out = clipa(home, "run", str(tmp_path / "plan"), "--run-dir", str(tmp_path / "runs"), "--no-progress", "--json")
    assert [r["run_id"] for r in out["results"]] == ids
    assert (runs / f"{ids[0]}.json").read_bytes() == first  # the finished run was not redone
    assert sorted(p.stem for p in runs.glob("*.json")) == sorted(ids)  # one record per run
    cmp = clipa(home, "compare", "--json")
    assert sorted(r["run_id"] for r in cmp["runs"]) == sorted(ids)
