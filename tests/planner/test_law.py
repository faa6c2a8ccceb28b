"""The one law (``planner.law``): the ImageNet study and a local study are configurations of it, so for the same
inputs and parameters they predict the same; the fit files of either kind round-trip; the fit shipped before the
law was written once stays readable and predicts what the current one does."""

from __future__ import annotations

from dataclasses import replace

import json
import math

import numpy as np
import pytest

from planner import law, paths
from planner.accuracy import load_or_fit, predict_frame
from planner.features import features_frame, schedule_features
from planner.studies import LOCAL_LAW, predict_study

RUNS = [("mu/8", "5K@16/8"), ("mini/8", "48K@32/16"), ("xs/8", "16K@24/32 + 8K@32/32~0.5"),
        ("xs/8", "100K@16/8 + 2K@32/32 + 1K@32/16~0.3:block"), ("mu/8", "200@16/8")]
# parameters of the shared space (no irreducible error, no patch term, no repetition: a local study's constants),
# in the ImageNet study's units
IMAGENET_P = {"E": 0.0, "zeta": 0.0, "ln_Rstar": 0.0, "rho": 0.0, "n_rep_cap": 1.0, "kappa_t": 1.0,
              "ln_A": math.log(4.0), "alpha": 0.35, "ln_B": math.log(0.02), "beta": 0.5, "ln_ci": math.log(0.3),
              "ln_ct": math.log(0.5), "gamma": 0.3, "kappa": 0.9, "psi": 1.0, "eta": 0.6, "ln_s0": math.log(1e-6)}
# the log scales: their gradient does not depend on the units (an exponent's does, through log n and log D)
FREE = ["ln_A", "ln_B", "ln_ci", "ln_ct", "ln_s0"]


def _in_local_units(p: dict[str, float]) -> dict[str, float]:
    """The same law in the local study's units (n / 1e5 instead of / 1e8, D / 1e4 instead of / 1e9)."""
    n_scale = math.log(1e8 / 1e5)
    d_scale = math.log(1e9 / 1e4)
    q = dict(p)
    q["ln_A"] += p["alpha"] * n_scale
    q["ln_B"] += p["beta"] * d_scale
    q["ln_ci"] += p["gamma"] * n_scale
    q["ln_ct"] += p["gamma"] * n_scale
    q["ln_s0"] += d_scale
    q["n_rep_cap"] *= 1e8 / 1e5
    return q


def _fits():
    f = features_frame([schedule_features(m, "local:t", s) for m, s in RUNS])
    ranges = law.data_ranges(f.iloc[:3], token_floor=False)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(len(FREE), len(FREE)))
    cov = (a @ a.T * 1e-3).tolist()
    common = dict(free=FREE, cov=cov, sigma=1.3, ranges=ranges, datasets={"local:t": 0.0}, quantile=law.Z80)
    imagenet = law.LawFit(kind="imagenet", params=IMAGENET_P, **common)
    local = law.LawFit(kind="local-study", params=_in_local_units(IMAGENET_P), dataset="local:t", **common)
    return f, imagenet, local


def test_both_studies_predict_the_same_for_the_same_inputs_and_parameters():
    f, imagenet, local = _fits()
    a = predict_frame(imagenet, f)
    b = predict_study(local, f)
    assert a["predicted_top1"].to_numpy() == pytest.approx(b["predicted_top1"].to_numpy(), rel=1e-9)
    # the interval's gradient steps are relative to each parameter's value, which the unit change moves
    assert a["low"].to_numpy() == pytest.approx(b["low"].to_numpy(), rel=1e-4)
    assert a["high"].to_numpy() == pytest.approx(b["high"].to_numpy(), rel=1e-4)
    assert (a["extrapolated"].to_numpy() == b["extrapolated"].to_numpy()).all()
    assert a["extrapolated"].any() and not a["extrapolated"].all()  # the probe runs span inside and outside
    # and the runs are not all at the floor: the law's terms are exercised
    assert a["predicted_top1"].std() > 5


def test_a_change_of_chance_moves_only_the_floor():
    f, _, local = _fits()
    low = predict_study(local, f)["predicted_top1"].to_numpy()
    local.chance = 10.0
    high = predict_study(local, f)["predicted_top1"].to_numpy()
    assert (high >= 10.0).all() and (high >= low - 1e-9).all()
    far = low > 40  # well above the floor the chance level changes nothing
    assert far.any() and high[far] == pytest.approx(low[far], abs=1e-6)


