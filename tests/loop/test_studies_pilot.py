"""Studies and pilot design: local runs never touch the ImageNet fit, ImageNet rows never enter a local fit, the reduced
local law recovers known parameters, and the pilot design stays within budget while spanning every axis."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from planner import accuracy
from planner.accuracy import fitting_data, load_or_fit, predict_stages
from planner.errors import ClipaError
from planner.features import features_frame, schedule_features
from planner.pilot import Overhead, apply_overhead, design_pilot
from planner.schedule import parse_schedule
from planner.search import cpu_space, enumerate_candidates
from planner.datasets import IMAGENET_TASK, eval_task
from planner.studies import fit_study, local_top1, predict_study

SHARED = {"gamma": 0.31, "kappa": 0.99, "psi": 1.0, "eta": 0.5, "alpha": 0.34, "beta": 0.44}
TRUTH = dict(SHARED, kappa_t=1.0, ln_A=math.log(15), alpha=0.35, ln_B=math.log(40), beta=0.5, ln_ci=math.log(1.5),
             ln_ct=math.log(2), ln_s0=math.log(0.2), E=10.0)
CHANCE = 100 / 64


def _local_rows(n: int = 40, noise: float = 0.5, seed: int = 0, truth: dict | None = None,
                samples: tuple = ("5K", "16K", "48K")):
    rows = [schedule_features(m, "local:t", f"{s}@{r}/{t}") for m in ("mu/8", "mini/8", "xs/8") for r in (16, 24, 32)
            for t in (8, 16, 32) for s in samples]
    f = features_frame(rows)
    rng = np.random.default_rng(seed)
    f = f.iloc[np.sort(rng.choice(len(f), n, replace=False))].reset_index(drop=True)
    f["top1"] = local_top1(truth or TRUTH, f, 16.0, CHANCE) + rng.normal(0, noise, len(f))
    f["key"] = [f"k{i}" for i in range(len(f))]
    return f


def test_reduced_law_recovers_known_parameters():
    # a huge eval split: the binomial noise floor stays below the 0.5-point noise drawn here
    fit = fit_study(_local_rows(), SHARED, dataset="local:t", chance=CHANCE, eval_n=1_000_000, scale=4.0)
    sd = fit.param_sd()
    for k in ("ln_A", "alpha", "ln_B", "beta", "ln_ci", "ln_ct"):
        assert abs(fit.params[k] - TRUTH[k]) < max(4 * sd[k], 0.05), (k, fit.params[k], TRUTH[k], sd[k])
    assert fit.sigma == pytest.approx(0.5, abs=0.25)
    # the floor: a run too short to learn is predicted at chance, never below
    f = features_frame([schedule_features("mu/8", "local:t", "100@16/8")])
    p = predict_study(fit, f).iloc[0]
    assert p.predicted_top1 == pytest.approx(CHANCE, abs=0.05) and p.low >= 0


def test_interval_covers_and_widens_outside_the_study():
    fit = fit_study(_local_rows(noise=1.0, seed=1), SHARED, dataset="local:t", chance=CHANCE)
    held = _local_rows(n=81, noise=1.0, seed=2)
    pred = predict_study(fit, held)
    inside = ((held["top1"] >= pred["low"]) & (held["top1"] <= pred["high"])).mean()
    assert 0.6 <= inside <= 1.0
    near = features_frame([schedule_features("mini/8", "local:t", "48K@32/16")])
    far = features_frame([schedule_features("mini/8", "local:t", "480K@32/16")])
    pn, pf = predict_study(fit, near).iloc[0], predict_study(fit, far).iloc[0]
    assert not pn.extrapolated and pf.extrapolated
    assert pf.high - pf.low > pn.high - pn.low


def test_flags_say_where_a_prediction_stands_beyond_the_studys_runs():
    # mu/8 and xs/8 at 32 px (16 tokens) to 48K samples, xs/8 at 16 px (4 tokens) to 5K only
    scheds = [("mu/8", f"{s}@{r}") for s in ("5K", "16K", "48K") for r in ("16/8", "32/16")]
    scheds += [("xs/8", f"{s}@32/16") for s in ("5K", "16K", "48K")] + [("xs/8", "5K@16/8")]
    rows = features_frame([schedule_features(m, "local:t", s) for m, s in scheds])
    rows["top1"] = local_top1(TRUTH, rows, 16.0, CHANCE)
    rows["key"] = [f"k{i}" for i in range(len(rows))]
    fit = fit_study(rows, SHARED, dataset="local:t", chance=CHANCE, scale=1.0)
    asked = {s: schedule_features(m, "local:t", s.split(" ", 1)[1]) for s, m in (
        ("inside 48K@32/16", "xs/8"), ("cell 48K@16/8", "xs/8"), ("size 100K@32/16", "xs/8"),
        ("tokens 48K@24/8", "xs/8"), ("model 10K@32/16", "mini/8"))}
    flags = dict(zip(asked, predict_study(fit, features_frame(list(asked.values())))["flags"]))
    assert flags["inside 48K@32/16"] == ()
    assert flags["cell 48K@16/8"] == ("xs/8 at 4 pre-training image tokens: at most 5K samples in the study "
                                      "(this run 48K)",)
    assert flags["size 100K@32/16"] == ("xs/8 trained to at most 48K samples in the study (this run 100K)",)
    assert flags["tokens 48K@24/8"] == ("no xs/8 run at 9 pre-training image tokens in the study",)
    assert flags["model 10K@32/16"] == ("no mini/8 run in the study",)


def test_a_study_widens_beyond_its_runs_by_what_its_own_forward_predictions_missed():
    # each tower's longest runs are predicted from its shorter ones (as each plan is from the runs before it): a
    # study whose xs/8 jumped at its longest runs (loop 9: learned shape late and then fast) learns a wider interval
    # beyond its runs; one that follows the law keeps the default growth
    from dataclasses import replace

    from planner.law import WIDEN_PER_LOG, LawFit, widen_per_log

    scheds = [(m, f"{s}@{r}/16") for m in ("mu/8", "mini/8", "xs/8") for s in ("5K", "16K", "48K") for r in (16, 32)]
    rows = features_frame([schedule_features(m, "local:t", s) for m, s in scheds])
    rows["top1"] = local_top1(TRUTH, rows, 16.0, CHANCE) + np.random.default_rng(7).normal(0, 0.3, len(rows))
    rows["key"] = [f"k{i}" for i in range(len(rows))]
    jumped = rows.copy()
    jumped.loc[(jumped["model"] == "xs/8") & (jumped["total_samples"] == 48_000), "top1"] += 8.0
    smooth_fit, jumped_fit = (fit_study(r, SHARED, dataset="local:t", chance=CHANCE, eval_n=4000, scale=1.0)
                              for r in (rows, jumped))
    assert widen_per_log(smooth_fit)["other"] == WIDEN_PER_LOG
    assert widen_per_log(jumped_fit)["other"] > 2 * WIDEN_PER_LOG
    # what a plan reads is the fit file: the learned growth survives it
    reloaded = LawFit.from_dict(json.loads(jumped_fit.to_json()))
    assert widen_per_log(reloaded) == pytest.approx(widen_per_log(jumped_fit), rel=1e-9)
    records = jumped_fit.metrics["forward"]  # one per tower's longest run: 2 runs at 48K for each of 3 towers
    assert len(records) == 6 and {r["samples"] for r in records} == {48_000.0}
    xs = [r for r in records if r["n_params"] == float(rows.loc[rows["model"] == "xs/8", "n_params"].iloc[0])]
    assert all(r["error"] < -4.0 for r in xs)  # predicted from 5K and 16K, the jump is missed
    far = features_frame([schedule_features("xs/8", "local:t", "480K@32/16")])
    learned = predict_study(jumped_fit, far).iloc[0]
    default = predict_study(replace(jumped_fit, thin={}), far).iloc[0]
    assert learned.predicted_top1 == default.predicted_top1
    assert learned.high - learned.low > 1.5 * (default.high - default.low)


def test_ceiling_caps_top1_below_100():
    # a local dataset's top-1 saturates at 100 - E, however large the model and long the run
    f = features_frame([schedule_features("xs/8", "local:t", "100M@32/32")])
    lo, hi = (local_top1(dict(TRUTH, E=e), f, 16.0, CHANCE)[0] for e in (30.0, 10.0))
    assert hi < 90.0 and hi - lo == pytest.approx(20.0, abs=0.1)
    rows = _local_rows(n=40, noise=0.5, seed=4, truth=dict(TRUTH, ln_B=math.log(8), E=35.0),
                       samples=("50K", "160K", "480K"))
    assert rows["top1"].max() > 45  # the runs reach the bend below the ceiling
    fit = fit_study(rows, SHARED, dataset="local:t", chance=CHANCE, eval_n=1_000_000)
    assert fit.params["E"] == pytest.approx(35.0, abs=4.0)


# a fresh-clone pilot's runs (clipa pilot --budget 0.004 on the generated data, README walk of 2026-12-05), less its
# longest: top-1 on a plateau at 8-17%
PLATEAU_PILOT = [
    ("mu/8", "25000@16/8 + 12500@32/32", 11.5), ("mu/8", "45200@32/32", 14.2), ("mu/8", "25000@16/8", 8.0),
    ("mu/8", "25000@24/16", 11.2), ("mini/8", "25000@32/8", 15.5), ("mini/8", "25000@24/32", 11.2),
    ("mini/8", "30600@16/16", 14.1), ("mini/8", "25000@16/8 + 25000@32/32", 17.3), ("mini/8", "25000@16/32", 10.3),
    ("mini/8", "30600@24/8", 14.5), ("mini/8", "25000@32/16", 14.9),
]


def test_a_plateau_is_fitted_from_a_low_ceiling_too():
    # runs on a plateau fit either a flat curve under a high ceiling or a low ceiling; with the ImageNet priors held
    # narrow, a fit started only from the prior's ceiling stopped at MAE 4.2 and predicted the next run at chance
    # (the walk's mu/8 at 171K scored 16.9)
    rows = features_frame([schedule_features(m, "local:t", s) for m, s, _ in PLATEAU_PILOT])
    rows["top1"] = [t for *_, t in PLATEAU_PILOT]
    rows["key"] = [f"k{i}" for i in range(len(rows))]
    fit = fit_study(rows, SHARED, dataset="local:t", chance=CHANCE, eval_n=1000, scale=0.25, forward=False)
    assert fit.metrics["mae"] < 1.5
    longer = features_frame([schedule_features("mu/8", "local:t", "163K@32/8 + 8K@32/32")])
    assert predict_study(fit, longer).iloc[0].predicted_top1 == pytest.approx(16.9, abs=5.0)


def test_study_predicts_held_out_larger_runs():
    # a pilot-sized study (12 runs, 1-point noise) predicts runs 3x beyond its largest samples within 2 points
    rows = _local_rows(n=12, noise=1.0, seed=5)
    fit = fit_study(rows, SHARED, dataset="local:t", chance=CHANCE, eval_n=4000)
    held = features_frame([schedule_features(m, "local:t", f"150K@{r}/32") for m in ("mu/8", "mini/8", "xs/8")
                           for r in (16, 32)])
    truth = local_top1(TRUTH, held, 16.0, CHANCE)
    pred = predict_study(fit, held)
    assert np.mean(np.abs(pred["predicted_top1"] - truth)) < 2.0
    assert ((truth >= pred["low"]) & (truth <= pred["high"])).mean() >= 0.75


def test_prior_width_follows_how_well_imagenet_transfers():
    # the held-out test leans on the ImageNet exponents when the local data follows them, and frees them when it
    # does not (a dataset whose token penalty is far steeper than ImageNet's and does not shrink with model size)
    from planner.studies import PRIOR_SCALES, prior_scale

    same = _local_rows(n=14, noise=1.0, seed=6, truth=dict(TRUTH, alpha=0.34, beta=0.44))
    other = _local_rows(n=14, noise=1.0, seed=6, truth=dict(TRUTH, kappa=2.5, gamma=0.0))
    s_same, mae_same = prior_scale(same, SHARED, chance=CHANCE, eval_n=4000)
    s_other, mae_other = prior_scale(other, SHARED, chance=CHANCE, eval_n=4000)
    assert set(mae_same) == set(PRIOR_SCALES)
    assert s_other > s_same, (mae_same, mae_other)


def test_prior_width_choice_is_the_narrowest_within_one_standard_error():
    from planner.studies import one_standard_error_choice

    rng = np.random.default_rng(0)
    base = np.abs(rng.normal(0.0, 1.5, 12))  # held-out errors of about 1.2 points, standard error ~0.25
    # a wider prior better by a hair (0.05 points, a fifth of the standard error): the narrow one is kept
    hair = {0.25: base + 0.05, 1.0: base + 0.02, 4.0: base}
    assert one_standard_error_choice(hair) == 0.25
    # a wider prior better by far more than the standard error: it is chosen, and the narrowest such width
    far = {0.25: base + 2.0, 1.0: base + 0.01, 4.0: base}
    assert one_standard_error_choice(far) == 1.0
    # the best width is never passed over for a wider one
    assert one_standard_error_choice({0.25: base, 4.0: base + 1.0}) == 0.25


def test_local_fit_refuses_imagenet_rows():
    rows = _local_rows(n=5)
    img = features_frame([schedule_features("B/16", "datacomp-1b", "1B@112/16")])
    img["top1"], img["key"] = 60.0, "x"
    import pandas as pd

    with pytest.raises(ClipaError, match="cannot enter the fit of study"):
        fit_study(pd.concat([rows, img], ignore_index=True), SHARED, dataset="local:t", chance=CHANCE)
    assert eval_task("local:t") == "zeroshot:local:t" and eval_task("laion-2b") == IMAGENET_TASK


def test_imagenet_fit_refuses_local_rows():
    data = fitting_data(include_runs=False)
    data.rows = data.rows.copy()
    data.rows.loc[0, "dataset"] = "local:t"
    with pytest.raises(ClipaError, match="cannot enter"):
        accuracy.fit_accuracy(data)


def _write_local_runs(home, n=6):
    runs = home / "results" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    f = _local_rows(n=n, seed=3)
    for i, r in f.iterrows():
        sched = f"{int(r.total_samples)}@{int(r.s0_image_res)}/{int(r.s0_text_len)}"
        (runs / f"local{i}.json").write_text(json.dumps(
            {"source": "run", "model": r.model, "dataset": "local:t", "schedule": sched, "top1": float(r.top1)}))


def test_local_runs_never_change_the_imagenet_fit(isolated_home):
    before = load_or_fit()
    _write_local_runs(isolated_home)
    after = load_or_fit()
    # same ImageNet data, same version: the local runs are not even part of its data hash
    # (``before`` may be the fit made just now, ``after`` the same fit read back from its file: 12 digits)
    assert after.version == before.version and after.params == pytest.approx(before.params, rel=1e-9)
    assert "local:t" not in after.datasets and "local:t" in after.studies
    st = after.studies["local:t"]
    assert st.metrics["rows"] == 6 and after.version_for("local:t") != after.version
    # a local study judges samples per model size (``planner.law.samples_reach``); the ImageNet study pools them
    assert st.ranges["samples_reach"] and "samples_reach" not in after.ranges
    # a local prediction comes from the study's law; an ImageNet one is unchanged
    p = predict_stages(after, "mini/8", "local:t", parse_schedule("16K@32/16", "mini/8"))
    assert CHANCE <= p.predicted_top1 < 100 and p.low <= p.predicted_top1 <= p.high
    q0 = predict_stages(before, "B/16", "datacomp-1b", parse_schedule("2B@112/16", "B/16"))
    q1 = predict_stages(after, "B/16", "datacomp-1b", parse_schedule("2B@112/16", "B/16"))
    assert q0 == q1


def test_pilot_design_within_budget_and_spans_every_axis():
    d = design_pilot(0.0168, "local:t", data_res=32)  # 15 minutes of this CPU
    assert d.cost_usd <= 0.0168 and d.cost_usd > 0.9 * 0.0168  # spends the budget, not more
    assert len(d.runs) == 11
    for axis in ("model", "res", "text_len"):
        assert len({getattr(r, axis) for r in d.runs}) == 3, axis
    assert {r.model for r in d.runs} == {"mu/8", "mini/8", "xs/8"}
    assert max(r.res for r in d.runs) == 32
    # every model is seen on a x3 samples ladder of its own, floored where a run would be too short to learn
    from planner.pilot import MIN_PILOT_SAMPLES

    for m in ("mu/8", "mini/8", "xs/8"):
        levels = sorted(r.samples for r in d.runs[:9] if r.model == m)
        assert levels[0] >= MIN_PILOT_SAMPLES and levels[2] > levels[0], (m, levels)
    mu = sorted(r.samples for r in d.runs[:9] if r.model == "mu/8")
    assert mu[2] / mu[1] == pytest.approx(3, rel=0.05)
    # two fine-tuned runs of different lengths (the fine-tune's length scale is measured, not assumed)
    assert len({r.finetune for r in d.runs if r.finetune}) == 2
    # each pair of the L9 axes is balanced: every level of one axis meets three levels of another
    l9 = d.runs[:9]
    for a, b in (("model", "res"), ("model", "text_len"), ("res", "text_len")):
        assert len({(getattr(r, a), getattr(r, b)) for r in l9}) == 9
    with pytest.raises(ClipaError, match="buys no pilot"):
        design_pilot(1e-6, "local:t", data_res=32)


def test_pilot_design_follows_what_the_plans_can_afford():
    # plans of 1x, 3x, 10x the pilot's budget: a small pilot leaves out the towers its plans cannot afford (or it
    # cannot train past the samples floor), a larger one takes them in; a cheap tower's runs reach further in samples
    # than an expensive one's; and a larger budget reaches further
    from planner.pilot import MIN_PILOT_SAMPLES, MIN_PLAN_SAMPLES, affordable_samples, prior_overhead
    from planner.search import space_for
    from planner.hardware import get_hardware

    small, large = design_pilot(0.005, "local:t", data_res=32), design_pilot(0.0168, "local:t", data_res=32)
    space = space_for(get_hardware("cpu-2core"), 32)
    # the small pilot cannot train xs/8 past the samples floor within its budget: the note gives the design's price
    assert "xs/8" not in {r.model for r in small.runs}
    assert any(n.startswith("xs/8 left out: the design with it costs") for n in small.notes), small.notes
    assert min(r.samples for r in small.runs) >= MIN_PILOT_SAMPLES  # no run below the take-off
    assert {r.model for r in large.runs} == {"mu/8", "mini/8", "xs/8"}
    top = {m: max(r.samples for r in large.runs if r.model == m) for m in ("mu/8", "mini/8", "xs/8")}
    assert top["mu/8"] > top["mini/8"] > top["xs/8"]
    assert max(r.samples for r in large.runs if r.model == "mu/8") > 1.5 * max(r.samples for r in small.runs
                                                                                if r.model == "mu/8")
    # a pilot whose smallest plan is a twentieth of it (0.05x-3x): the smallest cannot afford the large tower, so it is out
    # although the pilot could pay for its runs
    near = design_pilot(0.0168, "local:t", data_res=32, plan_multiples=(0.05, 1.0, 3.0))
    assert affordable_samples(space, "xs/8", 0.05 * 0.0168, 32, "cpu-2core", "on-demand",
                              prior_overhead("cpu-2core")) < MIN_PLAN_SAMPLES
    assert near.cost_usd <= 0.0168 and {r.model for r in near.runs} == {"mu/8", "mini/8"}
    assert any("xs/8 left out: a $" in n for n in near.notes), near.notes


def test_small_pilot_spans_the_token_and_samples_axes():
    d = design_pilot(0.003, "local:t", data_res=32, models=("mu/8",), n_runs=4)
    assert len(d.runs) == 4 and {r.model for r in d.runs} == {"mu/8"}
    for axis in ("res", "text_len", "samples"):
        assert len({getattr(r, axis) for r in d.runs}) == 3, axis
    # not every axis moves in step: the fourth run breaks the token/samples correlation
    assert len({(r.res, r.samples) for r in d.runs}) == 4
    assert d.cost_usd <= 0.003


def test_overhead_reprices_candidates_and_lr_policy():
    space = cpu_space(32)
    c = enumerate_candidates(space, "cpu-2core", "on-demand")
    o = apply_overhead(c, space, Overhead(1.0, 1e-3, 2.0), 0.067)
    assert (o["cost_usd"] > c["cost_usd"]).all() and max(space.pretrain_res[8]) == 32
    assert space.lr_base[0] > 1e-4  # not CLIPA's web-scale 8e-6


def test_a_local_plan_names_the_better_candidate_beyond_its_study(tmp_path):
    # a study of mu/8 alone: larger towers are outside its range, ranked after; when its fit predicts one of them a
    # point higher within the budget, the plan says which, by how much and why it did not take it
    import numpy as np
    import pandas as pd

    from planner.plan import make_plan

    def predictor(f):
        big = (f["model"] != "mu/8").to_numpy()
        mean = np.where(big, 20.0, 12.0) + 1e-9 * f["total_samples"].to_numpy(float)
        return pd.DataFrame({"predicted_top1": mean, "low": mean - 2, "high": mean + 2, "extrapolated": big,
                             "samples_excess": 0.0, "other_excess": np.where(big, 2.0, 0.0)}, index=f.index)

    body = make_plan(0.05, predictor, "test", "cpu-2core", None, "local:synth", out=tmp_path / "p").body
    assert body["chosen"]["model"] == "mu/8"
    beyond = [n for n in body["notes"] if n.startswith("beyond the study:")]
    assert len(beyond) == 1 and "predicted 8.0 points higher" in beyond[0] and "model size" in beyond[0] and "more than samples" in beyond[0]
    # nothing worth saying when the study's own candidates are as good
    flat = make_plan(0.05, lambda f: predictor(f).assign(predicted_top1=12.0, low=10.0, high=14.0), "test",
                     "cpu-2core", None, "local:synth", out=tmp_path / "q").body
    assert not [n for n in flat["notes"] if n.startswith("beyond the study:")]


def test_a_local_plan_walks_each_tower_at_most_4x_beyond_its_own_largest_run(tmp_path):
    # mini/8 ran to 1.28M samples, xs/8 to 40K: xs/8 is trusted up to 160K, whatever mini/8 reached (loop 6's 10x
    # plan took xs/8 at 1.24M as an interpolation of the pooled range and landed 9.6 points above its prediction)
    import numpy as np
    import pandas as pd

    from planner import law
    from planner.plan import LOCAL_SAMPLES_REACH, make_plan

    runs = features_frame([schedule_features(m, "local:synth", s) for m, s in
                           [("mini/8", "1.28M@32/32"), ("xs/8", "40K@32/32"), ("mini/8", "40K@16/8 + 8K@32/32")]])
    ranges = law.data_ranges(runs, token_floor=False, samples_per_size=True)

    def predictor(f):
        samples, other = law.range_excess(ranges, f)
        # more samples help; leaving the study's tokens, text or fine-tune lengths does not
        mean = (np.where(f["model"] == "xs/8", 30.0, 15.0) + 2 * np.log10(f["total_samples"].to_numpy(float))
                - 5 * other)
        return pd.DataFrame({"predicted_top1": mean, "low": mean - 2, "high": mean + 2,
                             "extrapolated": samples + other > 1e-9, "samples_excess": samples,
                             "other_excess": other}, index=f.index)

    body = make_plan(0.05, predictor, "test", "cpu-2core", None, "local:synth", out=tmp_path / "p").body
    chosen = body["chosen"]
    assert chosen["model"] == "xs/8"
    seen = features_frame([schedule_features("xs/8", "local:synth", chosen["schedule"])])["total_samples"].iloc[0]
    assert 40e3 < seen <= LOCAL_SAMPLES_REACH * 40e3
    beyond = [n for n in body["notes"] if n.startswith("beyond the study:")]
    assert len(beyond) == 1 and "the study's largest xs/8 run" in beyond[0]


def test_a_plan_does_not_pay_to_repeat_a_recipe_already_run(isolated_home, tmp_path):
    # the same recipe on the same data and seed measures the same thing again: a plan whose best candidate was
    # already run takes the best one not yet run, and says which was skipped and what it measured
    import numpy as np
    import pandas as pd

    from planner.plan import make_plan

    def predictor(f):
        mean = 10.0 + np.log(f["total_samples"].to_numpy(float))
        return pd.DataFrame({"predicted_top1": mean, "low": mean - 2, "high": mean + 2, "extrapolated": False,
                             "samples_excess": 0.0, "other_excess": 0.0}, index=f.index)

    first = make_plan(0.01, predictor, "test", "cpu-2core", None, "local:synth", out=tmp_path / "a").body["chosen"]
    runs = isolated_home / "results" / "runs"
    runs.mkdir(parents=True)
    (runs / "r1.json").write_text(json.dumps({"source": "run", "model": first["model"], "dataset": "local:synth",
                                              "schedule": first["schedule"], "top1": 14.5}))
    body = make_plan(0.01, predictor, "test", "cpu-2core", None, "local:synth", out=tmp_path / "b").body
    assert (body["chosen"]["model"], body["chosen"]["schedule"]) != (first["model"], first["schedule"])
    assert body["chosen"]["predicted_top1"] <= first["predicted_top1"]
    note, = [n for n in body["notes"] if n.startswith("already run:")]
    assert first["schedule"] in note and "14.50%" in note
    # another dataset's run is not a repeat
    other = make_plan(0.01, predictor, "test", "cpu-2core", None, "local:other", out=tmp_path / "c").body
    assert other["chosen"]["schedule"] == first["schedule"]
