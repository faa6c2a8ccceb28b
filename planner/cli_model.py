"""The accuracy model's commands: ``clipa predict``, ``clipa backtest``, ``clipa curves``, ``clipa refit``.

Registered into the ``clipa`` app by ``trainer.cli`` (``register(app)``), the console script that composes every
command module; ``study_json``, ``print_study`` and ``json_safe`` are also what ``clipa pilot`` prints with. Every
command follows ``planner.cli``'s conventions: ``--json`` prints one JSON object, bad input is a ``ClipaError`` (one
line, exit code 2), and nothing here imports JAX. Plots use matplotlib's Agg backend, imported only when a plot is
asked for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from planner.cli import DatasetOpt, JsonOpt, ModelOpt, ScheduleOpt, SpecArg, console, print_json, resolve_spec

PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="write a PNG figure to this path")]

# the curves command's reference setting: sizes drawn, and the schedule around the varied pre-training tokens
CURVE_MODELS = ("S/16", "B/16", "L/14", "H/14", "bigG/14")
CURVE_DATASET = "datacomp-1b"
CURVE_PRETRAIN_SAMPLES = "12.8B"
CURVE_TEXT = 32
CURVE_FINETUNE = "512M@224/32"
CURVE_TOKENS = (16, 25, 36, 49, 64, 100, 144, 196, 256, 400, 576)


def predict(
    spec: SpecArg = None,
    model: ModelOpt = None,
    dataset: DatasetOpt = "datacomp-1b",
    schedule: ScheduleOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Predicted zero-shot ImageNet top-1 of a run, its 80% interval and whether the model extrapolates.

    Give a spec file, or --model/--dataset/--schedule in the papers' notation, e.g.
    clipa predict --model H/14 --dataset datacomp-1b --schedule "12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4"
    """
    from planner.accuracy import extrapolation_reasons, load_or_fit, predict_frame
    from planner.features import features_frame, run_features

    s = resolve_spec(spec, model, dataset, schedule)
    fit = load_or_fit()
    feats = run_features(s.model, s.dataset, s.stages)
    row = predict_frame(fit, features_frame([feats])).iloc[0]
    # a fitted local study has its own range; the ImageNet range's reasons would not apply to it
    reasons = [] if s.dataset in fit.studies else extrapolation_reasons(fit, feats)
    out = {
        "run_id": s.run_id,
        "model": s.model,
        "dataset": s.dataset,
        "schedule": s.schedule,
        "predicted_top1": round(float(row.predicted_top1), 3),
        "interval": [round(float(row.low), 3), round(float(row.high), 3)],
        "extrapolated": bool(row.extrapolated),
        "extrapolation": reasons,
        "flags": list(row["flags"]),  # thin data where the run stands (planner.accuracy.thin_data)
        "fit_version": fit.version_for(s.dataset),
    }
    if json_out:
        print_json(out)
        return
    flag = "  [yellow]extrapolated[/yellow]" if out["extrapolated"] else ""
    console.print(f"{s.model} on {s.dataset}: {s.schedule}")
    task = "ImageNet" if s.dataset not in fit.studies else f"{s.dataset} (its own eval split)"
    console.print(
        f"predicted zero-shot {task} top-1 [bold]{out['predicted_top1']:.1f}%[/bold], "
        f"80% interval [{out['interval'][0]:.1f}, {out['interval'][1]:.1f}]{flag}"
    )
    for r in reasons + out["flags"]:
        console.print(f"  - {r}")
    console.print(f"[dim]fit {out['fit_version']}[/dim]")


