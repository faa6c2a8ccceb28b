r"""The ImageNet study: zero-shot ImageNet top-1 of a CLIP run from its model, dataset and stages, with an interval.

This module is the published study's configuration of the one law (``planner.law``, where the formula, the
interval, the data's range and the fit cache are written): its units and parameters, why the law has this form, the
rows it is fitted to (published and executed runs on web-scale datasets), its estimator, and its saved fit versions
(``results/fits/<version>.json``). It imports numpy and pandas only; scipy is imported inside the fit, so a planner
that loads a cached fit starts fast.

The law in this study's units (n = image-tower transformer parameters / 1e8, D = samples / 1e9, image tokens
relative to 256 patches, text relative to 32 tokens, no chance floor; every constant is fitted unless said
otherwise)::

    top1   = softplus(100 - err)                          (a smooth floor at 0; equal to 100 - err above ~5)
    err    = E + m_d (A n^-alpha + B D_eff^-beta + p)
    D_eff  = D                                           if D <= U_d (the dataset's unique samples)
           = U_d (1 + R (1 - exp(-(D/U_d - 1) / R)))     otherwise;  R = R* min(n, n_cap)^-rho  (epochs)
    pen(T, L) = n^-gamma [ c_i ((T_eff/256)^-kappa - 1) + c_t max(0, (L/32)^-kappa_t - 1) ]
    T_eff  = kept image tokens x (patch/16)^-zeta x (eta if the stage masks in blocks)
    p      = pen(stage 1); for each later stage k with S_k samples:
             p <- q_k + (p - q_k) exp(-S_k / (s0 j_k^psi)),  q_k = pen(stage k),  j_k = max(1, T_k / T_(k-1))

Why this form, by the four things it must capture:

1. *Power laws in size and samples* (OpenCLIP scaling, Cherti et al. 2023): the saturating additive form
   ``E + A n^-alpha + B D^-beta``; E (what no CLIP reaches; ImageNet's own label noise is several percent) is
   bounded below by 5. Samples beyond a dataset's unique size (``planner.datasets``) count less and less
   (Muennighoff et al. 2023), with a half-life R in epochs that shrinks with model size (``rho``): in the OpenCLIP
   grid LAION-80M costs L/14 more than B/16 (larger models exhaust repeated data sooner), and bigG on LAION-2B
   (17 epochs) falls short of the law without it. Without ``rho`` the OpenCLIP rows fit with a mean error of 0.88
   points, with it 0.62. The size dependence stops at ``n_cap``, the largest model with more than 15 epochs in the
   data (no extrapolation of the overfitting beyond where it was seen). Consequence: accuracy rises with model
   size and samples everywhere, except that on data seen more than about ten times a larger model may lose.
2. *Dataset quality* multiplies the reducible error (``m_d = exp(delta_d)``, LAION-400M = 1): a better dataset
   removes a share of what is left to gain, so its advantage in points shrinks as models grow (an offset in points
   fits the data as well but carries DataComp's +6 points at L/14 unchanged to bigG). A dataset without results (a
   new ``local:`` one) gets the mean multiplier, the multipliers' spread (at least 0.25) as extra uncertainty, and
   the extrapolation flag.
3. *Inverse scaling law* (CLIPA): the loss from fewer image tokens or shorter text is a power law in the tokens
   times ``n^-gamma``, so it shrinks as the model grows. Every way of removing image tokens counts the same per kept
   token (lower resolution, random or grid masking; see ``planner.features``) except block masking (efficiency
   ``eta``, CLIPA-v2 Table 2) and large patches (a /32 token is worth ``2^-zeta`` of a /16 one, from B/32 against
   B/16). The image penalty is 0 at 256 tokens and a gain above (bounded by ``c_i n^-gamma``); text loses nothing
   at 32 tokens or more (CLIPA's full caption length).
4. *Fine-tuning* moves the token penalty from the pre-training level towards the fine-tune stage's level,
   exponentially in its samples: most of the loss comes back, with diminishing returns, and the samples needed
   grow with the jump in tokens (``s0 j^psi``: 16 -> 256 tokens takes about twice the samples of 36 -> 256). A
   masked fine-tune aims at a higher penalty (fewer tokens), with the same ``n^-gamma``: masking costs larger
   models less (CLIPA-v2 Figure 2, fitted as differences between masked and unmasked fine-tunes of one
   pre-training). Fine-tune samples also count in D.

Fit: ``scipy.optimize.least_squares`` (bounded, ``soft_l1`` loss with a scale of 1 point), residuals weighted by
how the value was obtained (reported 1, digitized 0.7, external 0.5). Interval: the Gauss-Newton covariance
``s^2 (J^T J)^+`` propagated through the prediction's gradient, plus the residual noise, as a normal 80% interval;
outside the data's range (model size, samples, tokens, text, fine-tune length, dataset; and pre-training tokens
below the fewest any model of that size or smaller was trained with) the half-width grows in proportion to the summed
log-distance outside the range, and the prediction is flagged ``extrapolated``. The growth per log unit is learned
with the thin-data widths (below) from the backtest's predictions outside their refit's range (a model size or the
largest sizes left out, ``learn_range_widening``) and stored in the fit file (``thin_data.widen_per_log``).

Thin data (``thin_data``): the law carries one model size's behaviour to another and one dataset's to another, and
the interval above only knows the fit's own noise. So the variance of a prediction grows with how thin the data are
where it stands: the runs of its model size (``model_size``: the tower, B for B/16 and B/32) on its dataset, one of
``THIN_LEVELS`` (many, one, none on this dataset, none of this size at all). Each level adds a variance ``w^2``
whose width ``w`` is learned from the backtest's refits (``out_of_sample``, ``learn_thin_widths``: per level, the
80% quantile of what each out-of-sample error needs beyond its in-sample interval), stored in the fit file
(``thin_data``; ``thin_widths``), and the prediction carries the reason (``flags``, e.g. ``no g/14 on
datacomp-1b``). A dataset without results is the dataset term's case, not this one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from planner import law
from planner.datasets import DATASETS, is_local
from planner.errors import ClipaError
from planner.features import MAX_STAGES, features_frame, run_features, schedule_features
from planner.law import Design, LawFit, Param, ParamVector

MODEL_VERSION = "clipa-acc-1"
WEIGHTS = {"reported": 1.0, "digitized": 0.7, "external": 0.5}
REFERENCE_DATASET = "laion-400m"
# Figure 2 does not report its pre-training: a CLIPA-v1-like one is assumed (the 128M fine-tunes recover from it
# almost completely, so the fitted drop hardly depends on this choice).
NOMINAL_PRETRAIN = "2.56B@112/16"
FIG2_BASELINE_FT = "128M@224/32"

# internal coordinates: logs of positive scales
_BASE_PARAMS: tuple[Param, ...] = (
    Param("E", 8.0, 5.0, 50.0),
    Param("ln_A", 2.0, -5.0, 8.0),
    Param("alpha", 0.3, 0.01, 2.0),
    Param("ln_B", 2.0, -5.0, 8.0),
    Param("beta", 0.3, 0.01, 2.0),
    Param("ln_Rstar", math.log(10.0), math.log(0.5), math.log(1000.0)),
    Param("rho", 0.5, -1.0, 2.0),
    Param("ln_ci", 0.5, -8.0, 6.0),
    Param("kappa", 1.0, 0.1, 3.0),
    Param("ln_ct", 0.0, -10.0, 6.0),
    Param("kappa_t", 1.0, 0.1, 6.0),
    Param("gamma", 0.35, 0.0, 1.5),
    Param("ln_s0", math.log(0.05), math.log(0.005), math.log(2.0)),
    Param("psi", 0.5, 0.0, 4.0),
    Param("eta", 0.7, 0.2, 1.0),
    Param("zeta", 0.0, -2.0, 2.0),
)
IMAGENET_LAW = law.LawConfig(kind="imagenet", n_unit=1e8, d_unit=1e9, d_floor=1e-6, params=_BASE_PARAMS)
HEAVY_REPEAT_EPOCHS = 15.0  # "heavily repeated" data for n_cap: OpenCLIP's LAION-80M/400M runs, bigG on LAION-2B
DATASET_BOUND = 3.0  # |log multiplier| of a dataset's reducible error
# The uncertainty of a new dataset's multiplier is the spread of the fitted ones, but at least this: DataComp-1B
# sits 0.26 below LAION-400M, so a web-scale dataset of unknown curation can be that far off either way.
MIN_DATASET_SD = 0.25
PREDICTION_COLUMNS = ["predicted_top1", "low", "high", "extrapolated", "flags"]
# how thin the data are where a run stands: runs of its model size on its dataset (planner.accuracy.thin_data)
THIN_LEVELS = ("many runs", "one run", "no run on the dataset", "no run of the size")


class Prediction(NamedTuple):
    predicted_top1: float
    low: float
    high: float
    extrapolated: bool
    flags: tuple[str, ...] = ()  # thin data where the run stands, e.g. "no g/14 on datacomp-1b"


# ---------------------------------------------------------------------------------------------------------------------
# thin data


def model_size(model: str) -> str:
    """The model size a run counts for: its image tower (``B`` for B/16 and B/32)."""
    return str(model).split("/")[0]


def cell_counts(rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Fitted runs per model size and dataset: ``{size: {dataset: runs}}``."""
    counts = rows.groupby([rows["model"].map(model_size), rows["dataset"].astype(str)]).size()
    out: dict[str, dict[str, int]] = {}
    for (size, ds), n in sorted(counts.items()):
        out.setdefault(size, {})[ds] = int(n)
    return out


