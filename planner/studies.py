r"""Studies: which results may be fitted together, and the local studies' configuration of the law (``planner.law``).

A *study* is a dataset together with the evaluation task its top-1 measures. Every web-scale dataset is evaluated
zero-shot on ImageNet-1k, so they form one study (``imagenet-1k``) and share one law (``planner.accuracy``): their
differences are the dataset multipliers. A ``local:NAME`` dataset is evaluated on its own held-out split
(``zeroshot:local:NAME``; ``planner.datasets.eval_task`` owns the string, and a run record's ``eval_task`` is it), so its top-1 is a different
quantity: local runs never enter the ImageNet fit, and ImageNet rows never enter a local fit. What a local study
*shares* with the ImageNet study is the law's structure and, as priors, its exponents.

The local configuration of the law (``planner.law``; units: n = image-tower params / 1e5, D = samples seen / 1e4,
image tokens relative to ``t_ref``, the most kept tokens any run of the study used (the data's full resolution), the
floor c = chance = 100 / number of classes)::

    top1 = c + softplus(100 - c - E - err),   err = A n^-alpha + B D^-beta + p   (p: the law's token penalty and
                                                                                 fine-tune relaxation, unchanged)

Why reduced: a pilot has 6-15 runs, far too few for the 16+ constants of the ImageNet law. Free: the scale terms
``ln_A``, ``ln_B``, ``ln_ci``, ``ln_ct`` (this dataset's own offsets for size, samples, image and text tokens), the
ceiling ``E`` (top-1 saturates at 100 - E: a generated dataset's classes are not all separable; prior 10 +- 20
points, since a pilot far below the ceiling hardly measures it), the fine-tune constant ``ln_s0`` (prior 2,000
samples, sd 1) and, with Gaussian priors at the ImageNet fit's values (MAP), what the published study knows about
scaling: the exponents ``alpha`` (size) and ``beta`` (samples) and the token penalty's shape, ``kappa`` (how fast
the penalty grows as tokens are dropped) and ``gamma`` (how it shrinks with model size). How far those transfer is
decided per study by a held-out test (``prior_scale``): the study is refitted with the priors' widths scaled by
each of ``PRIOR_SCALES`` in K-fold cross validation over its own runs, and the narrowest width whose fits predict
the held-out runs within one standard error of the best is used (a study whose runs follow the ImageNet shape
keeps it nearly fixed; one whose runs do not frees it; a pilot too small to tell keeps the narrow prior). Shared unchanged from the ImageNet fit: psi and eta (fine-tune jump and block masking, which a pilot
can not pin down); kappa_t is fixed at 1 (the ImageNet fit leaves it at a bound). Constants: no data repetition (a
local dataset has no unique-sample limit in ``planner.datasets``), no patch term (zeta = 0). The chance level is a
floor, not a parameter: below it the law predicts chance.

Interval (``planner.law.predict``): Gauss-Newton covariance of the MAP fit (prior rows included) through the
prediction's gradient, plus the residual noise, both at least the binomial noise of the evaluation split (a pilot's
few residuals can look far too good), with Student-t quantiles for the few degrees of freedom; outside the study's
range (model size, samples, tokens, text, fine-tune samples) the half-width grows with the summed log-distance
outside, by what the study's own forward predictions needed (``forward_widening``: each size's longest runs
predicted without them; at least half per log unit), and the prediction is flagged ``extrapolated``. Samples are
judged per model size too: a run beyond the most samples its own tower was trained on extrapolates, even inside
the samples range of the other towers (the law's size and samples terms add, so a pilot's short runs of a larger
tower cannot say how much more it gains from many samples: loop 6's pilot ran xs/8 to 42K, and its 10x plan, xs/8
at 1.24M, was predicted 18.4 [14.5, 22.2] as an interpolation and scored 28.0). Each prediction also says in
words where it stands beyond the study's runs (``thin_flags``: a size without runs, samples beyond a size's reach,
and image-token counts at which that size has no run or only shorter ones), which ``clipa plan`` and ``clipa
predict`` print.

Fits are saved as ``results/fits/study-<name>-<version>.json`` (``planner.law.cached_or_fit``); the version hashes
the study's rows, the shared constants and the law's code, so a new run gives a new version and old files stay as
history.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from planner import law
from planner.datasets import eval_task, is_local
from planner.errors import ClipaError
from planner.features import MAX_STAGES
from planner.law import LawFit, Param, ParamVector

MIN_STUDY_RUNS = 3  # below this a local study has no fit of its own (it is predicted at chance, flagged)
DEFAULT_CLASSES = 64  # ``clipa data synth``: 64 "colour shape" classes
DEFAULT_EVAL_N = 1000
SHARED = ("psi", "eta")  # taken unchanged from the ImageNet fit (a pilot cannot pin them down)
# the ImageNet study's exponents and token-penalty shape: priors of a local fit, at the ImageNet values, with widths
# the held-out test (``prior_scale``) scales
TRANSFERRED = ("alpha", "beta", "gamma", "kappa")
# The ImageNet fit puts kappa_t at its upper bound (6: text loses nothing until very short captions, so the curve's
# shape there is not identified); a local study with 8-32 token captions gets the power law's plain prior instead.
KAPPA_T = 1.0
# the transferred priors' widths are these multiples of the widths in _LOCAL_PARAMS; the one whose fits predict the
# study's held-out runs best is used (0.25: the ImageNet values nearly fixed; 4: nearly free)
PRIOR_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
CV_FOLDS = 6  # the held-out test: at most this many folds (leave-one-out on a smaller study)
# "imagenet:<p>" as a prior mean takes the ImageNet fit's value.
_LOCAL_PARAMS: tuple[Param, ...] = (
    Param("ln_A", math.log(30.0), -8.0, 10.0),
    Param("alpha", 0.3, 0.0, 2.0, ("imagenet:alpha", 0.15)),
    Param("ln_B", math.log(60.0), -8.0, 10.0),
    Param("beta", 0.5, 0.02, 3.0, ("imagenet:beta", 0.25)),
    Param("gamma", 0.3, 0.0, 1.5, ("imagenet:gamma", 0.15)),
    Param("kappa", 1.0, 0.05, 4.0, ("imagenet:kappa", 0.3)),
    Param("ln_ci", 0.0, -10.0, 6.0, (0.0, 3.0)),
    Param("ln_ct", 0.0, -10.0, 6.0, (0.0, 3.0)),
    Param("ln_s0", math.log(0.2), math.log(0.005), math.log(50.0), (math.log(0.2), 1.0)),
    # the ceiling: top-1 saturates at 100 - E (a generated dataset's classes are not all separable: occlusion,
    # textures below the resolution); a pilot far below it hardly measures E, so its prior keeps it moderate
    Param("E", 10.0, 0.0, 95.0, (10.0, 20.0)),
)
LOCAL_LAW = law.LawConfig(
    kind="local-study", n_unit=1e5, d_unit=1e4, d_floor=1e-4, params=_LOCAL_PARAMS, shared=SHARED,
    # no patch term, no repetition (a local dataset has no unique-sample limit, so the repetition constants are
    # never used), kappa_t fixed
    constants=(("zeta", 0.0), ("ln_Rstar", 0.0), ("rho", 0.0), ("n_rep_cap", 1.0), ("kappa_t", KAPPA_T)),
)


def study_mask(datasets: Any, study: str) -> np.ndarray:
    """Which rows (by dataset name) belong to ``study`` (a study is an evaluation task, ``planner.datasets.eval_task``)."""
    return np.array([eval_task(d) == study for d in datasets], dtype=bool)


def local_top1(p: dict[str, float], features: pd.DataFrame, t_ref: float, chance: float) -> np.ndarray:
    """The law's top-1 (percent) of each features row in the local configuration, with parameters ``p``."""
    return LOCAL_LAW.evaluate(p, features, t_ref=t_ref, chance=chance)