def backtest(json_out: JsonOpt = False, plot: PlotOpt = None) -> None:
    """How well the accuracy model predicts published results it was not fitted on.

    Leave-one-out over the published runs, and leave-one-group-out (a whole model size; a whole dataset): mean
    absolute error, worst error and the share of actual values inside the 80% interval.
    """
    from planner.backtest import plot_backtest, run_backtest

    bt = run_backtest()
    if plot is not None:
        plot_backtest(bt, str(plot))
    if json_out:
        out = bt.to_dict()
        if plot is not None:
            out["plot"] = str(plot)
        print_json(json_safe(out))
        return
    t = Table(title="Leave-one-out over the published runs")
    for col in ("rows", "n", "MAE", "worst", "80% coverage", "without thin data"):
        t.add_column(col, justify="right")
    s = bt.summary
    for name, st in list(s["loo_by_family"].items()) + [("all", s["loo_all"])]:
        t.add_row(name, str(st["n"]), f"{st['mae']:.2f}", f"{st['worst']:.2f}", f"{st['coverage80']:.0%}",
                  f"{st['coverage80_without_thin']:.0%}")
    console.print(t)
    g = Table(title="Leave-one-group-out (predicting a size or dataset with no results in the fit)")
    for col in ("left out", "n", "MAE", "worst", "80% coverage", "without thin data", "widths learned without it",
                "extrapolated"):
        g.add_column(col, justify="right")
    for r in bt.groups.itertuples():
        g.add_row(f"{r.kind}: {r.group}", str(r.n), f"{r.mae:.2f}", f"{r.worst:.2f}", f"{r.coverage80:.0%}",
                  f"{r.coverage80_without_thin:.0%}", f"{r.coverage80_cross:.0%}", str(r.extrapolated))
    console.print(g)
    console.print("thin-data widths learned here (points of sd): " + ", ".join(
        f"{lv} {w:.2f} ({s['thin_learned_from'][lv]} predictions)" for lv, w in s["thin_widths"].items()))
    w = Table(title="Worst leave-one-out rows")
    for col in ("model", "dataset", "schedule", "actual", "predicted", "80% interval", "error"):
        w.add_column(col, justify="right" if col not in ("model", "dataset", "schedule") else "left")
    worst = bt.loo.reindex(bt.loo["error"].abs().sort_values(ascending=False).index).head(10)
    for r in worst.itertuples():
        w.add_row(r.model, r.dataset, r.schedule, f"{r.top1:.1f}", f"{r.predicted_top1:.1f}",
                  f"[{r.low:.1f}, {r.high:.1f}]", f"{r.error:+.2f}")
    console.print(w)
    if plot is not None:
        console.print(f"plot: {plot}")


def _res_for_tokens(model: str, tokens: int) -> int:
    from planner.variants import decode_variant

    p = decode_variant(model).patch
    return p * max(1, int(round(math.sqrt(tokens))))


def curve_data(fit) -> dict[str, Any]:
    """The fitted inverse-scaling curves (top-1 against pre-training image tokens, before and after a fine-tune,
    per model size, in a reference setting), the published points moved to that setting by their residuals, and
    the Figure-2 fine-tune masking curves with their data."""
    import numpy as np

    from planner.accuracy import FIG2_BASELINE_FT, NOMINAL_PRETRAIN, fitting_data, predict_frame
    from planner.features import features_frame, schedule_features

    def sched(model: str, tokens: int, finetuned: bool) -> str:
        base = f"{CURVE_PRETRAIN_SAMPLES}@{_res_for_tokens(model, tokens)}/{CURVE_TEXT}"
        return f"{base} + {CURVE_FINETUNE}" if finetuned else base

    curves = []
    for m in CURVE_MODELS:
        for ft in (False, True):
            feats = features_frame([schedule_features(m, CURVE_DATASET, sched(m, t, ft)) for t in CURVE_TOKENS])
            pred = predict_frame(fit, feats)
            curves.append({
                "model": m, "finetuned": ft,
                "tokens": feats["pretrain_image_tokens"].astype(int).tolist(),
                "top1": pred["predicted_top1"].round(3).tolist(),
                "low": pred["low"].round(3).tolist(), "high": pred["high"].round(3).tolist(),
            })

    # published points as partial residuals: the reference curve at the point's size and tokens + its residual
    data = fitting_data(include_runs=True)
    rows = data.rows
    own = predict_frame(fit, rows)["predicted_top1"].to_numpy()
    size_to_model = {m.split("/")[0]: m for m in CURVE_MODELS}
    points = []
    for i, r in enumerate(rows.itertuples()):
        m = size_to_model.get(r.size)
        if m is None:
            continue
        ft = bool(r.n_stages > 1)
        tok = int(r.pretrain_image_tokens)
        ref = predict_frame(fit, features_frame([schedule_features(m, CURVE_DATASET, sched(m, tok, ft))]))
        points.append({
            "model": r.model, "curve": m, "dataset": r.dataset, "finetuned": ft, "tokens": tok,
            "top1": float(r.top1), "residual": float(r.top1 - own[i]),
            "on_reference": float(ref["predicted_top1"].iloc[0] + r.top1 - own[i]),
        })

    # Figure 2: drop of a masked 128M fine-tune against the unmasked one
    keeps = np.round(np.linspace(0.15, 1.0, 18), 3)
    fig2_curves = []
    for m in ("S/16", "B/16", "L/16", "H/14"):
        masked = features_frame([schedule_features(m, "laion-400m", f"{NOMINAL_PRETRAIN} + 128M@224/32~{1 - k:.3f}")
                                 if k < 1 else schedule_features(m, "laion-400m", f"{NOMINAL_PRETRAIN} + {FIG2_BASELINE_FT}")
                                 for k in keeps])
        base = features_frame([schedule_features(m, "laion-400m", f"{NOMINAL_PRETRAIN} + {FIG2_BASELINE_FT}")])
        drop = predict_frame(fit, masked)["predicted_top1"].to_numpy() - predict_frame(fit, base)["predicted_top1"].iloc[0]
        fig2_curves.append({"model": m, "keep_ratio": keeps.tolist(), "top1_drop": np.round(drop, 3).tolist()})
    fig2_points = [
        {"model": mm, "keep_ratio": float(k), "top1_drop": float(d)}
        for mm, k, d in zip(data.drops["model"], data.drops["keep_ratio"], data.drops["top1_drop"])
    ]
    return {
        "fit_version": fit.version,
        "reference": {
            "dataset": CURVE_DATASET,
            "pretraining": f"{CURVE_PRETRAIN_SAMPLES} samples at the resolution giving each token count, text {CURVE_TEXT}",
            "finetune": CURVE_FINETUNE,
            "points": "published runs moved to the reference setting: reference curve + the run's residual",
        },
        "curves": curves,
        "points": points,
        "finetune_masking": {"curves": fig2_curves, "points": fig2_points},
    }


