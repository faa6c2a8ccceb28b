"""Out-of-sample quality of the accuracy model on the published rows, and the model commands' CLI contract
(predict, backtest, curves, refit)."""

from __future__ import annotations

import json

import pytest

from planner import backtest as backtest_mod
from planner.cli import run_app
from trainer.cli import build_app

H14 = "12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4"


@pytest.fixture(scope="module")
def bt():
    return backtest_mod.run_backtest()


def run(argv, capsys):
    build_app()
    code = run_app(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_leave_one_out_accuracy_and_coverage(bt):
    fam = bt.summary["loo_by_family"]
    assert fam["clipa"]["n"] >= 25 and fam["openclip"]["n"] >= 25
    assert fam["clipa"]["mae"] <= 1.0
    assert fam["openclip"]["mae"] <= 1.0
    assert 0.70 <= bt.summary["loo_all"]["coverage80"] <= 0.90
    assert len(bt.loo) == fam["clipa"]["n"] + fam["openclip"]["n"]


def test_leave_one_group_out_covers_sizes_and_datasets(bt):
    groups = set(zip(bt.groups["kind"], bt.groups["group"]))
    assert {("model size", "H"), ("model size", "L"), ("dataset", "datacomp-1b"), ("dataset", "laion-2b")} <= groups
    # a dataset left out is predicted as a new dataset: flagged, and its interval says so
    dc = bt.group_rows[bt.group_rows["left_out"] == "dataset: datacomp-1b"]
    assert dc["extrapolated"].all() and dc["covered"].mean() >= 0.5


def test_backtest_cli_json_and_plot(bt, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(backtest_mod, "run_backtest", lambda: bt)
    png = tmp_path / "bt.png"
    code, out, _ = run(["backtest", "--json", "--plot", str(png)], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["summary"]["loo_by_family"]["clipa"]["mae"] <= 1.0
    assert len(d["worst_rows"]) == 10 and d["leave_one_group_out"]
    assert png.stat().st_size > 10_000
    code, out, _ = run(["backtest"], capsys)
    assert code == 0 and "Leave-one-out" in out and "Worst" in out


def test_predict_cli(capsys):
    code, out, _ = run(["predict", "--model", "H/14", "--dataset", "laion-2b", "--schedule", H14, "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    lo, hi = d["interval"]
    assert lo < d["predicted_top1"] < hi and lo < 79.1 < hi
    assert d["extrapolated"] is False and d["extrapolation"] == [] and d["fit_version"]
    code, out, _ = run(["predict", "--model", "S/16", "--dataset", "local:mine", "--schedule", "300M@112/16"], capsys)
    assert code == 0 and "extrapolated" in out and "local:mine" in out


def test_predict_cli_bad_input_is_one_line(capsys):
    code, _, err = run(["predict", "--model", "H/14", "--schedule", "12.8B@85/8"], capsys)
    assert code == 2 and err.count("\n") == 1 and "multiple of the patch" in err


def test_curves_and_refit_cli(capsys, tmp_path, isolated_home):
    png = tmp_path / "curves.png"
    code, out, _ = run(["curves", "--json", "--plot", str(png)], capsys)
    assert code == 0 and png.stat().st_size > 10_000
    d = json.loads(out)
    curves = {(c["model"], c["finetuned"]): c for c in d["curves"]}
    # before fine-tuning, fewer tokens cost less for larger models (the inverse scaling law)
    lost = [curves[(m, False)]["top1"][-3] - curves[(m, False)]["top1"][0] for m in ("B/16", "L/14", "H/14")]
    assert lost[0] > lost[1] > lost[2] > 0
    assert d["points"] and len(d["finetune_masking"]["points"]) == 28
    code, out, _ = run(["refit", "--json"], capsys)
    assert code == 0
    r = json.loads(out)
    assert r["version"] and r["metrics"]["rows"] >= 50 and "gamma" in r["param_sd"]
    assert (isolated_home / "results" / "fits" / f"{r['version']}.json").exists()


def test_thin_data_widths_are_the_backtests(bt, monkeypatch):
    # the widths the shipped fit carries are what the backtest learns here (recomputed; tolerances of another BLAS or
    # numpy: intervals within 0.1 points, predictions within 0.05), and they grow with thinness
    from dataclasses import replace

    from planner.accuracy import load_or_fit, predict_stages
    from planner.schedule import parse_schedule

    monkeypatch.delenv("CLIPA_HOME", raising=False)
    shipped = load_or_fit(include_runs=False)
    assert bt.widths == sorted(bt.widths) and bt.widths[3] > bt.widths[0] and bt.widths[2] > bt.widths[0]
    assert bt.widths == pytest.approx(shipped.thin["widths"], abs=0.1)
    assert bt.widen_per_log == pytest.approx(shipped.thin["widen_per_log"], rel=0.15, abs=0.05)
    here = replace(shipped, thin={**shipped.thin, "widths": bt.widths, "widen_per_log": bt.widen_per_log})
    for model, dataset, schedule in (("g/14", "datacomp-1b", H14), ("H/14", "datacomp-1b", H14),
                                     ("L/14", "datacomp-1b", H14), ("B/16", "laion-400m", "2B@112/16 + 128M@224/32")):
        a, b = (predict_stages(f, model, dataset, parse_schedule(schedule, model)) for f in (shipped, here))
        assert a.predicted_top1 == pytest.approx(b.predicted_top1, abs=0.05)
        assert (a.low, a.high) == pytest.approx((b.low, b.high), abs=0.1), model


def test_thin_data_raises_group_out_coverage_without_spoiling_leave_one_out(bt):
    s = bt.summary
    assert s["group_out_all"]["coverage80_without_thin"] < s["group_out_all"]["coverage80"]
    # pooled over every group left out, with the widths learned without the group itself (cross-validated)
    assert s["group_out_all"]["coverage80_cross"] >= 0.70
    assert 0.70 <= s["loo_all"]["coverage80"] <= 0.90
    # H left out: interpolated between L and bigG, no range flag; its interval used to miss almost every row
    h = bt.groups.set_index("group").loc["H"]
    assert h["coverage80_without_thin"] < 0.2 and h["coverage80"] >= 0.7


def test_the_range_widening_is_learned_from_the_size_extrapolations(bt):
    # B left out is predicted from L and larger (errors of ~14 points): at the old constant widening (0.5 per log
    # unit) its intervals missed half its runs; the size widening learned from the size extrapolations covers it
    from planner.law import WIDEN_PER_LOG

    b = bt.groups.set_index("group").loc["B"]
    assert b["coverage80_without_thin"] < 0.6 and b["coverage80"] >= 0.7
    assert bt.widen_per_log["model size"] > WIDEN_PER_LOG
    # learned from the size range cut too: each side predicted from the other
    assert {"size range cut: sizes B/L from larger", "size range cut: sizes H/bigG from smaller"} <= set(
        bt.summary["size_cuts"])