# ---------------------------------------------------------------------------------------------------------------------
# the fit


def _resolved_priors(shared: dict[str, float], scale: float = 1.0) -> list[Param]:
    """The parameter table with "imagenet:<p>" prior means resolved from ``shared`` and those priors' widths times
    ``scale`` (the transferred priors; the local ones keep their widths)."""
    out = []
    for t in LOCAL_LAW.params:
        if t.prior is not None and isinstance(t.prior[0], str):
            mean = float(shared.get(t.prior[0].split(":", 1)[1], t.start))
            mean = min(max(mean, t.lower), t.upper)
            t = Param(t.name, mean, t.lower, t.upper, (mean, t.prior[1] * scale))
        out.append(t)
    return out


@dataclass
class _Solved:
    vec: ParamVector
    x: np.ndarray
    fun: np.ndarray
    jac: np.ndarray
    cost: float
    nfev: int
    status: int


def _noise_floor(y: np.ndarray, eval_n: int) -> float:
    """The evaluation split's binomial noise (points, RMS over the rows)."""
    pf = np.clip(y / 100.0, 0.005, 0.995)
    return float(np.sqrt(np.mean(1e4 * pf * (1 - pf) / max(eval_n, 1))))


def _solve(rows: pd.DataFrame, shared: dict[str, float], chance: float, t_ref: float, noise_floor: float,
           scale: float, fixed: dict[str, float] | None, starts: list[np.ndarray] | None = None) -> _Solved:
    """The MAP fit (bounded least squares, prior rows in units of the noise floor) of ``rows`` at prior scale
    ``scale``; from the given starts, else from a few shifts of the scale terms."""
    from scipy.optimize import least_squares

    held = {**dict(LOCAL_LAW.constants), **{k: float(shared[k]) for k in LOCAL_LAW.shared}, **(fixed or {})}
    vec = ParamVector.build(_resolved_priors(shared, scale), held, margin=1e-6)
    names, lo, hi = vec.names, vec.lower, vec.upper
    X = law.Design.from_frame(rows, LOCAL_LAW)
    zero = np.zeros(len(rows))
    y = rows["top1"].to_numpy(float)

    def residuals(x: np.ndarray) -> np.ndarray:
        r = law.top1(vec.unpack(x), X, zero, d_floor=LOCAL_LAW.d_floor, t_ref=t_ref, chance=chance) - y
        pr = [(x[i] - m) / sd * noise_floor for i, (m, sd) in vec.priors]
        return np.concatenate([r, pr])

    if starts is None:
        # a few starts: the pilot's few points leave the samples/size split ambiguous, and a bad start stalls at
        # chance. Each from the prior's ceiling and from one just above the best run (E = 100 - 2 max top-1): runs on
        # a plateau are fitted either by a flat curve far below a high ceiling or by a low ceiling, and a start at
        # one rarely reaches the other (a fresh-clone pilot's 11 runs without mu/8's longest: from the prior's
        # ceiling alone the fit stopped at 16 times the cost of the low-ceiling one, and predicted that run at
        # chance)
        ceilings = [None]
        if "E" in names:
            high = 100.0 - 2.0 * float(np.max(y, initial=0.0))
            if high > vec.x0[names.index("E")] + 1.0:
                ceilings.append(min(high, hi[names.index("E")] - 1e-6))
        starts = []
        for ceiling in ceilings:
            for shift in (0.0, -1.5, 1.5):
                start = vec.x0.copy()
                for j, n in enumerate(names):
                    if n in ("ln_A", "ln_B"):
                        start[j] = np.clip(start[j] + shift, lo[j] + 1e-6, hi[j] - 1e-6)
                    elif n == "E" and ceiling is not None:
                        start[j] = ceiling
                starts.append(start)
    best = None
    for start in starts:
        sol = least_squares(residuals, np.clip(start, lo + 1e-9, hi - 1e-9), bounds=(lo, hi), x_scale="jac",
                            max_nfev=3000)
        if best is None or sol.cost < best.cost - 1e-9:
            best = sol
    return _Solved(vec, best.x, best.fun, best.jac, float(best.cost), int(best.nfev), int(best.status))