def thin_level(cells: dict[str, dict[str, int]], model: str, dataset: str) -> int:
    """Index into ``THIN_LEVELS`` of a run of ``model`` on ``dataset`` given the fitted runs ``cells``; 0 for a
    dataset without results (the dataset term widens those)."""
    if not any(dataset in by_ds for by_ds in cells.values()):
        return 0
    size = cells.get(model_size(model), {})
    n = size.get(dataset, 0)
    return 0 if n >= 2 else 1 if n == 1 else 2 if size else 3


def thin_reason(cells: dict[str, dict[str, int]], model: str, dataset: str) -> tuple[str, ...]:
    """The flag of a thin cell (empty where the model size has several runs on the dataset)."""
    level, size = thin_level(cells, model, dataset), model_size(model)
    return ((), (f"one {size} run on {dataset}",),
            (f"no {model} on {dataset}",), (f"no {model} on {dataset} (no {size} run anywhere)",))[level]


def thin_data(fit: LawFit, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Per row: the thin-data level, its learned variance (points^2; 0 while the fit has no widths) and flags."""
    cells = fit.thin.get("cells", {})
    widths = fit.thin.get("widths")
    pairs = list(zip(features["model"].astype(str), features["dataset"].astype(str)))
    memo = {pr: (thin_level(cells, *pr), thin_reason(cells, *pr)) for pr in set(pairs)}
    level = np.array([memo[pr][0] for pr in pairs], dtype=int)
    var = np.asarray(widths, dtype=float)[level] ** 2 if widths else np.zeros(len(pairs))
    return level, var, [memo[pr][1] for pr in pairs]


# ---------------------------------------------------------------------------------------------------------------------
# prediction


def _is_named(dataset: str) -> bool:
    """Datasets whose multiplier enters the mean a dataset without results gets: the web-scale ones."""
    return not is_local(dataset)


def predict_frame(fit: LawFit, features: pd.DataFrame, detail: bool = False) -> pd.DataFrame:
    """Predictions for a frame of ``planner.features`` rows: predicted_top1, low, high (80%), extrapolated, flags
    (thin data, ``thin_data``); with ``detail`` also the interval's parts (``planner.law.predict``: sd, the range
    excess) and the thin-data level.

    Rows of a fitted local study (``fit.studies``) are predicted by that study's fit (a different quantity than
    ImageNet top-1; with its range excess columns and its own flags, ``planner.studies.thin_flags``). Vectorised."""
    if len(features) == 0:
        return pd.DataFrame({c: [] for c in PREDICTION_COLUMNS}, index=features.index)
    own = np.array([d in fit.studies for d in features["dataset"]], dtype=bool) if fit.studies else None
    if own is not None and own.any():
        from planner.studies import predict_study

        parts = [predict_frame(law.without_studies(fit), features[~own], detail)] if (~own).any() else []
        for ds in sorted(set(features["dataset"][own])):
            parts.append(predict_study(fit.studies[ds], features[features["dataset"] == ds]))
        out = pd.concat(parts).reindex(features.index)
        out["extrapolated"] = out["extrapolated"].astype(bool)
        return out
    level, var, flags = thin_data(fit, features)
    out = law.predict(fit, IMAGENET_LAW, features, _is_named, extra_var=var)
    out["flags"] = flags
    if detail:
        out["thin_level"] = level
        return out
    return out[PREDICTION_COLUMNS]


def predict_stages(fit: LawFit, model: str, dataset: str, stages: list) -> Prediction:
    """One run's prediction (see ``predict_frame``)."""
    row = predict_frame(fit, features_frame([run_features(model, dataset, stages)])).iloc[0]
    return Prediction(float(row.predicted_top1), float(row.low), float(row.high), bool(row.extrapolated),
                      tuple(row["flags"]))


