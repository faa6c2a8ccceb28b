r"""Studies: which results may be fitted together, and the reduced accuracy law for a local study.

A *study* is a dataset together with the evaluation task its top-1 measures. Every web-scale dataset is evaluated
zero-shot on ImageNet-1k, so they form one study (``imagenet-1k``) and share one law (``planner.accuracy``): their
differences are the dataset multipliers. A ``local:NAME`` dataset is evaluated on its own held-out split
(``zeroshot:local:NAME``, the same string as ``trainer.closed_loop.eval_task``), so its top-1 is a different
quantity: local runs never enter the ImageNet fit, and ImageNet rows never enter a local fit. What a local study
*shares* with the ImageNet study is the law's structure and, as priors, its exponents.

The local law (units: n = image-tower params / 1e5, D = samples seen / 1e4, image tokens relative to ``t_ref``,
the most kept tokens any run of the study used (the data's full resolution), text relative to 32 tokens)::

    top1 = c + softplus(100 - c - err),   c = chance (100 / number of classes)
    err  = A n^-alpha + B D^-beta + p
    pen(T, L) = n^-gamma [ c_i ((T_eff/t_ref)^-kappa - 1) + c_t max(0, (L/32)^-kappa_t - 1) ]
    p    = pen(stage 1); each later stage k with S_k samples moves it: p <- q_k + (p - q_k) exp(-S_k / (s0 j_k^psi))

Why reduced: a pilot has 6-15 runs, far too few for the 16+ constants of the ImageNet law, and it sits far below
any ceiling, so the irreducible error is not fitted (the gap to 100 is all in A and B). Free: the scale terms
``ln_A``, ``ln_B``, ``ln_ci``, ``ln_ct`` (this dataset's own offsets for size, samples, image and text tokens), the
exponents ``alpha`` and ``beta`` and the fine-tune constant ``ln_s0``, the last three held near priors by Gaussian
penalty rows (MAP): alpha at the ImageNet fit's value (sd 0.3), beta at 0.5 (sd 0.5; tiny models on a small
generated dataset learn far faster in samples than CLIP on the web), ln_s0 at 2,000 samples (sd 1). Shared
unchanged from the ImageNet fit: gamma, kappa, psi, eta (the inverse-scaling structure, which a pilot can not pin
down); kappa_t is fixed at 1 (the ImageNet fit leaves it at a bound). The chance level is a floor, not a parameter: below it the law predicts chance.

Interval: Gauss-Newton covariance of the MAP fit (prior rows included) through the prediction's gradient, plus the
residual noise, both at least the binomial noise of the evaluation split (a pilot's few residuals can look far too
good), with Student-t quantiles for the few degrees of freedom; outside the study's range (model size, samples, tokens, text, fine-tune samples) the
half-width grows by half the summed log-distance outside, and the prediction is flagged ``extrapolated``.

Fits are saved as ``results/fits/study-<name>-<version>.json``; the version hashes the study's rows, the shared
constants and this module's code, so a new run gives a new version and old files stay as history.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from planner.datasets import is_local
from planner.errors import ClipaError
from planner.features import MAX_STAGES

IMAGENET = "imagenet-1k"
MIN_STUDY_RUNS = 3  # below this a local study has no fit of its own (it is predicted at chance, flagged)
N_UNIT = 1e5
D_UNIT = 1e4
FULL_TEXT = 32.0
DEFAULT_CLASSES = 64  # ``clipa data synth``: 64 "colour shape" classes
DEFAULT_EVAL_N = 1000
WIDEN_PER_LOG = 0.5
SHARED = ("gamma", "kappa", "psi", "eta")
# The ImageNet fit puts kappa_t at its upper bound (6: text loses nothing until very short captions, so the curve's
# shape there is not identified); a local study with 8-32 token captions gets the power law's plain prior instead.
KAPPA_T = 1.0
# name, start, lower, upper; prior (mean, sd) or None. "imagenet:<p>" as a prior mean takes the ImageNet fit's value.
_LOCAL_PARAMS: list[tuple[str, float, float, float, tuple[Any, float] | None]] = [
    ("ln_A", math.log(30.0), -8.0, 10.0, None),
    ("alpha", 0.3, 0.0, 2.0, ("imagenet:alpha", 0.3)),
    ("ln_B", math.log(60.0), -8.0, 10.0, None),
    ("beta", 0.5, 0.02, 3.0, (0.5, 0.5)),
    ("ln_ci", 0.0, -10.0, 6.0, (0.0, 3.0)),
    ("ln_ct", 0.0, -10.0, 6.0, (0.0, 3.0)),
    ("ln_s0", math.log(0.2), math.log(0.005), math.log(50.0), (math.log(0.2), 1.0)),
]


def study_of(dataset: str) -> str:
    """The study a dataset's results belong to (matches ``trainer.closed_loop.eval_task``)."""
    return f"zeroshot:{dataset}" if is_local(dataset) else IMAGENET