def held_out_errors(rows: pd.DataFrame, shared: dict[str, float], *, chance: float, eval_n: int = DEFAULT_EVAL_N,
                    scale: float = 1.0, fixed: dict[str, float] | None = None,
                    folds: int = CV_FOLDS) -> np.ndarray:
    """Each row's error (predicted - measured, points) when the study is fitted without it: ``folds``-fold cross
    validation (leave-one-out with fewer rows), rows dealt to folds in order. The test that decides how much a local
    study may lean on the ImageNet priors (``prior_scale``)."""
    m = len(rows)
    k = min(folds, m)
    fold = np.arange(m) % k
    t_ref = float(rows["max_image_tokens"].max())
    floor = _noise_floor(rows["top1"].to_numpy(float), eval_n)
    # each fold starts from the fit of all rows (one start instead of the full fit's several: a fold moves it little)
    start = _solve(rows, shared, chance, t_ref, floor, scale, fixed).x
    err = np.zeros(m)
    for j in range(k):
        train, test = rows[fold != j], rows[fold == j]
        sol = _solve(train.reset_index(drop=True), shared, chance, t_ref, floor, scale, fixed, starts=[start])
        err[fold == j] = (local_top1(sol.vec.unpack(sol.x), test, t_ref, chance) - test["top1"].to_numpy(float))
    return err


