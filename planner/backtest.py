"""Out-of-sample checks of the accuracy model on the published rows, and the thin-data widths learned from them.

Leave-one-out refits the law without one published run and predicts it (the Figure-2 drops stay in every fit).
Leave-one-group-out removes a whole model size (B, L, H, bigG: every patch size of that tower, and its Figure-2
curve) or a whole dataset, so that the prediction is the extrapolation a user gets for a size or dataset without
results. Two more refits per model size x dataset cell measure thin data inside it: the cell left out (the size has
runs on other datasets only) and the cell thinned to its middle run (one run there). Refits start from the full
fit's parameters, so the whole backtest takes seconds, not minutes.

Thin-data widths (``learn_thin_widths``, used by ``planner.accuracy.thin_data``): every out-of-sample prediction
above has a thin-data level relative to its refit (``planner.accuracy.THIN_LEVELS``); what its error needs beyond
its in-sample interval is ``need = sqrt(max(0, (|error| / (z m))^2 - sd^2))`` (z: the 80% quantile, m: the range
widening, sd: the in-sample standard deviation), and a level's width is the 80% quantile of ``need`` over its
predictions, made non-decreasing from many runs to none. Predictions of a size outside the refit's model-size range
(B or bigG left out) and of a dataset without results are left out of the learning: the range widening and the
dataset term are theirs. Each prediction's interval is reported with the widths (``low``, ``high``, ``covered``)
and without (``covered_without_thin``); coverage with widths learned without the group itself is
``covered_cross`` (honest for the left-out groups, whose errors otherwise set their own width).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from planner.accuracy import (THIN_LEVELS, FitData, fit_accuracy, fitting_data, model_size, predict_frame,
                              thin_level)
from planner.law import WIDEN_PER_LOG, LawFit

THIN_QUANTILE = 0.8  # a level's width covers this share of its out-of-sample errors (the interval is 80%)


@dataclass
class Backtest:
    loo: pd.DataFrame  # one row per published run: actual, predicted, interval, error, covered, extrapolated
    groups: pd.DataFrame  # one row per (kind, group) left out: n, mae, worst, coverage
    group_rows: pd.DataFrame  # the group-out predictions row by row
    summary: dict[str, Any] = field(default_factory=dict)
    cell_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # cell left out / thinned to one run
    widths: list[float] = field(default_factory=list)  # learned thin-data widths, one per THIN_LEVELS
    full: LawFit | None = None  # the fit of every row (no widths attached)

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


def _subset(data: FitData, keep_rows: np.ndarray, keep_drops: np.ndarray) -> FitData:
    return FitData(
        rows=data.rows[keep_rows].reset_index(drop=True),
        drops_masked=data.drops_masked[keep_drops].reset_index(drop=True),
        drops_unmasked=data.drops_unmasked[keep_drops].reset_index(drop=True),
        drops=data.drops[keep_drops].reset_index(drop=True),
    )


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


def _frame(rows: pd.DataFrame, fit: LawFit, label: str = "") -> pd.DataFrame:
    """A refit's predictions of ``rows`` (its own interval, no widths) with what learning the widths needs."""
    pred = predict_frame(fit, rows, detail=True)
    out = rows[["key", "family", "model", "dataset", "top1"]].copy()
    out = out.join(pred[["predicted_top1", "low", "high", "extrapolated", "sd"]])
    out["error"] = out["predicted_top1"] - out["top1"]
    out["covered"] = (out["top1"] >= out["low"]) & (out["top1"] <= out["high"])
    out["z"] = fit.quantile
    out["widen"] = 1.0 + WIDEN_PER_LOG * (pred["samples_excess"] + pred["other_excess"])
    out["thin_level"] = [thin_level(fit.thin["cells"], m, d) for m, d in zip(rows["model"], rows["dataset"])]
    lo, hi = fit.ranges["n_params"]
    n = rows["n_params"].to_numpy(float)
    known = rows["dataset"].isin(list(fit.datasets)).to_numpy()
    # learned from: a size inside the refit's size range, on a dataset the refit has results for
    out["learn"] = known & (n >= lo * (1 - 1e-9)) & (n <= hi * (1 + 1e-9))
    out["source"] = label
    return out


def _need(df: pd.DataFrame) -> np.ndarray:
    """Per prediction: the extra standard deviation its error needs beyond its in-sample interval (points)."""
    scaled = df["error"].abs().to_numpy(float) / (df["z"].to_numpy(float) * df["widen"].to_numpy(float))
    return np.sqrt(np.maximum(scaled**2 - df["sd"].to_numpy(float) ** 2, 0.0))


def learn_thin_widths(predictions: pd.DataFrame) -> list[float]:
    """Thin-data width per ``THIN_LEVELS`` from out-of-sample predictions (``_frame`` columns; rows with ``learn``):
    the ``THIN_QUANTILE`` quantile of what each error needs beyond its in-sample interval, non-decreasing with
    thinness (a level without predictions takes the thicker level's width)."""
    df = predictions[predictions["learn"]]
    need, level = _need(df), df["thin_level"].to_numpy(int)
    widths, last = [], 0.0
    for k in range(len(THIN_LEVELS)):
        if (level == k).any():
            last = max(last, float(np.quantile(need[level == k], THIN_QUANTILE)))
        widths.append(last)
    return widths