def study_mask(datasets: Any, study: str) -> np.ndarray:
    """Which rows (by dataset name) belong to ``study``."""
    return np.array([study_of(d) == study for d in datasets], dtype=bool)


# ---------------------------------------------------------------------------------------------------------------------
# the local law


def _columns(f: pd.DataFrame) -> dict[str, np.ndarray]:
    k = range(MAX_STAGES)
    return {
        "n": f["n_params"].to_numpy(float) / N_UNIT,
        "D": np.maximum(f["total_samples"].to_numpy(float), 1.0) / D_UNIT,
        "S": np.stack([f[f"s{i}_samples"].to_numpy(float) for i in k], 1) / D_UNIT,
        "T": np.stack([f[f"s{i}_image_tokens"].to_numpy(float) for i in k], 1),
        "L": np.stack([f[f"s{i}_text_len"].to_numpy(float) for i in k], 1),
        "block": np.stack([f[f"s{i}_block_mask"].to_numpy(bool) for i in k], 1),
    }


def local_law(p: dict[str, float], X: dict[str, np.ndarray], t_ref: float, chance: float) -> np.ndarray:
    """Predicted top-1 (percent) of each row of ``X`` (``_columns``) under the local law with parameters ``p``."""
    n = X["n"]
    err = math.exp(p["ln_A"]) * n ** -p["alpha"] + math.exp(p["ln_B"]) * X["D"] ** -p["beta"]
    size = n ** -p["gamma"]
    ci, ct = math.exp(p["ln_ci"]), math.exp(p["ln_ct"])

    def pen(k: int) -> np.ndarray:
        t = np.maximum(X["T"][:, k] * np.where(X["block"][:, k], p["eta"], 1.0), 1.0)
        text = np.maximum(X["L"][:, k], 1.0)
        img = ci * ((t / t_ref) ** -p["kappa"] - 1.0)  # a gain (negative) above t_ref, bounded by ci
        return size * (img + ct * np.maximum((text / FULL_TEXT) ** -p["kappa_t"] - 1.0, 0.0))

    state = pen(0)
    s0 = math.exp(p["ln_s0"])
    for k in range(1, MAX_STAGES):
        s = X["S"][:, k]
        if not np.any(s > 0):
            break
        target = pen(k)
        jump = np.maximum(X["T"][:, k] / np.maximum(X["T"][:, k - 1], 1.0), 1.0)
        state = np.where(s > 0, target + (state - target) * np.exp(-s / (s0 * jump ** p["psi"])), state)
    err = err + state
    return chance + np.logaddexp(0.0, (100.0 - chance - err))


# ---------------------------------------------------------------------------------------------------------------------
# the fit object


