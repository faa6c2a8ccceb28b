"""Out-of-sample checks of the accuracy model on the published rows: leave-one-out and leave-one-group-out.

Leave-one-out refits the law without one published run and predicts it (the Figure-2 drops stay in every fit).
Leave-one-group-out removes a whole model size (B, L, H, bigG: every patch size of that tower, and its Figure-2
curve) or a whole dataset, so that the prediction is the extrapolation a user gets for a size or dataset without
results. Each prediction carries the 80% interval of the refit; coverage is the share of actual values inside it.
Refits start from the full fit's parameters, so the whole backtest takes seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from planner.accuracy import FitData, fit_accuracy, fitting_data, predict_frame


@dataclass
class Backtest:
    loo: pd.DataFrame  # one row per published run: actual, predicted, interval, error, covered, extrapolated
    groups: pd.DataFrame  # one row per (kind, group) left out: n, mae, worst, coverage
    group_rows: pd.DataFrame  # the group-out predictions row by row
    summary: dict[str, Any] = field(default_factory=dict)

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
        "extrapolated": int(df["extrapolated"].sum()),
    }


def _frame(rows: pd.DataFrame, pred: pd.DataFrame) -> pd.DataFrame:
    out = rows[["key", "family", "model", "dataset", "top1"]].copy()
    out = out.join(pred)
    out["error"] = out["predicted_top1"] - out["top1"]
    out["covered"] = (out["top1"] >= out["low"]) & (out["top1"] <= out["high"])
    return out


def run_backtest(data: FitData | None = None, schedules: pd.Series | None = None) -> Backtest:
    """Leave-one-out over the published rows and leave-one-group-out by model size and by dataset."""
    if data is None:
        from planner.results import load_results

        data = fitting_data(include_runs=False)
        schedules = load_results(include_runs=False)["schedule"]
    rows = data.rows
    full = fit_accuracy(data)
    start = full.params
    n = len(rows)
    all_drops = np.ones(len(data.drops), dtype=bool)

    preds = []
    for i in range(n):
        keep = np.ones(n, dtype=bool)
        keep[i] = False
        f = fit_accuracy(_subset(data, keep, all_drops), start=start, max_nfev=400)
        preds.append(predict_frame(f, rows.iloc[[i]]))
    loo = _frame(rows, pd.concat(preds))
    loo["schedule"] = schedules.to_numpy() if schedules is not None else ""

    group_frames, group_stats = [], []
    sizes = rows["model"].str.split("/").str[0]
    drop_sizes = data.drops["model"].str.split("/").str[0]
    drop_ds = data.drops_masked["dataset"]
    for kind, labels, drop_labels in (("model size", sizes, drop_sizes), ("dataset", rows["dataset"], drop_ds)):
        for g in sorted(set(labels)):
            out_rows = (labels == g).to_numpy()
            keep_drops = (drop_labels != g).to_numpy()
            if out_rows.all():
                continue
            f = fit_accuracy(_subset(data, ~out_rows, keep_drops), start=start, max_nfev=600)
            fr = _frame(rows[out_rows], predict_frame(f, rows[out_rows]))
            fr.insert(0, "left_out", f"{kind}: {g}")
            group_frames.append(fr)
            group_stats.append({"kind": kind, "group": g, **_stats(fr)})
    group_rows = pd.concat(group_frames) if group_frames else pd.DataFrame()
    groups = pd.DataFrame(group_stats)

    summary = {
        "fit_metrics": full.metrics,
        "loo_all": _stats(loo),
        "loo_by_family": {fam: _stats(loo[loo["family"] == fam]) for fam in sorted(set(loo["family"]))},
        "group_out_all": _stats(group_rows) if len(group_rows) else {"n": 0},
    }
    return Backtest(loo=loo, groups=groups, group_rows=group_rows, summary=summary)


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