def prior_scale(rows: pd.DataFrame, shared: dict[str, float], *, chance: float, eval_n: int = DEFAULT_EVAL_N,
                fixed: dict[str, float] | None = None) -> tuple[float, dict[float, float]]:
    """How far the ImageNet priors transfer to this study: of ``PRIOR_SCALES``, the width multiplier whose fits
    predict held-out runs best (mean absolute error), or the narrowest within one standard error of it
    (``one_standard_error_choice``), and the error of each."""
    abs_err = {s: np.abs(held_out_errors(rows, shared, chance=chance, eval_n=eval_n, scale=s, fixed=fixed))
               for s in PRIOR_SCALES}
    return one_standard_error_choice(abs_err), {s: float(np.mean(e)) for s, e in abs_err.items()}


def one_standard_error_choice(abs_err: dict[float, np.ndarray]) -> float:
    """The narrowest prior width whose held-out MAE is within one standard error of the best width's (the
    one-standard-error rule of cross validation). A pilot's dozen held-out runs cannot tell widths apart by less:
    loop 5's pilot scored 1.73 at 4x against 1.77 at 0.25x (standard error 0.3), and the wider prior freed the size
    exponent, which two model sizes cannot pin down, so its plans' intervals for the next tower up spanned 1.6-34.6%.
    ``abs_err``: each width's absolute held-out errors."""
    maes = {s: float(np.mean(e)) for s, e in abs_err.items()}
    best = min(maes, key=lambda s: (maes[s], s))
    e = np.asarray(abs_err[best], dtype=float)
    tolerance = float(np.std(e, ddof=1) / math.sqrt(len(e))) if len(e) > 1 else 0.0
    return min(s for s in maes if maes[s] <= maes[best] + tolerance)


def forward_widening(rows: pd.DataFrame, shared: dict[str, float], *, dataset: str, chance: float,
                     eval_n: int = DEFAULT_EVAL_N, fixed: dict[str, float] | None = None,
                     scale: float = 1.0) -> tuple[float, list[dict[str, float]]]:
    """The study's interval growth per log unit beyond its runs, learned from its own forward predictions: each
    model size's longest runs predicted by a refit without them (from that size's shorter runs and the other
    sizes), as each plan is predicted from the runs before it. A prediction at least ``law.MIN_WIDEN_EXCESS`` log
    units beyond the refit's range needs ``law.widen_need`` (its miss beyond the in-range half-width, per log unit
    outside); the study takes the ``law.COVER_QUANTILE`` quantile of those needs, and at least
    ``law.WIDEN_PER_LOG``. Returns it and one record per prediction (n_params, samples, error, excess, need).

    Why (issue 19, loop 9 replayed): a pilot's forward errors are small (1-2 points at 2-4x a tower's reach), so its
    plans keep the default; once a plan's run has missed (xs/8 at 328K samples scored 30.4, predicted 23.6 from runs
    to 165K), the next plan's interval grows with what that miss needed (plan 4, xs/8 at 3.42M samples after runs
    to 891K: [27.9, 64.0] with the default 0.5 per log unit, [7.1, 84.7] learned; it scored 77.1)."""
    needs: list[float] = []
    records: list[dict[str, float]] = []
    sizes = rows["n_params"].to_numpy(float)
    for n in sorted(set(sizes)):
        tower = sizes == n
        longest = tower & (rows["total_samples"].to_numpy(float) >= rows.loc[tower, "total_samples"].max())
        train = rows[~longest].reset_index(drop=True)
        if longest.all() or not (train["n_params"] == n).any() or len(train) < MIN_STUDY_RUNS:
            continue  # a size with one sample count has nothing shorter to predict its longest run from
        refit = fit_study(train, shared, dataset=dataset, chance=chance, eval_n=eval_n, fixed=fixed, scale=scale,
                          forward=False)
        test = rows[longest]
        pred = law.predict(refit, LOCAL_LAW, test)
        excess = (pred["samples_excess"] + pred["other_excess"] - pred["size_excess"]).to_numpy(float)
        error = pred["predicted_top1"].to_numpy(float) - test["top1"].to_numpy(float)
        inner = refit.quantile * pred["sd"].to_numpy(float)
        need = law.widen_need(error, inner, excess)
        for d, e, x, k in zip(test["total_samples"].to_numpy(float), error, excess, need, strict=True):
            records.append({"n_params": float(n), "samples": float(d), "error": float(e), "excess": float(x),
                            "need": float(k)})
            if x >= law.MIN_WIDEN_EXCESS:
                needs.append(float(k))
    learned = float(np.quantile(needs, law.COVER_QUANTILE)) if needs else 0.0
    return max(law.WIDEN_PER_LOG, learned), records