@dataclass
class StudyFit:
    """A local study's fitted reduced law: parameters, covariance, noise, range, identity."""

    study: str
    dataset: str
    params: dict[str, float]
    free: list[str]
    cov: list[list[float]]
    sigma: float
    t_quantile: float  # two-sided 80% Student-t quantile for the fit's degrees of freedom
    chance: float
    t_ref: float
    eval_n: int
    ranges: dict[str, list[float]]
    version: str = ""
    data_hash: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    # the data's native image side (px) when the runs' records or the data's profile say it (issue 20)
    native_res: int | None = None
    # one line per study constant the runs' records did not carry (taken from the data's profile, or assumed)
    assumed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        natural = {(k[3:] if k.startswith("ln_") else k): (math.exp(v) if k.startswith("ln_") else v)
                   for k, v in self.params.items()}
        return {"kind": "local-study", "study": self.study, "dataset": self.dataset, "version": self.version,
                "data_hash": self.data_hash, "params": self.params, "natural_params": natural, "free": self.free,
                "cov": self.cov, "sigma": self.sigma, "t_quantile": self.t_quantile, "chance": self.chance,
                "t_ref": self.t_ref, "eval_n": self.eval_n, "ranges": self.ranges, "metrics": self.metrics,
                "n_classes": round(100.0 / self.chance), "native_res": self.native_res, "assumed": self.assumed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyFit:
        return cls(study=d["study"], dataset=d["dataset"], params={k: float(v) for k, v in d["params"].items()},
                   free=list(d["free"]), cov=d["cov"], sigma=float(d["sigma"]), t_quantile=float(d["t_quantile"]),
                   chance=float(d["chance"]), t_ref=float(d["t_ref"]), eval_n=int(d["eval_n"]),
                   ranges={k: list(v) for k, v in d["ranges"].items()}, version=d.get("version", ""),
                   data_hash=d.get("data_hash", ""), metrics=d.get("metrics", {}), native_res=d.get("native_res"),
                   assumed=list(d.get("assumed", [])))

    def cov_matrix(self) -> np.ndarray:
        return np.asarray(self.cov, dtype=float).reshape(len(self.free), len(self.free))

    def param_sd(self) -> dict[str, float]:
        return dict(zip(self.free, np.sqrt(np.clip(np.diag(self.cov_matrix()), 0, None)).tolist()))


def _ranges(rows: pd.DataFrame) -> dict[str, list[float]]:
    def span(col: str) -> list[float]:
        v = rows[col].to_numpy(float)
        return [float(v.min()), float(v.max())]

    return {"n_params": span("n_params"), "total_samples": span("total_samples"),
            "pretrain_image_tokens": span("pretrain_image_tokens"), "max_image_tokens": span("max_image_tokens"),
            "text_len": [float(rows["min_text_len"].min()), float(rows["pretrain_text_len"].max())],
            "finetune_samples": span("finetune_samples")}


def _resolved_priors(shared: dict[str, float]) -> list[tuple[str, float, float, float, tuple[float, float] | None]]:
    out = []
    for name, x0, lo, hi, prior in _LOCAL_PARAMS:
        if prior is not None and isinstance(prior[0], str):
            mean = float(shared.get(prior[0].split(":", 1)[1], x0))
            prior = (min(max(mean, lo), hi), prior[1])
            x0 = prior[0]
        out.append((name, x0, lo, hi, prior))
    return out


def fit_study(rows: pd.DataFrame, shared: dict[str, float], *, dataset: str, chance: float,
              eval_n: int = DEFAULT_EVAL_N, fixed: dict[str, float] | None = None) -> StudyFit:
    """Fit the local law (MAP, bounded least squares) to one study's rows (features + ``top1``).

    ``shared``: the ImageNet fit's parameters (gamma, kappa, psi, eta are taken as they are; alpha is a
    prior mean); ``fixed`` holds local parameters at given values. Raises ClipaError if a row is from another study
    (a local fit must never see ImageNet rows)."""
    from scipy.optimize import least_squares
    from scipy.stats import t as student_t

    study = study_of(dataset)
    bad = ~study_mask(rows["dataset"], study)
    if bad.any():
        raise ClipaError("results", f"rows of {sorted(set(rows['dataset'][bad]))} cannot enter the fit of study {study}")
    if len(rows) == 0:
        raise ClipaError("results", f"no results for study {study}")
    fixed = dict(fixed or {})
    table = _resolved_priors(shared)
    names = [t[0] for t in table if t[0] not in fixed]
    spec = {t[0]: t for t in table}
    x0 = np.array([spec[n][1] for n in names])
    lo = np.array([spec[n][2] for n in names])
    hi = np.array([spec[n][3] for n in names])
    x0 = np.clip(x0, lo + 1e-6 * (hi - lo), hi - 1e-6 * (hi - lo))
    priors = [(i, spec[n][4]) for i, n in enumerate(names) if spec[n][4] is not None]
    base = {k: float(shared[k]) for k in SHARED}
    base["kappa_t"] = KAPPA_T
    base.update(fixed)
    t_ref = float(rows["max_image_tokens"].max())
    X = _columns(rows)
    y = rows["top1"].to_numpy(float)
    # the measurement noise is at least the evaluation split's binomial noise: a floor on the residual variance
    # (with a handful of runs and as many parameters the residuals alone can look arbitrarily good), and the unit
    # the prior rows are written in, so that a prior alone gives its parameter its own sd
    pf = np.clip(y / 100.0, 0.005, 0.995)
    noise_floor = float(np.sqrt(np.mean(1e4 * pf * (1 - pf) / max(eval_n, 1))))

    def unpack(x: np.ndarray) -> dict[str, float]:
        p = dict(base)
        p.update(zip(names, map(float, x)))
        return p

    def residuals(x: np.ndarray) -> np.ndarray:
        r = local_law(unpack(x), X, t_ref, chance) - y
        pr = [(x[i] - m) / sd * noise_floor for i, (m, sd) in priors]
        return np.concatenate([r, pr])

    # a few starts: the pilot's few points leave the samples/size split ambiguous, and a bad start stalls at chance
    best = None
    for shift in (0.0, -1.5, 1.5):
        start = x0.copy()
        for j, n in enumerate(names):
            if n in ("ln_A", "ln_B"):
                start[j] = np.clip(start[j] + shift, lo[j] + 1e-6, hi[j] - 1e-6)
        sol = least_squares(residuals, start, bounds=(lo, hi), x_scale="jac", max_nfev=3000)
        if best is None or sol.cost < best.cost - 1e-9:
            best = sol
    sol = best
    p = unpack(sol.x)
    m = len(y)
    r = sol.fun[:m]
    # degrees of freedom: the unpenalised parameters (scales of size and samples) cost one each, the prior-held
    # ones half (they are partly fixed by their priors)
    dof = max(m - (len(names) - len(priors)) - 0.5 * len(priors), 1.0)
    s2 = max(float(np.sum(r**2) / dof), noise_floor**2)
    cov = s2 * np.linalg.pinv(sol.jac.T @ sol.jac, rcond=1e-10) if m > 0 else np.zeros((len(names),) * 2)
    sigma = math.sqrt(s2)
    fit = StudyFit(study=study, dataset=dataset, params=p, free=names, cov=cov.tolist(), sigma=sigma,
                   t_quantile=float(student_t.ppf(0.9, dof)), chance=float(chance), t_ref=t_ref, eval_n=int(eval_n),
                   ranges=_ranges(rows))
    span = hi - lo
    fit.metrics = {"rows": int(m), "mae": float(np.mean(np.abs(r))), "max_abs_error": float(np.max(np.abs(r))),
                   "dof": dof, "nfev": int(sol.nfev), "status": int(sol.status),
                   "at_bound": [n for n, v, a, b, s in zip(names, sol.x, lo, hi, span)
                                if v <= a + 1e-6 * s or v >= b - 1e-6 * s]}
    return fit


def predict_study(fit: StudyFit, features: pd.DataFrame) -> pd.DataFrame:
    """Predictions (predicted_top1, low, high, extrapolated) for rows of ``fit``'s study."""
    X = _columns(features)
    mean = local_law(fit.params, X, fit.t_ref, fit.chance)
    g = np.zeros((len(mean), len(fit.free)))
    for j, name in enumerate(fit.free):
        h = 1e-5 * max(1.0, abs(fit.params[name]))
        q = dict(fit.params)
        q[name] += h
        g[:, j] = (local_law(q, X, fit.t_ref, fit.chance) - mean) / h
    var = np.einsum("ij,jk,ik->i", g, fit.cov_matrix(), g) if fit.free else np.zeros(len(mean))
    # the evaluation split's own binomial noise is a floor on the residual noise of a single run
    pf = np.clip(mean / 100.0, 0.0, 1.0)
    binom = 100.0 * np.sqrt(pf * (1 - pf) / max(fit.eval_n, 1))
    var = var + np.maximum(fit.sigma**2, binom**2)
    samples_excess, other_excess = range_excess(fit.ranges, features)
    excess = samples_excess + other_excess
    half = fit.t_quantile * np.sqrt(var) * (1.0 + WIDEN_PER_LOG * excess)
    return pd.DataFrame({"predicted_top1": mean, "low": np.clip(mean - half, 0.0, 100.0),
                         "high": np.clip(mean + half, 0.0, 100.0), "extrapolated": excess > 1e-9,
                         # how far outside the study's range, in log units: in samples, and on every other axis
                         "samples_excess": samples_excess, "other_excess": other_excess},
                        index=features.index)


def _beyond(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Natural-log distance of ``x`` outside [lo, hi] (0 inside)."""
    x = np.maximum(np.asarray(x, dtype=float), 1e-12)
    return np.maximum(np.log(max(lo, 1e-12) / x), 0.0) + np.maximum(np.log(x / max(hi, 1e-12)), 0.0)


def range_excess(r: dict[str, list[float]], f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Natural-log distance of each row outside a study's range (0 inside): in samples seen, and summed over every
    other axis (model size, image tokens, text length, fine-tune samples)."""
    samples = _beyond(f["total_samples"].to_numpy(float), *r["total_samples"])
    other = _beyond(f["n_params"].to_numpy(float), *r["n_params"])
    other += _beyond(f["pretrain_image_tokens"].to_numpy(float), *r["pretrain_image_tokens"])
    other += np.maximum(np.log(np.maximum(f["max_image_tokens"].to_numpy(float), 1) / r["max_image_tokens"][1]), 0.0)
    other += _beyond(f["min_text_len"].to_numpy(float), *r["text_len"])
    ft = f["finetune_samples"].to_numpy(float)
    # fine-tuning where the pilot never fine-tuned is an extrapolation of one log unit (its effect rests on a prior)
    hi_ft = r["finetune_samples"][1]
    other += np.where(ft > hi_ft, np.where(hi_ft > 0, np.log(np.maximum(ft, 1) / max(hi_ft, 1)), 1.0), 0.0)
    return samples, other


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
    """Feature rows (+ top1, eval_n, n_classes) of every local dataset with executed runs, by dataset name."""
    if not include_runs:
        return {}
    from planner.features import features_frame, schedule_features
    from planner.results import load_runs

    runs = load_runs()
    out: dict[str, pd.DataFrame] = {}
    if len(runs) == 0:
        return out
    runs = runs[[is_local(d) for d in runs["dataset"]]]
    extra = _record_extras()
    for ds in sorted(set(runs["dataset"])):
        sub = runs[runs["dataset"] == ds]
        f = features_frame([schedule_features(r.model, r.dataset, r.schedule) for r in sub.itertuples()])
        f["top1"] = sub["top1"].to_numpy(float)
        f["key"] = sub["key"].to_numpy()
        f["eval_n"] = [extra.get(k, {}).get("eval_n", np.nan) for k in sub["key"]]
        f["n_classes"] = [extra.get(k, {}).get("n_classes", np.nan) for k in sub["key"]]
        f["data_res"] = [extra.get(k, {}).get("data_res", np.nan) for k in sub["key"]]
        f["eval_data"] = [extra.get(k, {}).get("eval_data") for k in sub["key"]]
        out[ds] = f.reset_index(drop=True)
    return out


def _record_extras() -> dict[str, dict[str, Any]]:
    """eval_n / n_classes / data_res and the spec's eval_data of closed-loop records, keyed like ``load_runs``
    ('run-<id>')."""
    from planner import paths

    out = {}
    d = paths.runs_dir()
    for path in sorted(d.glob("*.json")) if d.exists() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # load_runs has already reported unreadable files by raising
        if isinstance(data, dict) and "spec" in data:
            rid = data.get("run_id") or path.stem
            ex = data.get("extra") or {}
            out[f"run-{rid}"] = {k: ex[k] for k in ("eval_n", "n_classes", "data_res") if isinstance(ex.get(k), (int, float))}
            if isinstance(data["spec"], dict) and data["spec"].get("eval_data"):
                out[f"run-{rid}"]["eval_data"] = data["spec"]["eval_data"]
    return out


def code_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def study_data_hash(rows: pd.DataFrame, shared: dict[str, float]) -> str:
    cols = ["model", "dataset", "total_samples"] + [f"s{i}_{c}" for i in range(MAX_STAGES)
                                                     for c in ("samples", "image_tokens", "text_len", "block_mask")]
    h = hashlib.sha256(rows.sort_values("key")[cols + ["top1"]].to_csv(index=False, float_format="%.10g").encode())
    h.update(json.dumps({k: round(float(shared[k]), 9) for k in sorted(SHARED + ("alpha",))}).encode())
    return h.hexdigest()[:16]


def _slug(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", dataset)


def study_path(dataset: str, version: str) -> Path:
    from planner import paths

    return paths.fits_dir() / f"study-{_slug(dataset)}-{version}.json"


def load_or_fit_studies(shared: dict[str, float], refit: bool = False,
                        include_runs: bool = True) -> dict[str, StudyFit]:
    """The fit of every local study with at least ``MIN_STUDY_RUNS`` runs, cached by data and code version."""
    from planner.store import atomic_write_text

    out: dict[str, StudyFit] = {}
    for ds, rows in local_study_rows(include_runs).items():
        if len(rows) < MIN_STUDY_RUNS:
            continue
        meta = _dataset_meta(rows)
        # the study's constants are part of its version: a record or profile that changes them refits (issue 20)
        version = hashlib.sha256(f"{study_data_hash(rows, shared)}:{code_hash()}:{meta}".encode()).hexdigest()[:12]
        path = study_path(ds, version)
        if path.exists() and not refit:
            try:
                out[ds] = StudyFit.from_dict(json.loads(path.read_text(encoding="utf-8")))
                continue
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable cache: fit again and overwrite
        fit = fit_study(rows, shared, dataset=ds, chance=meta.chance, eval_n=meta.eval_n)
        fit.version, fit.data_hash = version, study_data_hash(rows, shared)
        fit.native_res, fit.assumed = meta.native_res, meta.assumed
        atomic_write_text(path, json.dumps(_finite(fit.to_dict()), indent=1, sort_keys=True) + "\n")
        out[ds] = fit
    return out


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return float(f"{o:.12g}") if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o