def extrapolation_reasons(fit: LawFit, feats: dict) -> list[str]:
    """Why one run's ImageNet prediction is flagged (empty inside the data's range)."""
    return law.extrapolation_reasons(fit.ranges, feats, feats["dataset"] in fit.datasets)


# ---------------------------------------------------------------------------------------------------------------------
# fitting


@dataclass
class FitData:
    """What a fit consumes: absolute rows (features + top1 + value_kind) and Figure-2 style drop rows."""

    rows: pd.DataFrame  # features columns + top1, value_kind
    drops_masked: pd.DataFrame  # features of the masked fine-tune run
    drops_unmasked: pd.DataFrame  # features of the same run fine-tuned without masking
    drops: pd.DataFrame  # top1_drop, value_kind (aligned with the two frames above)

    def hash(self) -> str:
        """Content hash of what the fit sees (not of labels or notes)."""
        h = hashlib.sha256()
        cols = ["model", "dataset", "n_params", "patch", "total_samples"] + [
            f"s{i}_{c}" for i in range(MAX_STAGES) for c in ("samples", "image_tokens", "text_len", "block_mask")
        ]
        for frame, extra in ((self.rows, ["top1", "value_kind"]),):
            h.update(frame[cols + extra].to_csv(index=False, float_format="%.10g").encode())
        for frame in (self.drops_masked, self.drops_unmasked):
            h.update(frame[cols].to_csv(index=False, float_format="%.10g").encode())
        h.update(self.drops[["top1_drop", "value_kind"]].to_csv(index=False, float_format="%.10g").encode())
        return h.hexdigest()[:16]