def fit_study(rows: pd.DataFrame, shared: dict[str, float], *, dataset: str, chance: float,
              eval_n: int = DEFAULT_EVAL_N, fixed: dict[str, float] | None = None,
              scale: float | None = None, forward: bool = True) -> LawFit:
    """Fit the local configuration (MAP, bounded least squares) to one study's rows (features + ``top1``).

    ``shared``: the ImageNet fit's parameters (psi and eta are taken as they are; alpha, beta, gamma and kappa are
    prior means); ``fixed`` holds local parameters at given values; ``scale`` the transferred priors' width
    multiplier (None: chosen by the held-out test, ``prior_scale``, once the study has more runs than
    ``MIN_STUDY_RUNS``); ``forward`` learns the interval's growth beyond the study's runs from its own forward
    predictions (``forward_widening``; else the default ``law.WIDEN_PER_LOG``). Raises ClipaError if a row is from
    another study (a local fit must never see ImageNet rows)."""
    from scipy.stats import t as student_t

    study = eval_task(dataset)
    bad = ~study_mask(rows["dataset"], study)
    if bad.any():
        raise ClipaError("results", f"rows of {sorted(set(rows['dataset'][bad]))} cannot enter the fit of study {study}")
    if len(rows) == 0:
        raise ClipaError("results", f"no results for study {study}")
    cv: dict[float, float] = {}
    if scale is None:
        scale = 1.0
        if len(rows) > MIN_STUDY_RUNS:
            scale, cv = prior_scale(rows, shared, chance=chance, eval_n=eval_n, fixed=fixed)
    t_ref = float(rows["max_image_tokens"].max())
    y = rows["top1"].to_numpy(float)
    # the measurement noise is at least the evaluation split's binomial noise: a floor on the residual variance
    # (with a handful of runs and as many parameters the residuals alone can look arbitrarily good), and the unit
    # the prior rows are written in, so that a prior alone gives its parameter its own sd
    noise_floor = _noise_floor(y, eval_n)
    sol = _solve(rows, shared, chance, t_ref, noise_floor, scale, fixed)
    vec, names = sol.vec, sol.vec.names
    p = vec.unpack(sol.x)
    m = len(y)
    r = sol.fun[:m]
    # degrees of freedom: the unpenalised parameters (scales of size and samples) cost one each, the prior-held
    # ones half (they are partly fixed by their priors)
    dof = max(m - (len(names) - len(vec.priors)) - 0.5 * len(vec.priors), 1.0)
    s2 = max(float(np.sum(r**2) / dof), noise_floor**2)
    cov = law.covariance(sol.jac, s2) if m > 0 else np.zeros((len(names),) * 2)
    fit = LawFit(kind=LOCAL_LAW.kind, params=p, free=names, cov=cov.tolist(), sigma=math.sqrt(s2),
                 ranges=_study_ranges(rows), datasets={dataset: 0.0},
                 quantile=float(student_t.ppf(0.9, dof)), t_ref=t_ref, chance=float(chance), eval_n=int(eval_n),
                 study=study, dataset=dataset)
    fit.metrics = {"rows": int(m), "mae": float(np.mean(np.abs(r))), "max_abs_error": float(np.max(np.abs(r))),
                   "dof": dof, "nfev": sol.nfev, "status": sol.status, "at_bound": vec.at_bound(sol.x),
                   "prior_scale": scale, "held_out_mae": {f"{k:g}": v for k, v in cv.items()}}
    if forward and len(rows) > MIN_STUDY_RUNS:
        widen, fit.metrics["forward"] = forward_widening(rows, shared, dataset=dataset, chance=chance, eval_n=eval_n,
                                                         fixed=fixed, scale=scale)
        fit.thin = {"widen_per_log": {"model size": law.WIDEN_PER_LOG, "other": widen}}
    return fit


