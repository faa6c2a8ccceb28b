"""The closed-loop report (``benchmarks/closed_loop.py``): the issue-19 figures computed from executed plans, the
spend rationale from a plan's own frontier, and the document rewritten only between its markers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "closed_loop.py"
_spec = importlib.util.spec_from_file_location("closed_loop_report", _PATH)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _plan(pred, low, high, actual, share, gain, mult=1.0):
    return {"multiple": mult, "budget": 0.01 * mult, "model": "mu/8", "schedule": "100K@32/32", "predicted": pred,
            "low": low, "high": high, "actual": actual, "spend_share": share, "measured_share": share, "gain": gain}


def test_figures_from_executed_plans():
    plans = [_plan(10.0, 7.0, 13.0, 11.0, 0.9, 0.0), _plan(12.0, 9.0, 15.0, 16.0, 0.8, 0.0, 3),
             _plan(14.0, 10.0, 18.0, 13.0, 0.5, 0.2, 3), _plan(15.0, 13.0, 17.0, 15.5, 0.4, 1.5, 10)]
    s = report.summarise(plans)
    assert s["mae"] == pytest.approx((1 + 4 + 1 + 0.5) / 4)
    assert s["inside"] == 3 and s["n"] == 4
    assert s["median_half_width"] == pytest.approx(3.0)  # half-widths 3, 3, 4, 2
    # the last plan spends 40% although its own fit says more spend buys 1.5 points
    assert not s["spend_ok"]
    assert report.summarise(plans[:3])["spend_ok"]
    # a plan whose recipe had already run (clipa run reused its record) is in-sample: left out, and counted
    repeat = dict(_plan(15.0, 14.0, 16.0, 15.0, 0.1, 2.0, 10), repeat=True)
    s2 = report.summarise(plans[:3] + [repeat])
    assert s2["n"] == 3 and s2["repeats"] == 1 and s2["spend_ok"]
    assert s2["mae"] == pytest.approx(2.0)


def test_spend_gain_reads_the_plans_frontier_within_budget():
    body = {"objective": "mean", "budget_usd": 0.01, "chosen": {"predicted_top1": 12.0, "interval": [9, 15]},
            "frontier": [{"cost_usd": 0.002, "predicted_top1": 11.0}, {"cost_usd": 0.008, "predicted_top1": 12.7},
                         {"cost_usd": 0.02, "predicted_top1": 20.0}]}
    assert report.spend_gain(body) == pytest.approx(0.7)  # 20 is beyond the budget
    body["objective"] = "p10"
    body["frontier"] = [{"cost_usd": 0.008, "low": 9.2}]
    assert report.spend_gain(body) == pytest.approx(0.2)


def test_doc_rewritten_between_markers_history_kept(tmp_path):
    doc = tmp_path / "closed_loop.md"
    doc.write_text("# Title\n\nhistory paragraph\n")
    report.write_doc(doc, f"{report.BEGIN}\nfirst\n{report.END}\n")
    report.write_doc(doc, f"{report.BEGIN}\nsecond\n{report.END}\n")
    text = doc.read_text()
    assert text.startswith("# Title\n\n") and "history paragraph" in text
    assert "second" in text and "first" not in text and text.count(report.BEGIN) == 1


def test_plans_table_shows_each_class_words_top1_when_recorded():
    pilot = {"budget": 0.01, "runs": [{"run_id": "r" * 16, "model": "mu/8", "schedule": "25K@16/8", "top1": 5.0,
                                       "device_hours": 0.001, "cost_usd": 0.001}], "notes": []}
    meta = {"date": "2026-12-05", "work": "/tmp/w", "pilot_budget": 0.01, "pilot_min": 1.0, "wall_min": 2.0}
    old = [_plan(10.0, 7.0, 13.0, 11.0, 0.9, 0.0)]
    assert "top-1 per word" not in report.render(pilot, old, report.summarise(old), meta, [])
    new = [dict(_plan(10.0, 7.0, 13.0, 11.0, 0.9, 0.0), attributes={"colour": 87.6, "shape": 17.8})]
    text = report.render(pilot, new, report.summarise(new), meta, [])
    assert "top-1 per word |" in text and "| colour 87.6, shape 17.8 |" in text


def test_resume_keeps_executed_plans_and_plans_only_the_rest(tmp_path, monkeypatch):
    """A resumed loop must not plan an executed plan again: its study would now see the runs of the plans after it
    (loop 8 ran plans at 1x, 1x and 3x; resumed with 10x added, only the 10x plan is planned and run)."""
    import json
    import sys

    work = tmp_path / "loop"
    runs = work / "home" / "results" / "runs"
    runs.mkdir(parents=True)
    (work / "data").mkdir()
    (work / "data" / "dataset.json").write_text("{}")
    pilot_run = {"run_id": "p" * 16, "model": "mu/8", "schedule": "25K@16/8", "top1": 5.0, "device_hours": 0.001,
                 "cost_usd": 0.002}
    (runs / f"{'p' * 16}.json").write_text(json.dumps({**pilot_run, "started_at": "2026-12-05T10:00:00+00:00",
                                                         "finished_at": "2026-12-05T10:05:00+00:00"}))
    executed = [_plan(10.0, 7.0, 13.0, 11.0, 0.9, 0.0, 1.0), _plan(12.0, 9.0, 15.0, 12.5, 0.9, 0.0, 3.0)]
    for p in executed:
        p["budget"] = round(p["multiple"] * 0.002, 6)
    pilot_study = {"metrics": {"mae": 0.6}}
    (work / "closed_loop.json").write_text(json.dumps({"pilot": {"study": pilot_study}, "plans": executed,
                                                       "log": ["$ clipa pilot"],
                                                       "meta": {"wall_min": 30.0}}))
    issued = []

    def fake_clipa(args, env, log):  # the CLI's JSON answers, as a stand-in for the subprocess
        issued.append(args[0])
        if args[0] == "pilot":
            return {"runs": [pilot_run], "study": {"metrics": {"mae": 9.9}}, "notes": []}  # now fitted on all runs
        if args[0] == "plan":
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True)
            chosen = {"model": "xs/8", "schedule": "900K@16/8", "predicted_top1": 30.0, "interval": [25.0, 35.0],
                      "cost_usd": 0.018}
            (out / "plan.json").write_text(json.dumps({"objective": "mean", "budget_usd": 0.02, "chosen": chosen,
                                                       "frontier": [{"cost_usd": 0.018, "predicted_top1": 30.0}]}))
            return {"chosen": chosen}
        return {"results": [{"run_id": "n" * 16, "top1": 31.0, "cost_usd": 0.019, "extra": {}}]}

    monkeypatch.setattr(report, "clipa", fake_clipa)
    monkeypatch.setattr(sys, "argv", ["closed_loop.py", "--work", str(work), "--multiples", "1,3,10", "--resume",
                                      "--doc", str(tmp_path / "doc.md"), "--seed", "19"])
    report.main()
    assert issued == ["pilot", "plan", "run"]  # the pilot's runs are reused by the CLI; one new plan
    saved = json.loads((work / "closed_loop.json").read_text())
    assert [p["multiple"] for p in saved["plans"]] == [1.0, 3.0, 10.0]
    assert [p.get("resumed", False) for p in saved["plans"]] == [True, True, False]
    assert saved["plans"][2]["actual"] == 31.0 and saved["meta"]["wall_min"] >= 30.0
    assert saved["pilot"]["study"] == pilot_study
    doc = (tmp_path / "doc.md").read_text()
    assert "--seed 19" in doc and "Plans 1, 2 were executed by an earlier invocation" in doc
