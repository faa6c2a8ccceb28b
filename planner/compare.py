"""Predicted against actual for executed runs: per-run errors, interval hits, and summaries per fit version.

Every result record carries the prediction its plan made (value, 80% interval, fit version). Grouping by fit version
shows whether the error shrinks as runs accumulate and the curves are refitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.runs import RunResult


def comparison_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(results, key=lambda r: r.finished_at):
        p = r.prediction
        row: dict[str, Any] = {
            "run_id": r.run_id, "model": r.model, "dataset": r.dataset, "schedule": r.spec.schedule,
            "eval_task": r.eval_task, "actual_top1": r.top1, "cost_usd": r.cost_usd,
            "finished_at": r.finished_at.isoformat(),
        }
        if p is not None:
            row.update({
                "predicted_top1": p.predicted_top1, "interval": [p.low, p.high], "fit_version": p.fit_version,
                "extrapolated": p.extrapolated, "flags": p.flags, "error": r.top1 - p.predicted_top1,
                "inside_interval": p.low <= r.top1 <= p.high,
            })
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MAE and interval coverage per fit version (in order of first use), and overall."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "predicted_top1" in r:
            groups.setdefault(r["fit_version"], []).append(r)
    out = []
    for version, rs in groups.items():
        out.append(_stats(version, rs))
    scored = [r for r in rows if "predicted_top1" in r]
    if scored:
        out.append(_stats("all", scored))
    return out


def _stats(name: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
    errs = [abs(r["error"]) for r in rs]
    return {"fit_version": name, "runs": len(rs), "mae": sum(errs) / len(errs), "worst": max(errs),
            "coverage": sum(r["inside_interval"] for r in rs) / len(rs)}


def plot_calibration(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if "predicted_top1" in r]
    fig, ax = plt.subplots(figsize=(5, 5))
    versions = list(dict.fromkeys(r["fit_version"] for r in scored))
    for i, v in enumerate(versions):
        rs = [r for r in scored if r["fit_version"] == v]
        x = [r["predicted_top1"] for r in rs]
        y = [r["actual_top1"] for r in rs]
        lo = [r["predicted_top1"] - r["interval"][0] for r in rs]
        hi = [r["interval"][1] - r["predicted_top1"] for r in rs]
        ax.errorbar(x, y, xerr=[lo, hi], fmt="o", capsize=3, color=f"C{i}", label=f"fit {v}")
    if scored:
        lo_ = min(min(r["interval"][0], r["actual_top1"]) for r in scored) - 1
        hi_ = max(max(r["interval"][1], r["actual_top1"]) for r in scored) + 1
        ax.plot([lo_, hi_], [lo_, hi_], color="grey", lw=1, ls="--", label="predicted = actual")
    ax.set_xlabel("predicted top-1 (%) with 80% interval")
    ax.set_ylabel("measured top-1 (%)")
    ax.set_title("clipa compare: calibration")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
