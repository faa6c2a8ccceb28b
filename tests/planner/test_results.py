"""planner.results: published rows plus executed runs (read by planner.runs.read_runs, the one reader of run
records); a bad run file is left out and reported by name on stderr, never silently."""

from __future__ import annotations

import json

import pytest

from planner.results import RESULT_COLUMNS, load_finetune_masking, load_published, load_results, load_runs
from planner.runs import RunResult, utcnow, write_result
from planner.schedule import parse_schedule
from planner.spec import spec_from_dict


def _runs_dir(home):
    d = home / "results" / "runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_published_rows_load():
    df = load_results(include_runs=False)
    assert list(df.columns) == RESULT_COLUMNS
    assert len(df) == len(load_published()) >= 50
    assert set(df["origin"]) == {"published"}
    assert df["top1"].between(0, 100).all()
    assert len(load_finetune_masking()) == 28


def test_minimal_and_runresult_records_are_read(isolated_home):
    d = _runs_dir(isolated_home)
    (d / "a.json").write_text(json.dumps({
        "source": "run", "model": "B/16", "dataset": "laion-400m", "schedule": "1B@112/16 + 100M@224/32",
        "top1": 55.5,
    }))
    stages = parse_schedule("2B@84/8 + 128M@224/32", "L/14")
    spec = spec_from_dict({"model": "L/14", "dataset": "datacomp-1b",
                           "stages": [s.model_dump(mode="json") for s in stages]})
    now = utcnow()
    write_result(RunResult(run_id=spec.run_id, spec=spec, eval_task="imagenet-1k", started_at=now, finished_at=now,
                           wall_seconds=1, device_hours=0.1, cost_usd=0.2, samples_per_second=1, mfu=0.1,
                           top1=70.25), d)
    (d / "b.json").write_text(d.joinpath(f"{spec.run_id}.json").read_text())
    d.joinpath(f"{spec.run_id}.json").unlink()
    df = load_results()
    runs = df[df["origin"] == "run"]
    assert len(runs) == 2 and len(df) == len(load_published()) + 2
    a, b = runs.iloc[0], runs.iloc[1]
    assert (a.model, a.dataset, a.top1, a.family) == ("B/16", "laion-400m", 55.5, "run")
    assert a.schedule == "1B@112/16 + 100M@224/32"
    assert (b.model, b.dataset, b.top1) == ("L/14", "datacomp-1b", 70.25)
    assert parse_schedule(b.schedule, "L/14") == stages
    assert len(load_results(include_runs=False)) == len(load_published())


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not a readable JSON"),
        (json.dumps([1, 2]), "JSON object"),
        (json.dumps({"source": "run", "model": "B/16", "dataset": "laion-400m", "schedule": "1B@112/16"}), "top1"),
        (json.dumps({"source": "run", "model": "Q/16", "dataset": "laion-400m", "schedule": "1B@112/16",
                     "top1": 50}), "model"),
        (json.dumps({"source": "run", "model": "B/16", "dataset": "nowhere", "schedule": "1B@112/16",
                     "top1": 50}), "dataset"),
        (json.dumps({"source": "run", "model": "B/16", "dataset": "laion-400m", "schedule": "1B@113/16",
                     "top1": 50}), "multiple of the patch"),
        (json.dumps({"source": "run", "model": "B/16", "dataset": "laion-400m", "schedule": "1B@112/16",
                     "top1": 150}), "top1"),
        (json.dumps({"model": "B/16", "dataset": "laion-400m", "schedule": "1B@112/16", "top1": 50}), "source"),
        (json.dumps({"spec": {"model": "B/16"}, "top1": 50}), "schema version"),  # a closed-loop record: whole
    ],
)
def test_bad_run_file_is_reported_by_name(isolated_home, content, fragment, capsys):
    d = _runs_dir(isolated_home)
    (d / "good.json").write_text(json.dumps({"source": "run", "model": "B/16", "dataset": "laion-400m",
                                             "schedule": "1B@112/16", "top1": 50}))
    (d / "broken-run.json").write_text(content)
    runs = load_runs()
    assert list(runs["citation"]) == ["results/runs/good.json"]  # the bad file never hides a good neighbour
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken-run.json" in err[0] and fragment in err[0], err


def test_compare_shows_the_flags_the_prediction_was_made_with(isolated_home, capsys):
    """A run recorded with a thin-data prediction (issue 19: 'no g/14 on datacomp-1b') keeps that flag; a record
    written before predictions had flags reads with none."""
    from planner.cli import run_app
    from planner.runs import RecordedPrediction

    d = _runs_dir(isolated_home)
    stages = parse_schedule("2B@84/8 + 128M@224/32", "g/14")
    spec = spec_from_dict({"model": "g/14", "dataset": "datacomp-1b",
                           "stages": [s.model_dump(mode="json") for s in stages]})
    now = utcnow()
    pred = RecordedPrediction(predicted_top1=71.0, low=68.0, high=74.0, extrapolated=False, fit_version="f1",
                              flags=["no g/14 on datacomp-1b (no g run anywhere)"])
    write_result(RunResult(run_id=spec.run_id, spec=spec, eval_task="imagenet-1k", started_at=now, finished_at=now,
                           wall_seconds=1, device_hours=0.1, cost_usd=0.2, samples_per_second=1, mfu=0.1, top1=70.0,
                           prediction=pred), d)
    assert run_app(["compare", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert row["flags"] == ["no g/14 on datacomp-1b (no g run anywhere)"] and row["inside_interval"]
    assert run_app(["compare"]) == 0
    assert "no g/14 on" in capsys.readouterr().out
    body = json.loads(d.joinpath(f"{spec.run_id}.json").read_text())
    del body["prediction"]["flags"]  # as an earlier version wrote it
    d.joinpath(f"{spec.run_id}.json").write_text(json.dumps(body))
    assert run_app(["compare", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["flags"] == []
