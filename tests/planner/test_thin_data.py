"""The thin-data term of the ImageNet study's interval (issue 19): wider where the data are thin, flagged, and the
cautious objective ranks by the interval's low end. The widths' origin in the backtest is tested in
``test_accuracy_backtest.py`` (it shares the backtest run)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from planner.accuracy import THIN_LEVELS, load_or_fit, predict_frame, predict_stages, thin_data, thin_level
from planner.cli import run_app
from planner.features import features_frame, schedule_features
from planner.plan import make_plan
from planner.schedule import parse_schedule
from trainer.cli import build_app

G14 = ("g/14", "datacomp-1b", "10B@56/8 + 512M@224/32~0.5 + 64M@336/32~0.4")
L14 = ("L/14", "datacomp-1b", "12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4")  # four L runs on DataComp-1B
H14 = ("H/14", "datacomp-1b", "12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4")  # H runs on LAION only


@pytest.fixture(scope="module")
def fit():
    return load_or_fit(include_runs=False)  # the shipped fit: thin-data widths included


def _pred(fit, model, dataset, schedule):
    return predict_stages(fit, model, dataset, parse_schedule(schedule, model))


def test_levels_follow_the_runs_of_the_size_on_the_dataset(fit):
    cells = fit.thin["cells"]
    assert thin_level(cells, "L/14", "datacomp-1b") == 0  # many
    assert thin_level(cells, "H/14", "laion-400m") == 1  # one H/14 run on LAION-400M
    assert thin_level(cells, "H/14", "datacomp-1b") == 2  # H only elsewhere
    assert thin_level(cells, "g/14", "datacomp-1b") == 3  # no g at all
    assert thin_level(cells, "L/16", "laion-2b") == 0  # the size is the tower: L/14 runs count for L/16
    assert thin_level(cells, "g/14", "local:new") == 0  # a dataset without results is the dataset term's case
    widths = fit.thin["widths"]
    assert len(widths) == len(THIN_LEVELS) and widths == sorted(widths)


def test_no_run_cells_are_widened_more_than_cells_with_many_runs(fit):
    feats = features_frame([schedule_features(*G14), schedule_features(*L14)])
    level, var, _ = thin_data(fit, feats)
    assert list(level) == [3, 0] and var[0] > var[1] >= 0
    # against the same fit without the term: the added half-width is larger for g/14 than for L/14
    bare = replace(fit, thin={**fit.thin, "widths": [0.0] * len(THIN_LEVELS)})
    with_term, without = predict_frame(fit, feats), predict_frame(bare, feats)
    added = (with_term["high"] - with_term["low"]) - (without["high"] - without["low"])
    assert added.iloc[0] > added.iloc[1] >= 0
    assert (with_term["predicted_top1"] == without["predicted_top1"]).all()  # the mean does not move


def test_the_flag_names_the_thin_cell(fit):
    g = _pred(fit, *G14)
    assert any(f.startswith("no g/14 on datacomp-1b") for f in g.flags)
    assert g.extrapolated is False  # the range flag is unchanged: g/14 sits between H/14 and bigG/14
    assert _pred(fit, *L14).flags == ()
    assert _pred(fit, *H14).flags == ("no H/14 on datacomp-1b",)


def _run(argv, capsys):
    build_app()
    code = run_app([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_json_and_text_show_the_flags_and_predict_too(isolated_home, tmp_path, capsys):
    code, out, _ = _run(["plan", "--budget", "10000", "--out", tmp_path / "m", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["chosen"]["model"] == "g/14" and d["chosen"]["flags"][0].startswith("no g/14 on datacomp-1b")
    assert all("flags" in r for r in d["runners_up"])
    # the prediction recorded with each run keeps them (clipa run records it; clipa compare shows it)
    from planner.plan import load_plan
    from planner.runs import RecordedPrediction
    from trainer.closed_loop import predict_now

    (spec, pred), = load_plan(tmp_path / "m")[1]
    assert RecordedPrediction(**pred).flags == d["chosen"]["flags"] == predict_now(spec).flags
    code, out, _ = _run(["plan", "--budget", "10000", "--out", tmp_path / "t"], capsys)
    assert code == 0 and "no g/14 on" in out
    code, out, _ = _run(["predict", "--model", G14[0], "--dataset", G14[1], "--schedule", G14[2], "--json"], capsys)
    assert code == 0 and json.loads(out)["flags"][0].startswith("no g/14 on datacomp-1b")


def test_p10_objective_picks_the_highest_low_end(fit, tmp_path):
    seen = {}

    def predictor(f):
        seen["pred"] = predict_frame(fit, f)
        return seen["pred"]

    body = make_plan(10000.0, predictor, fit.version, objective="p10", out=tmp_path / "p10").body
    lows = seen["pred"]["low"]
    assert body["chosen"]["interval"][0] == pytest.approx(lows.max(), abs=1e-12)
    mean = make_plan(10000.0, lambda f: predict_frame(fit, f), fit.version, out=tmp_path / "mean").body
    assert mean["chosen"]["predicted_top1"] >= body["chosen"]["predicted_top1"]
    assert mean["chosen"]["interval"][0] <= body["chosen"]["interval"][0]


def test_range_widening_takes_the_worst_size_backtest_and_the_pooled_others():
    import numpy as np
    import pandas as pd

    from planner.accuracy import learn_interval_terms, learn_range_widening

    def preds(source, n, error, size, other, level=3):
        return pd.DataFrame({"source": source, "error": error, "z": 1.0, "sd": 1.0, "excess_size": size,
                             "excess": size + other, "thin_level": level, "learn": False}, index=range(n))

    # a size left out whose errors need 1 + 3 x 1.0 times its inner interval; a size cut that needs nothing; the
    # other axes: errors twice their interval at 2 log units out (0.5 per log unit)
    df = pd.concat([preds("size: B", 10, 4.0, 1.0, 0.0), preds("cut", 40, 0.5, 1.0, 0.0),
                    preds("samples", 10, 2.0, 0.0, 2.0)], ignore_index=True)
    w = learn_range_widening(df, [0.0] * 4)
    assert w["model size"] == np.float64(3.0) and w["other"] == 0.5  # pooled, the 40 easy ones would hide B
    # a prediction close to the range says nothing about the growth per log unit
    assert learn_range_widening(preds("near", 5, 9.0, 0.05, 0.05), [0.0] * 4) == {"other": 0.0, "model size": 0.0}
    widths, widen = learn_interval_terms(df)
    assert widths == [0.0] * 4 and widen == w  # no prediction to learn widths from: the widening alone


def test_a_fresh_home_plans_from_the_shipped_fit_without_refitting(isolated_home):
    # results/fits/ ships the fit of the current law code and published rows, thin-data widths included: a fresh
    # clone's `clipa plan` answers in about a second. Any edit of the law's files (planner.law, features, recipe,
    # accuracy) is a new code hash: ship the new fit file (same parameters, new version) with the edit, or every
    # fresh machine refits and learns the widths again, and the README's plan id no longer matches.
    from planner import paths
    from planner.accuracy import code_hash

    fit = load_or_fit(include_runs=False)
    assert fit.code_hash == code_hash()
    assert not (paths.fits_dir().exists() and any(paths.fits_dir().glob("*.json"))), \
        f"no fit in results/fits/ matches code {code_hash()}: ship the fit file written to {paths.fits_dir()}"


def test_the_intervals_report_names_the_shipped_fit(fit):
    # docs/intervals.md is generated from the shipped fit; a new law or new published rows make a new fit, and the
    # report's coverage figures and $10k plans go stale with the old one. Regenerate it with
    # `.venv/bin/python benchmarks/intervals_report.py` when this fails.
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "intervals.md").read_text()
    assert f"the shipped fit `{fit.version}`" in doc