def fitting_data(include_runs: bool = True) -> FitData:
    """The ImageNet study's rows: the published rows, Figure 2 and (optionally) executed runs on web-scale datasets,
    as features. Runs on ``local:`` datasets measure another task (their own held-out split) and are left out here
    explicitly; ``planner.studies`` fits them on their own."""
    from planner.results import load_finetune_masking, load_results
    from planner.datasets import IMAGENET_TASK
    from planner.studies import study_mask

    res = load_results(include_runs=include_runs)
    res = res[study_mask(res["dataset"], IMAGENET_TASK)].reset_index(drop=True)
    feats = [schedule_features(r.model, r.dataset, r.schedule) for r in res.itertuples()]
    rows = features_frame(feats)
    rows["top1"] = res["top1"].to_numpy(float)
    rows["value_kind"] = res["value_kind"].to_numpy()
    rows["key"] = res["key"].to_numpy()
    rows["family"] = res["family"].to_numpy()
    cur = load_finetune_masking()
    masked = features_frame(
        [schedule_features(c.model, c.dataset, f"{NOMINAL_PRETRAIN} + {c.finetune}") for c in cur.itertuples()]
    )
    unmasked = features_frame(
        [schedule_features(c.model, c.dataset, f"{NOMINAL_PRETRAIN} + {FIG2_BASELINE_FT}") for c in cur.itertuples()]
    )
    return FitData(rows, masked, unmasked, cur[["top1_drop", "value_kind", "model", "keep_ratio"]].copy())


def code_hash() -> str:
    """The study's code identity: the law, the feature definitions and this configuration (the thin-data widths a
    fit file carries are learned here too)."""
    return law.files_hash(*law.LAW_FILES, Path(__file__).resolve(), salt=MODEL_VERSION)


def _param_table(datasets: list[str], reference: str) -> list[Param]:
    return list(IMAGENET_LAW.params) + [Param(f"ds:{d}", 0.0, -DATASET_BOUND, DATASET_BOUND) for d in datasets
                                 if d != reference]