def plot_curves(cd: dict[str, Any], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(CURVE_MODELS, ("tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:red")))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    for ax, ft in zip(axes[:2], (False, True)):
        for c in cd["curves"]:
            if c["finetuned"] != ft:
                continue
            col = colors[c["model"]]
            ax.plot(c["tokens"], c["top1"], color=col, label=c["model"])
            ax.fill_between(c["tokens"], c["low"], c["high"], color=col, alpha=0.12)
        for p in cd["points"]:
            if p["finetuned"] == ft:
                ax.scatter(p["tokens"], p["on_reference"], color=colors[p["curve"]], s=18, edgecolors="k",
                           linewidths=0.4, zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pre-training image tokens per sample")
        ax.set_ylabel("zero-shot ImageNet top-1 (%)")
        ax.set_ylim(30, 90)
        ax.grid(alpha=0.3)
        ref = cd["reference"]
        ax.set_title(("after a fine-tune (" + ref["finetune"] + ")" if ft else "pre-training only")
                     + f"\n{ref['dataset']}, {ref['pretraining']}", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    ax = axes[2]
    fm = cd["finetune_masking"]
    fig2_colors = {"S/16": "tab:gray", "B/16": "tab:blue", "L/16": "tab:green", "H/14": "tab:orange"}
    for c in fm["curves"]:
        ax.plot(c["keep_ratio"], c["top1_drop"], color=fig2_colors[c["model"]], label=c["model"])
    for p in fm["points"]:
        ax.scatter(p["keep_ratio"], p["top1_drop"], color=fig2_colors.get(p["model"], "k"), s=18, edgecolors="k",
                   linewidths=0.4, zorder=3)
    ax.set_xlabel("share of image tokens kept in the fine-tune (random masking)")
    ax.set_ylabel("top-1 change vs unmasked fine-tune (points)")
    ax.set_title("fine-tune masking (CLIPA-v2 Figure 2): fitted curves and data", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Inverse scaling: fitted curves (fit {cd['fit_version']}); points = published runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(json_out: JsonOpt = False, plot: PlotOpt = None) -> None:
    """The fitted inverse-scaling curves: top-1 against pre-training image tokens per model size, before and after
    a full-resolution fine-tune, with the published runs on top; and the fine-tune masking curves (Figure 2)."""
    from planner.accuracy import load_or_fit

    fit = load_or_fit()
    cd = curve_data(fit)
    if plot is not None:
        plot_curves(cd, str(plot))
        cd["plot"] = str(plot)
    if json_out:
        print_json(cd)
        return
    t = Table(title=f"Fitted top-1 (%) by pre-training image tokens; {cd['reference']['dataset']}, "
                    f"{CURVE_PRETRAIN_SAMPLES} samples; pre-training only / + {CURVE_FINETUNE}")
    t.add_column("model")
    for tok in CURVE_TOKENS:
        t.add_column(str(tok), justify="right")
    by = {(c["model"], c["finetuned"]): c for c in cd["curves"]}
    for m in CURVE_MODELS:
        a, b = by[(m, False)], by[(m, True)]
        t.add_row(m, *[f"{x:.1f}/{y:.1f}" for x, y in zip(a["top1"], b["top1"])])
    console.print(t)
    f = Table(title="Fine-tune masking: top-1 change vs unmasked 128M fine-tune (fitted)")
    f.add_column("model")
    keep_show = (0.8, 0.5, 0.3, 0.2)
    for k in keep_show:
        f.add_column(f"keep {k:.0%}", justify="right")
    for c in cd["finetune_masking"]["curves"]:
        vals = dict(zip(c["keep_ratio"], c["top1_drop"]))
        f.add_row(c["model"], *[f"{_nearest(vals, k):+.2f}" for k in keep_show])
    console.print(f)
    if plot is not None:
        console.print(f"plot: {plot}")


def _nearest(vals: dict[float, float], k: float) -> float:
    return vals[min(vals, key=lambda x: abs(x - k))]


def refit(
    json_out: JsonOpt = False,
    no_runs: Annotated[bool, typer.Option("--no-runs", help="fit the published rows only")] = False,
) -> None:
    """Refit the accuracy model on the published and executed results, save it as a new fit version
    (results/fits/<version>.json) and print its parameters and fit metrics; every local study with runs is refitted
    on its own runs (results/fits/study-<dataset>-<version>.json)."""
    from planner.accuracy import load_or_fit
    from planner.paths import fits_dir

    fit = load_or_fit(refit=True, include_runs=not no_runs)  # saved as results/fits/<version>.json
    path = fits_dir() / f"{fit.version}.json"
    sd = fit.param_sd()
    if json_out:
        d = fit.to_dict()
        d.pop("cov")
        d["param_sd"] = sd
        d["path"] = str(path)
        d["studies"] = {ds: study_json(st) for ds, st in fit.studies.items()}
        print_json(json_safe(d))
        return
    console.print(_param_table(f"Accuracy model fit {fit.version} ({path})", fit.params, sd, "fixed"))
    m = fit.metrics
    fams = ", ".join(f"{k} {v:.2f}" for k, v in m.get("mae_by_family", {}).items())
    console.print(
        f"{m['rows']} rows + {m['drop_rows']} Figure-2 drops (ImageNet study; local runs are fitted per study); "
        f"in-sample MAE {m['mae']:.2f} ({fams}); drop MAE {m.get('drop_mae', float('nan')):.2f}; "
        f"residual noise {fit.sigma:.2f}; at a bound: {', '.join(m['at_bound']) or 'none'}"
    )
    for st in fit.studies.values():
        print_study(st)


def _param_table(title: str, params: dict[str, float], sd: dict[str, float], not_free: str) -> Table:
    """Fitted parameters with their standard deviations; ``ln_`` parameters also in natural units."""
    t = Table(title=title)
    for col in ("parameter", "value", "sd", "natural value"):
        t.add_column(col, justify="right" if col != "parameter" else "left")
    for k, v in params.items():
        nat = f"{math.exp(v):.4g}" if k.startswith("ln_") else ""
        t.add_row(k, f"{v:.4g}", f"{sd[k]:.3g}" if k in sd else not_free, nat)
    return t


def study_json(st) -> dict[str, Any]:
    """One local study's fit as ``--json`` prints it (``clipa refit``, ``clipa pilot``): parameters and their sd."""
    d = st.to_dict()
    d.pop("cov")
    return {**d, "param_sd": st.param_sd()}


def print_study(st) -> None:
    """One local study's fitted reduced law (``planner.studies``) as a table."""
    sd = st.param_sd()
    title = f"Study {st.study} fit {st.version} ({st.metrics['rows']} runs, chance {st.chance:.2f}%)"
    console.print(_param_table(title, st.params, sd, "shared"))
    m = st.metrics
    console.print(f"in-sample MAE {m['mae']:.2f} points (max {m['max_abs_error']:.2f}); residual noise "
                  f"{st.sigma:.2f}; dof {m['dof']:.1f}; at a bound: {', '.join(m['at_bound']) or 'none'}")
    if m.get("held_out_mae"):  # how far the ImageNet priors were let go (planner.studies.prior_scale)
        cv = ", ".join(f"{k}x {v:.2f}" for k, v in m["held_out_mae"].items())
        console.print(f"ImageNet priors at {m['prior_scale']:g}x their widths, chosen by held-out MAE ({cv})")
    if m.get("forward"):  # how the interval grows beyond the study's runs (planner.studies.forward_widening)
        from planner.law import widen_per_log
        from planner.recipe import format_samples

        worst = max(m["forward"], key=lambda r: abs(r["error"]))
        console.print(f"beyond its runs the interval grows {widen_per_log(st)['other']:.2f} per log unit, learned "
                      f"from {len(m['forward'])} forward predictions of each model's longest runs (largest miss "
                      f"{worst['error']:+.1f} points at {format_samples(int(worst['samples']))} samples)")
    native = f"native {st.native_res} px" if st.native_res else "native resolution unknown"
    console.print(f"data: {round(100.0 / st.chance)} classes (chance {st.chance:.2f}%), {native}, "
                  f"eval {st.eval_n} images")
    for line in st.assumed:  # constants the runs' records did not carry (old records)
        console.print(f"  not recorded: {line}")


def json_safe(o: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("backtest")(backtest)
    app.command("curves")(curves)
    app.command("refit")(refit)