def _apply(df: pd.DataFrame, widths: list[float], col: str = "covered") -> pd.DataFrame:
    """The predictions' intervals with thin-data widths: low/high and ``col``."""
    w = np.asarray(widths, dtype=float)[df["thin_level"].to_numpy(int)]
    half = df["z"] * df["widen"] * np.sqrt(df["sd"] ** 2 + w**2)
    covered = (df["error"].abs() <= half).to_numpy()
    if col == "covered":
        df["low"] = np.clip(df["predicted_top1"] - half, 0.0, 100.0)
        df["high"] = np.clip(df["predicted_top1"] + half, 0.0, 100.0)
    df[col] = covered
    return df


def run_backtest(data: FitData | None = None, schedules: pd.Series | None = None) -> Backtest:
    """Leave-one-out over the published rows, leave-one-group-out by model size and by dataset, each model size x
    dataset cell left out and thinned to one run; the thin-data widths learned from all of them."""
    if data is None:
        from planner.results import load_results

        data = fitting_data(include_runs=False)
        schedules = load_results(include_runs=False)["schedule"]
    rows = data.rows
    full = fit_accuracy(data)
    start = full.params
    n = len(rows)
    all_drops = np.ones(len(data.drops), dtype=bool)

    loo_parts = []
    for i in range(n):
        keep = np.ones(n, dtype=bool)
        keep[i] = False
        f = fit_accuracy(_subset(data, keep, all_drops), start=start, max_nfev=400)
        loo_parts.append(_frame(rows.iloc[[i]], f, "leave one out"))
    loo = pd.concat(loo_parts)
    loo["schedule"] = schedules.to_numpy() if schedules is not None else ""

    group_frames = []
    sizes = rows["model"].map(model_size)
    drop_sizes = data.drops["model"].map(model_size)
    drop_ds = data.drops_masked["dataset"]
    for kind, labels, drop_labels in (("model size", sizes, drop_sizes), ("dataset", rows["dataset"], drop_ds)):
        for g in sorted(set(labels)):
            out_rows = (labels == g).to_numpy()
            keep_drops = (drop_labels != g).to_numpy()
            if out_rows.all():
                continue
            f = fit_accuracy(_subset(data, ~out_rows, keep_drops), start=start, max_nfev=600)
            fr = _frame(rows[out_rows], f, f"{kind}: {g}")
            fr.insert(0, "left_out", f"{kind}: {g}")
            fr.insert(1, "kind", kind)
            fr.insert(2, "group", g)
            group_frames.append(fr)
    group_rows = pd.concat(group_frames) if group_frames else pd.DataFrame()

    # thin cells: each size x dataset cell left out (where the size has runs elsewhere and the dataset has other
    # runs) and each cell of several runs thinned to its middle run by top-1
    cell_frames = []
    for (size, ds), idx in rows.groupby([sizes, rows["dataset"]]).groups.items():
        in_cell = rows.index.isin(idx)
        cell_drops = ((drop_sizes == size) & (drop_ds == ds)).to_numpy()
        if (in_cell | (sizes != size).to_numpy()).all() or (in_cell | (rows["dataset"] != ds).to_numpy()).all():
            pass  # the size or the dataset has no other runs: its group-out is this case
        else:
            f = fit_accuracy(_subset(data, ~in_cell, ~cell_drops), start=start, max_nfev=600)
            cell_frames.append(_frame(rows[in_cell], f, f"cell left out: {size} on {ds}"))
        if in_cell.sum() >= 2:
            cell = rows[in_cell].sort_values(["top1", "key"])
            middle = cell.index[len(cell) // 2]
            thinned = in_cell & (rows.index != middle)
            f = fit_accuracy(_subset(data, ~thinned, ~cell_drops), start=start, max_nfev=600)
            cell_frames.append(_frame(rows[thinned], f, f"cell thinned to one run: {size} on {ds}"))
    cell_rows = pd.concat(cell_frames) if cell_frames else pd.DataFrame()

    every = pd.concat([loo, group_rows, cell_rows], ignore_index=True)
    widths = learn_thin_widths(every)
    for df in (loo, group_rows, cell_rows):
        if len(df):
            df["covered_without_thin"] = df["covered"]
            _apply(df, widths)
            df["covered_cross"] = df["covered"]
    # a group's coverage with widths learned without it: the honest number for what its errors taught the widths
    for label in set(group_rows["left_out"]) if len(group_rows) else ():
        mine = group_rows["left_out"] == label
        w = learn_thin_widths(every[every["source"] != label])
        group_rows.loc[mine, "covered_cross"] = _apply(group_rows[mine].copy(), w, "c")["c"].to_numpy()

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
        "thin_learned_from": {lv: int((learned["thin_level"] == k).sum()) for k, lv in enumerate(THIN_LEVELS)},
        "cells": _stats(cell_rows) if len(cell_rows) else {"n": 0},
    }
    return Backtest(loo=loo, groups=groups, group_rows=group_rows, summary=summary, cell_rows=cell_rows,
                    widths=widths, full=full)


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