@pytest.mark.parametrize("kind", ["imagenet", "local-study"])
def test_fit_files_round_trip(kind, tmp_path):
    f, imagenet, local = _fits()
    fit = imagenet if kind == "imagenet" else local
    fit.eval_n = 1000 if kind == "local-study" else None
    path = tmp_path / "fit.json"
    path.write_text(fit.to_json())
    again = law.load_fit(path)
    a, b = json.loads(again.to_json()), json.loads(fit.to_json())
    a.pop("natural_params"), b.pop("natural_params")  # exp of a 12-digit log: last digit may move
    assert again.kind == kind and a == b
    pa = law.predict(fit, LOCAL_LAW, f)
    pb = law.predict(again, LOCAL_LAW, f)
    assert np.allclose(pa["predicted_top1"], pb["predicted_top1"], rtol=1e-10)


def test_the_fit_shipped_before_the_law_was_written_once_reads_and_predicts_the_same():
    old = law.load_fit(paths.PACKAGE_ROOT / "results" / "fits" / "c5ec549ec6fe.json")
    now = load_or_fit(include_runs=False)
    # the thin-data term (issue 19) widens intervals on purpose; the law and its interval otherwise are unchanged,
    # as does the learned range widening (the old fit had the constant)
    now = replace(now, thin={**now.thin, "widths": [0.0] * len(now.thin["widths"]), "widen_per_log": {}})
    f = features_frame([schedule_features("H/14", "datacomp-1b", "12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4"),
                        schedule_features("B/16", "local:new", "1B@112/16")])
    a, b = predict_frame(old, f), predict_frame(now, f)
    assert np.allclose(a[["predicted_top1", "low", "high"]], b[["predicted_top1", "low", "high"]], rtol=1e-9)


def test_samples_are_judged_per_model_size_where_the_study_records_each_sizes_reach():
    # mini/8 trained to 1.28M, xs/8 only to 40K: xs/8 at 1.28M is inside the samples range of the data but 32x
    # beyond its own runs (loop 6: predicted 18.4 [14.5, 22.2] as an interpolation, scored 28.0)
    runs = [("mu/8", "20K@32/32"), ("mini/8", "1.28M@32/32"), ("mini/8", "40K@32/32"), ("xs/8", "40K@32/32")]
    f = features_frame([schedule_features(m, "local:t", s) for m, s in runs])
    per_size = law.data_ranges(f, token_floor=False, samples_per_size=True)
    pooled = law.data_ranges(f, token_floor=False)
    probe = features_frame([schedule_features(m, "local:t", s) for m, s in
                            [("xs/8", "1.28M@32/32"), ("mini/8", "1.28M@32/32"), ("xs/8", "40K@32/32"),
                             ("mu/8", "80K@32/32"), ("S/8", "80K@32/32")]])
    reach = law.samples_reach(per_size, probe["n_params"].to_numpy(float))
    # S/8 (no runs, above every measured size) takes the nearest measured size's reach: xs/8's
    assert reach.tolist() == pytest.approx([4e4, 1.28e6, 4e4, 2e4, 4e4])
    samples, _ = law.range_excess(per_size, probe)
    assert samples[:4] == pytest.approx([math.log(32.0), 0.0, 0.0, math.log(4.0)])
    assert law.range_excess(pooled, probe)[0][:4] == pytest.approx([0.0, 0.0, 0.0, 0.0])  # ImageNet: pooled only
    # a size between two measured ones takes the lesser reach of its neighbours
    between = law.samples_reach({"samples_reach": [[1.0, 10.0], [4.0, 100.0]]}, np.array([2.0, 0.5, 8.0]))
    assert between.tolist() == [10.0, 10.0, 100.0]
    why = law.extrapolation_reasons(per_size, probe.iloc[0].to_dict(), True)
    assert why == ["samples 1.28e+06 above the 4e+04 that runs of this model size reached"]
    assert law.extrapolation_reasons(per_size, probe.iloc[1].to_dict(), True) == []


def test_a_local_studys_interval_widens_beyond_a_sizes_own_runs():
    f, _, local = _fits()  # fitted range: mu/8 at 5K, mini/8 at 48K, xs/8 at 24K
    rows = f.iloc[:3]
    local.ranges = law.data_ranges(rows, token_floor=False, samples_per_size=True)
    probe = features_frame([schedule_features(m, "local:t", s) for m, s in [("xs/8", "48K@32/16"),
                                                                           ("mini/8", "48K@32/16")]])
    p = predict_study(local, probe)
    assert p["extrapolated"].tolist() == [True, False]
    assert p["samples_excess"].tolist() == pytest.approx([math.log(2.0), 0.0])
    # the half-width grows by half a unit per log unit (WIDEN_PER_LOG), on top of the same sd
    half = (p["high"] - p["low"]).to_numpy() / 2
    local.ranges = law.data_ranges(rows, token_floor=False)
    q = predict_study(local, probe)
    assert not q["extrapolated"].iloc[0]
    assert half[0] == pytest.approx((q["high"] - q["low"]).iloc[0] / 2 * (1 + law.WIDEN_PER_LOG * math.log(2.0)),
                                    rel=1e-6)