def fit_accuracy(
    data: FitData,
    *,
    start: dict[str, float] | None = None,
    fixed: dict[str, float] | None = None,
    max_nfev: int = 4000,
) -> LawFit:
    """Fit the law to ``data`` (deterministic: same data and start give the same fit).

    ``data`` must hold the ImageNet study's rows only (``fitting_data`` leaves local runs out; a ``local:`` row
    raises): a local dataset's top-1 is measured on another task and is fitted by ``planner.studies``. ``start``
    seeds parameters (e.g. a previous fit, for fast leave-one-out); ``fixed`` holds parameters at given values."""
    from scipy.optimize import least_squares

    rows = data.rows
    local_mask = np.array([is_local(d) for d in rows["dataset"]], dtype=bool)
    if local_mask.any():
        raise ClipaError("results", f"rows of local datasets {sorted(set(rows['dataset'][local_mask]))} cannot enter "
                         "the ImageNet study's fit (planner.studies fits each local study on its own)")
    named = rows
    if len(named) == 0:
        raise ClipaError("results", "no results on a named dataset to fit the accuracy law to")
    present = [d for d in DATASETS if d in set(named["dataset"])] + sorted(
        set(named["dataset"]) - set(DATASETS)
    )
    reference = REFERENCE_DATASET if REFERENCE_DATASET in present else present[0]
    fixed = dict(fixed or {})
    fixed.setdefault("n_rep_cap", _rep_cap(named))
    vec = ParamVector.build(_param_table(present, reference), fixed, start, margin=1e-9)
    names, lo, hi = vec.names, vec.lower, vec.upper

    X = Design.from_frame(named, IMAGENET_LAW)
    y = named["top1"].to_numpy(float)
    w = named["value_kind"].map(WEIGHTS).fillna(1.0).to_numpy(float)
    XM = Design.from_frame(data.drops_masked, IMAGENET_LAW)
    XU = Design.from_frame(data.drops_unmasked, IMAGENET_LAW)
    yd = data.drops["top1_drop"].to_numpy(float)
    wd = data.drops["value_kind"].map(WEIGHTS).fillna(1.0).to_numpy(float)

    # dataset -> column of the multiplier vector (0: the reference, fixed at 0)
    slot = {d: i for i, d in enumerate(present)}
    ds_rows = np.array([slot[d] for d in X.dataset], dtype=int)
    ds_m = np.array([slot.get(d, 0) for d in XM.dataset], dtype=int)
    ds_u = np.array([slot.get(d, 0) for d in XU.dataset], dtype=int)

    def logm_of(p: dict[str, float], idx: np.ndarray) -> np.ndarray:
        vec = np.array([0.0 if d == reference else p[f"ds:{d}"] for d in present])
        return vec[idx]

    def top1(p: dict[str, float], D: Design, idx: np.ndarray) -> np.ndarray:
        return law.top1(p, D, logm_of(p, idx), d_floor=IMAGENET_LAW.d_floor, t_ref=256.0, chance=0.0)

    def residuals(x: np.ndarray) -> np.ndarray:
        p = vec.unpack(x)
        r_abs = (top1(p, X, ds_rows) - y) * w
        if len(yd):
            drop = top1(p, XM, ds_m) - top1(p, XU, ds_u)
            return np.concatenate([r_abs, (drop - yd) * wd])
        return r_abs

    sol = least_squares(residuals, vec.x0, bounds=(lo, hi), loss="soft_l1", f_scale=1.0, x_scale="jac",
                        max_nfev=max_nfev)
    p = vec.unpack(sol.x)
    m, k = len(sol.fun), len(names)
    dof = max(m - k, 1)
    s2 = 2.0 * sol.cost / dof
    # Gauss-Newton covariance over every fitted parameter, those at a bound included: their Jacobian column is
    # not a curvature there, but leaving them out makes the other parameters look far better determined than they
    # are (E at its floor trades off against A and alpha).
    cov = law.covariance(sol.jac, s2)

    # residual noise of a reported top-1: robust (soft_l1) scale of the absolute rows
    r_abs = (top1(p, X, ds_rows) - y) * w
    sigma = float(math.sqrt(2.0 * np.sum(np.sqrt(1.0 + r_abs**2) - 1.0) / max(len(r_abs) - k * len(r_abs) / m, 1.0)))

    dsets = {reference: 0.0}
    dsets.update({d: p[f"ds:{d}"] for d in present if d != reference})
    vals = np.array(list(dsets.values()))
    dataset_sd = float(max(np.std(vals, ddof=1) if len(vals) > 1 else 0.0, MIN_DATASET_SD))

    # the thin-data widths are learned by the backtest and attached by load_or_fit; the counts are this fit's
    fit = LawFit(kind=IMAGENET_LAW.kind, params=p, free=list(names), cov=cov.tolist(), sigma=sigma,
                 ranges=law.data_ranges(named, token_floor=True), datasets=dsets, dataset_sd=dataset_sd,
                 model_version=MODEL_VERSION, thin={"cells": cell_counts(named)})
    pred = top1(p, X, ds_rows)
    err = pred - y
    fam = named["family"].to_numpy() if "family" in named else np.array(["?"] * len(named))
    fit.metrics = {
        "rows": int(len(named)),
        "drop_rows": int(len(yd)),
        "parameters": k,
        "cost": float(sol.cost),
        "nfev": int(sol.nfev),
        "status": int(sol.status),
        "residual_scale": math.sqrt(s2),
        "mae": float(np.mean(np.abs(err))),
        "mae_by_family": {f: float(np.mean(np.abs(err[fam == f]))) for f in sorted(set(fam))},
        "max_abs_error": float(np.max(np.abs(err))),
        "at_bound": vec.at_bound(sol.x),
    }
    if len(yd):
        drop = top1(p, XM, ds_m) - top1(p, XU, ds_u)
        fit.metrics["drop_mae"] = float(np.mean(np.abs(drop - yd)))
    return fit