def predict_study(fit: LawFit, features: pd.DataFrame) -> pd.DataFrame:
    """Predictions (predicted_top1, low, high, extrapolated, samples_excess, other_excess, flags) for rows of
    ``fit``'s study (``planner.law.predict``; flags: ``thin_flags``)."""
    out = law.predict(fit, LOCAL_LAW, features)
    out["flags"] = thin_flags(fit, features)
    return out


def _study_ranges(rows: pd.DataFrame) -> dict[str, list]:
    """The study's range (``planner.law.data_ranges``, with each model size's samples reach) and the most samples
    of each model size at each pre-training image-token count (``samples_reach_tokens``: [n_params, tokens,
    samples])."""
    ranges = law.data_ranges(rows, token_floor=False, samples_per_size=True)
    cells = rows.groupby(["n_params", "pretrain_image_tokens"])["total_samples"].max()
    ranges["samples_reach_tokens"] = [[float(n), float(t), float(d)] for (n, t), d in cells.items()]
    return ranges


def thin_flags(fit: LawFit, features: pd.DataFrame) -> list[tuple[str, ...]]:
    """Per row, where its prediction stands beyond the study's own runs, in words: a model size without runs, more
    samples than the study trained that size on, and pre-training image tokens at which that size has no run or
    only shorter ones. Why the last (issue 19, loop 9): the law moves a size's samples curve to other token counts
    unchanged, and on the generated data xs/8 at 4 tokens, piloted only to 25K samples, learned shape late and then
    fast (30.4% at 328K, 77.1% at 3.42M, predicted 23.6 and 45.9), while mini/8 at 4 tokens stayed at 28% from 300K
    to 1M samples. Empty inside the study's runs; a fit without ``samples_reach_tokens`` (older files) flags sizes
    and samples only."""
    from planner.recipe import format_samples

    sizes = {round(n): d for n, d in fit.ranges.get("samples_reach", [])}
    cells = {(round(n), round(t, 6)): d for n, t, d in fit.ranges.get("samples_reach_tokens", [])}
    out = []
    columns = (features["model"].astype(str), features["n_params"].to_numpy(float),
               features["pretrain_image_tokens"].to_numpy(float), features["total_samples"].to_numpy(float))
    for model, n, t, d in zip(*columns):
        size_reach = sizes.get(round(n))
        if size_reach is None:
            out.append((f"no {model} run in the study",) if sizes else ())
            continue
        flags = []
        if d > size_reach * (1 + 1e-9):
            flags.append(f"{model} trained to at most {format_samples(int(size_reach))} samples in the study "
                         f"(this run {format_samples(int(d))})")
        if cells:
            cell_reach = cells.get((round(n), round(t, 6)))
            if cell_reach is None:
                flags.append(f"no {model} run at {t:g} pre-training image tokens in the study")
            elif d > cell_reach * (1 + 1e-9) and cell_reach < size_reach:
                flags.append(f"{model} at {t:g} pre-training image tokens: at most {format_samples(int(cell_reach))} "
                             f"samples in the study (this run {format_samples(int(d))})")
        out.append(tuple(flags))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# study data, versions on disk


@dataclass(frozen=True)
class StudyMeta:
    """What a local study's fit takes from its data: chance level, evaluation size, native resolution, and a line
    for each one the runs' records did not carry."""

    chance: float
    eval_n: int
    native_res: int | None
    assumed: list[str]


