"""Record (``python -m tests.planner.pinned_outputs``) or compute the outputs that the planner's refactors must not
change: ``clipa backtest --json``, ``clipa plan --budget 10000 --json``, ``clipa predict --json`` for the README's
schedules, full-precision predictions of a sample of the plan's candidates, and a local study's fit and predictions
(on the generated rows of ``tests/loop/test_studies_pilot.py``). ``test_pinned_outputs.py`` compares against
``tests/fixtures/pinned_outputs.json``, which was written before the issue-17 refactor.

A deliberate change of one output re-records only that key (``python -m tests.planner.pinned_outputs --only
local_study``): the rest stays the pre-refactor record. Re-recorded so far: ``local_study`` (issue 19: a local
study's prior width is the narrowest within one standard error of the best held-out error, which changes its fit)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "pinned_outputs.json"

# the README's schedules: the five plans of "What clipa plan --budget 10000 says", and the H/14 recipe it prices
README_SCHEDULES = [
    ("g/14", "datacomp-1b", "10B@56/8 + 512M@224/32~0.5 + 64M@336/32~0.4"),
    ("bigG/14", "datacomp-1b", "5.6B@56/8 + 256M@224/32~0.5 + 64M@336/32~0.4"),
    ("g/14", "datacomp-1b", "10B@56/8 + 256M@224/32~0.3 + 128M@336/32~0.4"),
    ("g/14", "datacomp-1b", "10B@56/16 + 256M@224/32~0.5 + 128M@336/32~0.4"),
    ("g/14", "datacomp-1b", "10B@56/8 + 256M@224/32~0.5 + 128M@336/32~0.4"),
    ("H/14", "datacomp-1b", "12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4"),
    ("H/14", "datacomp-1b", "12.8B@70/8 + 512M@224/32~0.3 + 128M@336/32~0.4"),
    ("B/16", "laion-400m", "1.28B@112/16 + 128M@224/32"),
    ("L/14", "local:new", "2.56B@84/16 + 128M@224/32"),  # a dataset without results (mean multiplier, flagged)
]


def machine() -> dict[str, str]:
    """What makes float results bit-identical: the CPU, the OS and the numeric libraries' versions."""
    import numpy
    import pandas
    import scipy

    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": cpu, "python": platform.python_version(),
            "numpy": numpy.__version__, "scipy": scipy.__version__, "pandas": pandas.__version__}


def _cli_json(args: list[str]) -> dict:
    from typer.testing import CliRunner

    from trainer.cli import build_app

    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, (args, res.output)
    return json.loads(res.stdout)


def _local_study() -> dict:
    import numpy as np

    from planner.features import features_frame, schedule_features
    from planner.studies import fit_study, local_top1, predict_study

    shared = {"gamma": 0.31, "kappa": 0.99, "psi": 1.0, "eta": 0.5, "alpha": 0.34, "beta": 0.44}
    truth = dict(shared, kappa_t=1.0, ln_A=math.log(15), alpha=0.35, ln_B=math.log(40), beta=0.5,
                 ln_ci=math.log(1.5), ln_ct=math.log(2), ln_s0=math.log(0.2), E=10.0)
    chance = 100 / 64
    rows = [schedule_features(m, "local:t", f"{s}@{r}/{t}") for m in ("mu/8", "mini/8", "xs/8")
            for r in (16, 24, 32) for t in (8, 16, 32) for s in ("5K", "16K", "48K")]
    f = features_frame(rows)
    rng = np.random.default_rng(0)
    f = f.iloc[np.sort(rng.choice(len(f), 40, replace=False))].reset_index(drop=True)
    f["top1"] = local_top1(truth, f, 16.0, chance) + rng.normal(0, 0.5, len(f))
    f["key"] = [f"k{i}" for i in range(len(f))]
    fit = fit_study(f, shared, dataset="local:t", chance=chance, eval_n=1000)
    probe = features_frame([schedule_features(m, "local:t", s) for m, s in [
        ("mu/8", "48K@32/16"), ("mini/8", "480K@32/16"), ("xs/8", "16K@16/8 + 8K@32/32~0.5"), ("mu/8", "100@16/8")]])
    pred = predict_study(fit, probe)[["predicted_top1", "low", "high", "extrapolated", "samples_excess",
                                      "other_excess"]]
    return {"params": fit.params, "sigma": fit.sigma, "cov": fit.cov, "t_quantile": fit.quantile,
            "predictions": pred.to_dict(orient="list")}


def compute() -> dict:
    """Every pinned output, computed now (under a fresh CLIPA_HOME: the shipped fit, no executed runs)."""
    old = os.environ.get("CLIPA_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["CLIPA_HOME"] = home
        try:
            from planner.accuracy import load_or_fit, predict_frame
            from planner.features import features_frame, schedule_features
            from planner.plan import make_plan

            out: dict = {"machine": machine()}
            out["backtest"] = _cli_json(["backtest", "--json"])
            out["plan"] = _cli_json(["plan", "--budget", "10000", "--json", "--out", f"{home}/plan"])
            out["predict"] = [_cli_json(["predict", "--model", m, "--dataset", d, "--schedule", s, "--json"])
                              for m, d, s in README_SCHEDULES]
            fit = load_or_fit()
            feats = features_frame([schedule_features(m, d, s) for m, d, s in README_SCHEDULES])
            out["predict_full"] = predict_frame(fit, feats).to_dict(orient="list")
            # every 331st priced candidate of the plan, at full precision
            seen = {}

            def predictor(f):
                seen["f"] = f
                return predict_frame(fit, f)

            make_plan(10000.0, predictor, fit.version, None, None, "datacomp-1b", "mean", 5, Path(home) / "p2")
            sample = seen["f"].iloc[::331]
            p = predict_frame(fit, sample)
            out["candidates"] = {"features": sample.reset_index(drop=True).astype(object).to_dict(orient="list"),
                                 "predictions": p.reset_index(drop=True).to_dict(orient="list")}
            out["local_study"] = _local_study()
            return out
        finally:
            if old is None:
                os.environ.pop("CLIPA_HOME", None)
            else:
                os.environ["CLIPA_HOME"] = old


if __name__ == "__main__":
    if sys.argv[1:2] == ["--only"] and len(sys.argv) == 3 and sys.argv[2] == "local_study":
        record = json.loads(FIXTURE.read_text(encoding="utf-8"))
        if record["machine"] != machine():
            sys.exit(f"the fixture was recorded on {record['machine']}; re-record one key on that machine only")
        record["local_study"] = json.loads(json.dumps(_local_study(), default=lambda o: o.item()))
    elif sys.argv[1:]:
        sys.exit("usage: python -m tests.planner.pinned_outputs [--only local_study]")
    else:
        record = compute()
    FIXTURE.write_text(json.dumps(record, indent=1, sort_keys=True, default=lambda o: o.item()) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