def _rep_cap(rows: pd.DataFrame) -> float:
    """Largest model size (units of 1e8) among rows trained for more than ``HEAVY_REPEAT_EPOCHS`` epochs: beyond it
    the law keeps the repetition half-life fixed (without such rows: the largest size in the data)."""
    uniq = rows["dataset"].map(lambda d: DATASETS[d].unique_samples if d in DATASETS else np.inf).to_numpy(float)
    heavy = rows["total_samples"].to_numpy(float) > HEAVY_REPEAT_EPOCHS * uniq
    n = rows["n_params"].to_numpy(float) / 1e8
    return float(n[heavy].max() if heavy.any() else n.max())


# ---------------------------------------------------------------------------------------------------------------------
# versions on disk


def load_or_fit(refit: bool = False, include_runs: bool = True) -> LawFit:
    """The fit of the current data and code: from ``results/fits/<version>.json`` when it exists (unless ``refit``),
    else fitted now and saved (``planner.law.cached_or_fit``). The version is a hash of the data rows and of the
    law's code, so new runs or a changed law give a new version and the old files stay as history. Local studies
    are fitted (or loaded) too and attached as ``fit.studies``."""
    data = fitting_data(include_runs=include_runs)
    dh, ch = data.hash(), code_hash()
    version = law.fit_version(dh, ch)

    def fit_now() -> LawFit:
        fit = fit_accuracy(data)
        fit.version, fit.data_hash, fit.code_hash = version, dh, ch
        fit.thin["widths"], fit.thin["widen_per_log"] = thin_widths(ch)
        return fit

    fit = law.cached_or_fit(f"{version}.json", dh, ch, refit, fit_now)
    from planner.studies import load_or_fit_studies

    fit.studies = load_or_fit_studies(fit.params, refit=refit, include_runs=include_runs)
    return fit


def thin_widths(code: str) -> tuple[list[float], dict[str, float]]:
    """The thin-data widths (points, one per ``THIN_LEVELS``) and the range widening per log unit of this code:
    learned from the out-of-sample predictions of the published rows (``out_of_sample``, ``learn_interval_terms``),
    so executed runs change a fit's cell counts but not its interval terms. Read from the published rows' fit file
    (shipped in results/fits/, or cached) whatever ``refit`` says; learned (half a minute of refits) and saved with
    that fit only when no file of this code has them."""
    published = fitting_data(include_runs=False)
    ph = published.hash()
    version = law.fit_version(ph, code)

    def learn() -> LawFit:
        full, *predictions = out_of_sample(published)
        full.version, full.data_hash, full.code_hash = version, ph, code
        full.thin["widths"], full.thin["widen_per_log"] = learn_interval_terms(pd.concat(predictions,
                                                                                         ignore_index=True))
        return full

    fit = law.cached_or_fit(f"{version}.json", ph, code, False, learn)
    if not fit.thin.get("widths") or "widen_per_log" not in fit.thin:  # a file of this code written without them
        fit = law.cached_or_fit(f"{version}.json", ph, code, True, learn)
    return [float(w) for w in fit.thin["widths"]], {k: float(v) for k, v in fit.thin["widen_per_log"].items()}


# ---------------------------------------------------------------------------------------------------------------------
# out-of-sample predictions (the backtest's refits, planner.backtest) and the thin-data widths learned from them


def _subset(data: FitData, keep_rows: np.ndarray, keep_drops: np.ndarray) -> FitData:
    return FitData(
        rows=data.rows[keep_rows].reset_index(drop=True),
        drops_masked=data.drops_masked[keep_drops].reset_index(drop=True),
        drops_unmasked=data.drops_unmasked[keep_drops].reset_index(drop=True),
        drops=data.drops[keep_drops].reset_index(drop=True),
    )


def oos_frame(rows: pd.DataFrame, fit: LawFit, label: str = "") -> pd.DataFrame:
    """A refit's predictions of ``rows`` (its own interval, no widths) with what learning the widths needs: the
    in-sample sd, the 80% quantile ``z``, the range widening, the thin-data level and whether it is learned from."""
    pred = predict_frame(fit, rows, detail=True)
    out = rows[["key", "family", "model", "dataset", "top1"]].copy()
    out = out.join(pred[["predicted_top1", "low", "high", "extrapolated", "sd"]])
    out["error"] = out["predicted_top1"] - out["top1"]
    out["covered"] = (out["top1"] >= out["low"]) & (out["top1"] <= out["high"])
    out["z"] = fit.quantile
    out["excess"] = pred["samples_excess"] + pred["other_excess"]
    out["excess_size"] = pred["size_excess"]
    out["thin_level"] = pred["thin_level"]
    lo, hi = fit.ranges["n_params"]
    n = rows["n_params"].to_numpy(float)
    known = rows["dataset"].isin(list(fit.datasets)).to_numpy()
    # learned from: a size inside the refit's size range, on a dataset the refit has results for
    out["learn"] = known & (n >= lo * (1 - 1e-9)) & (n <= hi * (1 + 1e-9))
    out["source"] = label
    return out