def _dataset_meta(rows: pd.DataFrame) -> StudyMeta:
    """A local study's constants: from the runs' records (every run records the class count and eval size it was
    measured with), else from the dataset's cached profile (``planner.data_profile``, found from the runs' eval
    data), else the generated set's defaults; every fallback is named in ``assumed`` (issue 20: old records without
    them still load, and the study says so)."""
    from planner.data_profile import cached_profile, dataset_root

    profile = None
    for folder in dict.fromkeys(rows["eval_data"].dropna() if "eval_data" in rows else []):
        root = dataset_root(folder)
        if root is not None and (profile := cached_profile(root, check_fresh=False)) is not None:
            break
    assumed: list[str] = []

    def constant(col: str, what: str, from_profile: Any, default: Any) -> Any:
        have = rows[col].dropna() if col in rows else pd.Series(dtype=float)
        missing = len(rows) - len(have)
        if len(have):
            value = int(have.mode().iloc[0])  # the most common (a study's runs share their eval set)
        elif from_profile is not None:
            value = int(from_profile)
        else:
            value = default
        if missing:
            src = ("the other runs' records" if len(have) else
                   f"the data's profile ({profile.folder})" if from_profile is not None else
                   "assumed (clipa data synth's)")
            if value is not None:
                assumed.append(f"{what} {value}: {src}, for {missing} of {len(rows)} runs whose records carry none")
            else:
                assumed.append(f"{what} unknown: neither the runs' records nor a profile of the data say it")
        return value

    n_classes = constant("n_classes", "classes", profile.n_classes if profile else None, DEFAULT_CLASSES)
    eval_n = constant("eval_n", "eval size", profile.eval_size if profile else None, DEFAULT_EVAL_N)
    native = constant("data_res", "native resolution (px)", profile.resolution if profile else None, None)
    return StudyMeta(100.0 / n_classes, max(eval_n, 1), native, assumed)


def local_study_rows(include_runs: bool = True) -> dict[str, pd.DataFrame]:
    """Feature rows (+ top1, eval_n, n_classes) of every local dataset with executed runs, by dataset name. Bad run
    files are not reported again here: the ImageNet fit's rows were read (and their problems named) just before."""
    if not include_runs:
        return {}
    from planner.features import features_frame, schedule_features
    from planner.results import load_runs

    runs = load_runs(report=False)
    out: dict[str, pd.DataFrame] = {}
    if len(runs) == 0:
        return out
    runs = runs[[is_local(d) for d in runs["dataset"]]]
    for ds in sorted(set(runs["dataset"])):
        sub = runs[runs["dataset"] == ds]
        f = features_frame([schedule_features(r.model, r.dataset, r.schedule) for r in sub.itertuples()])
        for col in ("top1", "key", "eval_n", "n_classes", "data_res", "eval_data"):
            f[col] = sub[col].to_numpy()
        out[ds] = f.reset_index(drop=True)
    return out


def code_hash() -> str:
    """The local configuration's code identity: the law, the feature definitions and this module."""
    return law.files_hash(*law.LAW_FILES, Path(__file__).resolve())


def study_data_hash(rows: pd.DataFrame, shared: dict[str, float]) -> str:
    cols = ["model", "dataset", "total_samples"] + [f"s{i}_{c}" for i in range(MAX_STAGES)
                                                     for c in ("samples", "image_tokens", "text_len", "block_mask")]
    h = hashlib.sha256(rows.sort_values("key")[cols + ["top1"]].to_csv(index=False, float_format="%.10g").encode())
    h.update(json.dumps({k: round(float(shared[k]), 9) for k in sorted(SHARED + TRANSFERRED)}).encode())
    return h.hexdigest()[:16]


def _slug(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", dataset)


def load_or_fit_studies(shared: dict[str, float], refit: bool = False,
                        include_runs: bool = True) -> dict[str, LawFit]:
    """The fit of every local study with at least ``MIN_STUDY_RUNS`` runs, cached by data and code version as
    ``results/fits/study-<dataset>-<version>.json``."""
    out: dict[str, LawFit] = {}
    ch = code_hash()
    for ds, rows in local_study_rows(include_runs).items():
        if len(rows) < MIN_STUDY_RUNS:
            continue
        meta = _dataset_meta(rows)
        # the study's constants are part of its version: a record or profile that changes them refits (issue 20)
        dh = study_data_hash(rows, shared) + f":{meta.chance!r}:{meta.eval_n}:{meta.native_res}"
        version = law.fit_version(dh, ch)

        def fit_now(ds: str = ds, rows: pd.DataFrame = rows, version: str = version, dh: str = dh,
                    meta: StudyMeta = meta) -> LawFit:
            fit = fit_study(rows, shared, dataset=ds, chance=meta.chance, eval_n=meta.eval_n)
            fit.version, fit.data_hash, fit.code_hash = version, dh, ch
            fit.native_res, fit.assumed = meta.native_res, meta.assumed
            return fit

        out[ds] = law.cached_or_fit(f"study-{_slug(ds)}-{version}.json", dh, ch, refit, fit_now)
    return out
