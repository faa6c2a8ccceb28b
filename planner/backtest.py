"""Out-of-sample checks of the accuracy model on the published rows, with and without the thin-data term.

Leave-one-out refits the law without one published run and predicts it (the Figure-2 drops stay in every fit).
Leave-one-group-out removes a whole model size (B, L, H, bigG: every patch size of that tower, and its Figure-2
curve) or a whole dataset, so that the prediction is the extrapolation a user gets for a size or dataset without
results. Each model size x dataset cell is also left out (the size has runs on other datasets only) and thinned to
its middle run (one run there). The refits are ``planner.accuracy.out_of_sample``; the thin-data widths are learned
from all of them (``planner.accuracy.learn_thin_widths``, the widths a fit file carries).

Each prediction's interval is reported with the widths (``low``, ``high``, ``covered``) and without
(``covered_without_thin``: the refit's own interval). The widths come from these same predictions, so a left-out
group's own errors helped set its width: ``covered_cross`` uses widths learned without the group (for the groups
left out; the honest number there). Predictions of a size outside the refit's model-size range (B or bigG left out)
and of a dataset without results are not learned from: the range widening and the dataset term are theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from planner.accuracy import (THIN_LEVELS, FitData, fitting_data, learn_interval_terms,
                              out_of_sample, with_thin_widths)
from planner.law import MIN_WIDEN_EXCESS, WIDEN_AXES, WIDEN_PER_LOG, LawFit


@dataclass
class Backtest:
    loo: pd.DataFrame  # one row per published run: actual, predicted, interval, error, covered, extrapolated
    groups: pd.DataFrame  # one row per (kind, group) left out: n, mae, worst, coverage
    group_rows: pd.DataFrame  # the group-out predictions row by row
    summary: dict[str, Any] = field(default_factory=dict)
    cell_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # cells left out / thinned to one run
    widths: list[float] = field(default_factory=list)  # learned thin-data widths, one per THIN_LEVELS
    full: LawFit | None = None  # the fit of every row (no widths attached)
    widen_per_log: dict[str, float] = field(default_factory=dict)  # learned range widening per axis group
    trunc_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # the size range cut, each side from the other

    def to_dict(self, worst: int = 10) -> dict[str, Any]:
        cols = ["key", "family", "model", "dataset", "schedule", "top1", "predicted_top1", "low", "high", "error",
                "covered", "extrapolated"]
        w = self.loo.reindex(self.loo["error"].abs().sort_values(ascending=False).index).head(worst)
        return {
            "summary": self.summary,
            "leave_one_group_out": self.groups.to_dict(orient="records"),
            "worst_rows": w[cols].to_dict(orient="records"),
            "leave_one_out": self.loo[cols].to_dict(orient="records"),
        }


def _stats(df: pd.DataFrame) -> dict[str, Any]:
    if len(df) == 0:
        return {"n": 0}
    e = df["error"].abs()
    return {
        "n": int(len(df)),
        "mae": float(e.mean()),
        "worst": float(e.max()),
        "coverage80": float(df["covered"].mean()),
        "coverage80_without_thin": float(df["covered_without_thin"].mean()),
        "coverage80_cross": float(df["covered_cross"].mean()),
        "extrapolated": int(df["extrapolated"].sum()),
    }


def run_backtest(data: FitData | None = None, schedules: pd.Series | None = None) -> Backtest:
    """Leave-one-out over the published rows, leave-one-group-out by model size and by dataset, each model size x
    dataset cell left out and thinned to one run; intervals with the thin-data widths learned from all of them."""
    if data is None:
        from planner.results import load_results

        data = fitting_data(include_runs=False)
        schedules = load_results(include_runs=False)["schedule"]
    full, loo, group_rows, cell_rows, trunc_rows = out_of_sample(data)
    loo["schedule"] = schedules.to_numpy() if schedules is not None else ""
    every = pd.concat([loo, group_rows, cell_rows, trunc_rows], ignore_index=True)
    widths, widen = learn_interval_terms(every)

    def widened(df: pd.DataFrame) -> pd.DataFrame:
        if len(df) == 0:
            return df
        out = with_thin_widths(df, widths, widen)
        # before issue 19: no thin-data term, the range widening at its old constant
        before = with_thin_widths(df, [0.0] * len(widths), dict.fromkeys(WIDEN_AXES, WIDEN_PER_LOG))
        out["covered_without_thin"] = before["covered"].to_numpy()
        out["covered_cross"] = out["covered"]
        return out

    loo, group_rows, cell_rows, trunc_rows = (widened(df) for df in (loo, group_rows, cell_rows, trunc_rows))
    cross_terms = {}
    for label in sorted(set(group_rows["left_out"])) if len(group_rows) else ():
        mine = (group_rows["left_out"] == label).to_numpy()
        # learned without any prediction of the group's runs (its leave-one-out, cells and range cuts too)
        keys = set(group_rows.loc[mine, "key"])
        w, wd = learn_interval_terms(every[~every["key"].isin(keys)])
        cross_terms[label] = {"widths": w, "widen_per_log": wd}
        group_rows.loc[mine, "covered_cross"] = with_thin_widths(group_rows[mine], w, wd)["covered"].to_numpy()

    groups = pd.DataFrame([{"kind": fr["kind"].iloc[0], "group": fr["group"].iloc[0], **_stats(fr)}
                           for _, fr in group_rows.groupby("left_out", sort=False)]) if len(group_rows) else \
        pd.DataFrame()
    learned = every[every["learn"]]
    summary = {
        "fit_metrics": full.metrics,
        "loo_all": _stats(loo),
        "loo_by_family": {fam: _stats(loo[loo["family"] == fam]) for fam in sorted(set(loo["family"]))},
        "group_out_all": _stats(group_rows) if len(group_rows) else {"n": 0},
        "thin_widths": dict(zip(THIN_LEVELS, widths)),
        "widen_per_log": widen,
        "widen_learned_from": int((every["excess"] >= MIN_WIDEN_EXCESS).sum()),
        "cross_terms": cross_terms,
        "thin_learned_from": {lv: int((learned["thin_level"] == k).sum()) for k, lv in enumerate(THIN_LEVELS)},
        "cells": _stats(cell_rows) if len(cell_rows) else {"n": 0},
        "size_cuts": {src: _stats(fr) for src, fr in trunc_rows.groupby("source")} if len(trunc_rows) else {},
    }
    return Backtest(loo=loo, groups=groups, group_rows=group_rows, summary=summary, cell_rows=cell_rows,
                    widths=widths, full=full, widen_per_log=widen, trunc_rows=trunc_rows)


def plot_backtest(bt: Backtest, path: str) -> str:
    """Predicted against actual (leave-one-out, with 80% intervals; group-out as open markers) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 7))
    colors = {"clipa": "tab:red", "openclip": "tab:blue", "run": "tab:green"}
    for fam, df in bt.loo.groupby("family"):
        c = colors.get(fam, "tab:gray")
        ax.errorbar(df["top1"], df["predicted_top1"],
                    yerr=[df["predicted_top1"] - df["low"], df["high"] - df["predicted_top1"]],
                    fmt="o", ms=4, color=c, alpha=0.8, elinewidth=0.8, label=f"{fam}: leave-one-out")
    if len(bt.group_rows):
        ax.scatter(bt.group_rows["top1"], bt.group_rows["predicted_top1"], facecolors="none", edgecolors="k",
                   s=28, linewidths=0.7, label="leave-one-group-out (size or dataset)")
    both = [bt.loo[["top1", "low", "high", "predicted_top1"]]]
    if len(bt.group_rows):
        both.append(bt.group_rows[["top1", "predicted_top1"]])
    vals = pd.concat(both).to_numpy(dtype=float)
    lo, hi = float(np.nanmin(vals)) - 1, float(np.nanmax(vals)) + 1
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("published zero-shot ImageNet top-1 (%)")
    ax.set_ylabel("predicted top-1 (%), 80% interval")
    s = bt.summary
    fams = ", ".join(f"{k} MAE {v['mae']:.2f}" for k, v in s["loo_by_family"].items())
    ax.set_title(f"Backtest: leave-one-out {fams}; coverage {s['loo_all']['coverage80']:.0%}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