def out_of_sample(data: FitData) -> tuple[LawFit, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The fit of every row, and ``oos_frame`` predictions of refits without: each row (leave-one-out), each model
    size and each dataset (leave-one-group-out; ``left_out``, ``kind``, ``group`` columns), each model size x dataset
    cell (where the size has runs elsewhere and the dataset other runs), each cell of several runs thinned to its
    middle run by top-1, and the model-size range cut at each inner size (``size_truncations``: the smaller sizes
    predicted from the larger ones and back, the extrapolations ``learn_range_widening`` learns from). Refits start
    from the full fit's parameters (seconds each, not minutes)."""
    rows = data.rows
    full = fit_accuracy(data)
    start = full.params
    n = len(rows)
    all_drops = np.ones(len(data.drops), dtype=bool)
    loo = []
    for i in range(n):
        keep = np.ones(n, dtype=bool)
        keep[i] = False
        f = fit_accuracy(_subset(data, keep, all_drops), start=start, max_nfev=400)
        loo.append(oos_frame(rows.iloc[[i]], f, "leave one out"))

    groups = []
    sizes = rows["model"].map(model_size)
    drop_sizes = data.drops["model"].map(model_size)
    drop_ds = data.drops_masked["dataset"]
    for kind, labels, drop_labels in (("model size", sizes, drop_sizes), ("dataset", rows["dataset"], drop_ds)):
        for g in sorted(set(labels)):
            out_rows = (labels == g).to_numpy()
            if out_rows.all():
                continue
            f = fit_accuracy(_subset(data, ~out_rows, (drop_labels != g).to_numpy()), start=start, max_nfev=600)
            fr = oos_frame(rows[out_rows], f, f"{kind}: {g}")
            fr.insert(0, "left_out", f"{kind}: {g}")
            fr.insert(1, "kind", kind)
            fr.insert(2, "group", g)
            groups.append(fr)

    cells = []
    for (size, ds), idx in rows.groupby([sizes, rows["dataset"]]).groups.items():
        in_cell = rows.index.isin(idx)
        cell_drops = ((drop_sizes == size) & (drop_ds == ds)).to_numpy()
        # a size or dataset without other runs: its group-out above is this case
        if not ((in_cell | (sizes != size).to_numpy()).all() or (in_cell | (rows["dataset"] != ds).to_numpy()).all()):
            f = fit_accuracy(_subset(data, ~in_cell, ~cell_drops), start=start, max_nfev=600)
            cells.append(oos_frame(rows[in_cell], f, f"cell left out: {size} on {ds}"))
        if in_cell.sum() >= 2:
            cell = rows[in_cell].sort_values(["top1", "key"])
            thinned = in_cell & (rows.index != cell.index[len(cell) // 2])
            f = fit_accuracy(_subset(data, ~thinned, ~cell_drops), start=start, max_nfev=600)
            cells.append(oos_frame(rows[thinned], f, f"cell thinned to one run: {size} on {ds}"))

    # the size range cut between two sizes, each side predicted from the other: extrapolations of one to two log
    # units beyond the sizes fitted (the two outermost cuts are the size groups above)
    truncs = []
    by_params = rows.groupby(sizes)["n_params"].min().sort_values()
    order = list(by_params.index)
    for k in range(2, len(order) - 1):
        small = sizes.isin(order[:k]).to_numpy()
        small_drops = drop_sizes.isin(order[:k]).to_numpy()
        for label, out_rows, out_drops in ((f"sizes {'/'.join(order[:k])} from larger", small, small_drops),
                                           (f"sizes {'/'.join(order[k:])} from smaller", ~small, ~small_drops)):
            if out_rows.all():
                continue
            f = fit_accuracy(_subset(data, ~out_rows, ~out_drops), start=start, max_nfev=600)
            truncs.append(oos_frame(rows[out_rows], f, f"size range cut: {label}"))

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames) if frames else pd.DataFrame()

    return full, cat(loo), cat(groups), cat(cells), cat(truncs)


def _widen(df: pd.DataFrame, widen: dict[str, float]) -> np.ndarray:
    size = df["excess_size"].to_numpy(float)
    return law.widening(widen, size, df["excess"].to_numpy(float) - size)


def _need(df: pd.DataFrame, widen: dict[str, float]) -> np.ndarray:
    """Per prediction: the extra standard deviation its error needs beyond its in-sample interval (points)."""
    scaled = df["error"].abs().to_numpy(float) / (df["z"].to_numpy(float) * _widen(df, widen))
    return np.sqrt(np.maximum(scaled**2 - df["sd"].to_numpy(float) ** 2, 0.0))


def learn_thin_widths(predictions: pd.DataFrame, widen: dict[str, float] | None = None) -> list[float]:
    """Thin-data width per ``THIN_LEVELS`` from out-of-sample predictions (``oos_frame`` rows with ``learn``): the
    ``law.COVER_QUANTILE`` quantile of what each error needs beyond its in-sample interval, ``sqrt(max(0, (|error| /
    (z widen))^2 - sd^2))``, non-decreasing with thinness (a level without predictions takes the thicker one's)."""
    widen = widen or dict.fromkeys(law.WIDEN_AXES, law.WIDEN_PER_LOG)
    df = predictions[predictions["learn"]]
    need, level = _need(df, widen), df["thin_level"].to_numpy(int)
    widths, last = [], 0.0
    for k in range(len(THIN_LEVELS)):
        if (level == k).any():
            last = max(last, float(np.quantile(need[level == k], law.COVER_QUANTILE)))
        widths.append(last)
    return widths


def learn_range_widening(predictions: pd.DataFrame, widths: list[float]) -> dict[str, float]:
    """The interval's growth per log unit outside the refit's range, per ``planner.law.WIDEN_AXES``, from the
    out-of-sample predictions at least ``law.MIN_WIDEN_EXCESS`` outside it: the model size from those outside the size
    range (a size left out, the size range cut), the other axes from those outside only them (samples, tokens, text
    beyond the refit's). What a prediction needs is ``max(0, |error| / (z sqrt(sd^2 + w_level^2)) - 1 - widening of
    the other group) / excess``; the other axes take its ``law.COVER_QUANTILE`` quantile, the size axis the largest such
    quantile of any one backtest (0 without such predictions)."""
    w = np.asarray(widths, dtype=float)[predictions["thin_level"].to_numpy(int)]
    inner = predictions["z"].to_numpy(float) * np.sqrt(predictions["sd"].to_numpy(float) ** 2 + w**2)
    error = predictions["error"].to_numpy(float)
    size = predictions["excess_size"].to_numpy(float)
    other = predictions["excess"].to_numpy(float) - size
    out = {}
    pure_other = (other >= law.MIN_WIDEN_EXCESS) & (size < law.MIN_WIDEN_EXCESS)
    out["other"] = float(np.quantile(law.widen_need(error, inner, other)[pure_other], law.COVER_QUANTILE)) \
        if pure_other.any() else 0.0
    # the size axis: every backtest that extrapolates in size (a size left out, each side of the size range cut)
    # must cover its share on its own, so the widening is the largest of their quantiles; pooled, the many cheap
    # extrapolations that the parameters' own uncertainty already covers would hide the one that it does not
    sized = size >= law.MIN_WIDEN_EXCESS
    src = predictions["source"].to_numpy()
    need = law.widen_need(error, inner, size, covered=out["other"] * other)
    out["model size"] = max((float(np.quantile(need[sized & (src == s)], law.COVER_QUANTILE))
                             for s in set(src[sized])), default=0.0)
    return out


def learn_interval_terms(predictions: pd.DataFrame, rounds: int = 8) -> tuple[list[float], dict[str, float]]:
    """The thin-data widths and the range widening, learned together from out-of-sample predictions: each depends
    on the other (an extrapolated error is shared between them), so alternate from the widening's starting value
    (``planner.law.WIDEN_PER_LOG``) until neither moves."""
    widen = dict.fromkeys(law.WIDEN_AXES, law.WIDEN_PER_LOG)
    widths = learn_thin_widths(predictions, widen)
    for _ in range(rounds):
        new = learn_range_widening(predictions, widths)
        widths = learn_thin_widths(predictions, new)
        done = all(abs(new[k] - widen[k]) < 1e-4 for k in widen)
        widen = new
        if done:
            break
    return widths, widen


def with_thin_widths(df: pd.DataFrame, widths: list[float], widen: dict[str, float]) -> pd.DataFrame:
    """``oos_frame`` predictions with the thin-data widths and the range widening in their intervals: low, high and
    covered."""
    w = np.asarray(widths, dtype=float)[df["thin_level"].to_numpy(int)]
    half = df["z"] * _widen(df, widen) * np.sqrt(df["sd"] ** 2 + w**2)
    df = df.copy()
    df["low"] = np.clip(df["predicted_top1"] - half, 0.0, 100.0)
    df["high"] = np.clip(df["predicted_top1"] + half, 0.0, 100.0)
    df["covered"] = (df["error"].abs() <= half).to_numpy()
    return df
