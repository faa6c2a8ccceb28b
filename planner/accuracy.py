r"""The accuracy model: zero-shot ImageNet top-1 of a CLIP run from its model, dataset and stages, with an interval.

This module owns the functional form, its fit to the published and executed results, the saved fit versions
(``results/fits/<version>.json``) and vectorised prediction. It imports numpy and pandas only; scipy is imported
inside the fit, so a planner that loads a cached fit starts fast.

The law (units: n = image-tower transformer parameters / 1e8, D = samples / 1e9, image tokens relative to 256
patches, text relative to 32 tokens; every constant is fitted unless said otherwise)::

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
below the fewest any model of that size or smaller was trained with) the half-width grows by half the summed
log-distance outside the range, and the prediction is flagged ``extrapolated``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from planner.datasets import DATASETS, is_local
from planner.errors import ClipaError
from planner.features import MAX_STAGES, features_frame, run_features, schedule_features

MODEL_VERSION = "clipa-acc-1"
WEIGHTS = {"reported": 1.0, "digitized": 0.7, "external": 0.5}
REFERENCE_DATASET = "laion-400m"
Z80 = 1.2815515655446004  # two-sided 80%: the 10% and 90% quantiles of a normal
WIDEN_PER_LOG = 0.5  # interval growth per natural-log unit outside the data's range
# Figure 2 does not report its pre-training: a CLIPA-v1-like one is assumed (the 128M fine-tunes recover from it
# almost completely, so the fitted drop hardly depends on this choice).
NOMINAL_PRETRAIN = "2.56B@112/16"
FIG2_BASELINE_FT = "128M@224/32"

# name, initial value, lower, upper bound (internal coordinates: logs of positive scales)
_BASE_PARAMS: list[tuple[str, float, float, float]] = [
    ("E", 8.0, 5.0, 50.0),
    ("ln_A", 2.0, -5.0, 8.0),
    ("alpha", 0.3, 0.01, 2.0),
    ("ln_B", 2.0, -5.0, 8.0),
    ("beta", 0.3, 0.01, 2.0),
    ("ln_Rstar", math.log(10.0), math.log(0.5), math.log(1000.0)),
    ("rho", 0.5, -1.0, 2.0),
    ("ln_ci", 0.5, -8.0, 6.0),
    ("kappa", 1.0, 0.1, 3.0),
    ("ln_ct", 0.0, -10.0, 6.0),
    ("kappa_t", 1.0, 0.1, 6.0),
    ("gamma", 0.35, 0.0, 1.5),
    ("ln_s0", math.log(0.05), math.log(0.005), math.log(2.0)),
    ("psi", 0.5, 0.0, 4.0),
    ("eta", 0.7, 0.2, 1.0),
    ("zeta", 0.0, -2.0, 2.0),
]
HEAVY_REPEAT_EPOCHS = 15.0  # "heavily repeated" data for n_cap: OpenCLIP's LAION-80M/400M runs, bigG on LAION-2B
DATASET_BOUND = 3.0  # |log multiplier| of a dataset's reducible error
# The uncertainty of a new dataset's multiplier is the spread of the fitted ones, but at least this: DataComp-1B
# sits 0.26 below LAION-400M, so a web-scale dataset of unknown curation can be that far off either way.
MIN_DATASET_SD = 0.25


class Prediction(NamedTuple):
    predicted_top1: float
    low: float
    high: float
    extrapolated: bool


# ---------------------------------------------------------------------------------------------------------------------
# design arrays and the law


@dataclass
class _Design:
    """Column arrays of a features frame in the model's units."""

    n: np.ndarray
    D: np.ndarray
    U: np.ndarray
    S: np.ndarray  # (rows, MAX_STAGES)
    T: np.ndarray
    L: np.ndarray
    block: np.ndarray
    patch: np.ndarray
    dataset: np.ndarray  # names

    @classmethod
    def from_frame(cls, f: pd.DataFrame) -> _Design:
        def stack(name: str, dtype=float) -> np.ndarray:
            return np.stack([f[f"s{i}_{name}"].to_numpy(dtype) for i in range(MAX_STAGES)], axis=1)

        datasets = f["dataset"].astype(str).to_numpy()
        uniq = {d: (DATASETS[d].unique_samples / 1e9 if d in DATASETS else np.inf) for d in set(datasets)}
        return cls(
            n=f["n_params"].to_numpy(float) / 1e8,
            D=f["total_samples"].to_numpy(float) / 1e9,
            U=np.array([uniq[d] for d in datasets], dtype=float),
            S=stack("samples") / 1e9,
            T=stack("image_tokens"),
            L=stack("text_len"),
            block=stack("block_mask", bool),
            patch=f["patch"].to_numpy(float),
            dataset=datasets,
        )


def _softplus(x: np.ndarray, tau: float = 1.0) -> np.ndarray:
    return tau * np.logaddexp(0.0, x / tau)


def _law(p: dict[str, float], X: _Design, logm: np.ndarray) -> np.ndarray:
    """Predicted top-1 (percent) for each row of X, with the dataset log multipliers ``logm`` per row."""
    n = X.n
    # the size dependence of repetition is applied only up to the largest model measured on heavily repeated data
    R = math.exp(p["ln_Rstar"]) * np.minimum(n, p["n_rep_cap"]) ** -p["rho"]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        epochs = np.where(np.isfinite(X.U), X.D / X.U, 0.0)
        extra = np.maximum(epochs - 1.0, 0.0)
        d_eff = np.where(epochs <= 1.0, X.D, X.U * (1.0 + R * (1.0 - np.exp(-extra / R))))
    base = math.exp(p["ln_A"]) * n ** -p["alpha"] + math.exp(p["ln_B"]) * np.maximum(d_eff, 1e-6) ** -p["beta"]
    size = n ** -p["gamma"]
    ci, ct = math.exp(p["ln_ci"]), math.exp(p["ln_ct"])
    patch_eff = (X.patch / 16.0) ** -p["zeta"]

    def pen(k: int) -> np.ndarray:
        t = X.T[:, k] * patch_eff * np.where(X.block[:, k], p["eta"], 1.0)
        t = np.maximum(t, 1.0)
        text = np.maximum(X.L[:, k], 1.0)
        return size * (ci * ((t / 256.0) ** -p["kappa"] - 1.0) + ct * np.maximum((text / 32.0) ** -p["kappa_t"] - 1.0, 0.0))

    state = pen(0)
    s0 = math.exp(p["ln_s0"])
    for k in range(1, MAX_STAGES):
        s = X.S[:, k]
        if not np.any(s > 0):
            break
        target = pen(k)
        jump = np.maximum(X.T[:, k] / np.maximum(X.T[:, k - 1], 1.0), 1.0)
        state = np.where(s > 0, target + (state - target) * np.exp(-s / (s0 * jump ** p["psi"])), state)
    err = p["E"] + np.exp(logm) * (base + state)
    return _softplus(100.0 - err)


# ---------------------------------------------------------------------------------------------------------------------
# the fit object


@dataclass
class Fit:
    """A fitted law: parameters, their covariance, the residual scale, the data's range, identity and metrics."""

    params: dict[str, float]  # every parameter, including dataset log multipliers 'ds:<name>'
    free: list[str]  # parameters in the covariance (the others were at a bound or held fixed)
    cov: list[list[float]]
    sigma: float  # residual noise (points) of a reported top-1
    datasets: dict[str, float]  # dataset -> log multiplier (the reference is 0)
    dataset_sd: float  # spread of the multipliers: the extra uncertainty of a dataset without results
    ranges: dict[str, list[float]]
    version: str = ""
    data_hash: str = ""
    code_hash: str = ""
    model_version: str = MODEL_VERSION
    metrics: dict[str, Any] = field(default_factory=dict)
    # local studies' own fits (``planner.studies.StudyFit``) by dataset; saved in their own files, not in this one
    studies: dict[str, Any] = field(default_factory=dict, repr=False)

    def version_for(self, dataset: str) -> str:
        """The fit version a prediction for ``dataset`` comes from: its study's fit for a fitted local study."""
        st = self.studies.get(dataset)
        return f"{self.version}+{st.version}" if st is not None else self.version

    # -- persistence -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        natural = {}
        for k, v in self.params.items():
            natural[k[3:] if k.startswith("ln_") else k] = math.exp(v) if k.startswith("ln_") else v
        return {
            "version": self.version,
            "model_version": self.model_version,
            "data_hash": self.data_hash,
            "code_hash": self.code_hash,
            "params": self.params,
            "natural_params": natural,
            "free": self.free,
            "cov": self.cov,
            "sigma": self.sigma,
            "datasets": self.datasets,
            "dataset_sd": self.dataset_sd,
            "ranges": self.ranges,
            "metrics": self.metrics,
        }

    def to_json(self) -> str:
        return json.dumps(_round_floats(self.to_dict()), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fit:
        return cls(
            params={k: float(v) for k, v in d["params"].items()},
            free=list(d["free"]),
            cov=d["cov"],
            sigma=float(d["sigma"]),
            datasets={k: float(v) for k, v in d["datasets"].items()},
            dataset_sd=float(d["dataset_sd"]),
            ranges={k: list(v) for k, v in d["ranges"].items()},
            version=d.get("version", ""),
            data_hash=d.get("data_hash", ""),
            code_hash=d.get("code_hash", ""),
            model_version=d.get("model_version", ""),
            metrics=d.get("metrics", {}),
        )

    def cov_matrix(self) -> np.ndarray:
        return np.asarray(self.cov, dtype=float).reshape(len(self.free), len(self.free))


def _round_floats(o: Any) -> Any:
    """12 significant digits: the JSON of a refit is byte-identical across platforms' last-bit differences."""
    if isinstance(o, float):
        return float(f"{o:.12g}") if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _round_floats(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_round_floats(v) for v in o]
    return o


# ---------------------------------------------------------------------------------------------------------------------
# prediction


def _dataset_logm(fit: Fit, datasets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log multiplier and whether the dataset has results in the fit."""
    known = dict(fit.datasets)
    named = [v for d, v in known.items() if not is_local(d)]
    mean = float(np.mean(named)) if named else 0.0  # a dataset without results: the mean named dataset
    uniq, inv = np.unique(datasets, return_inverse=True)
    vals = np.array([known.get(d, mean) for d in uniq])
    has = np.array([d in known for d in uniq])
    return vals[inv], has[inv]


def _range_excess(fit: Fit, f: pd.DataFrame) -> np.ndarray:
    """Summed natural-log distance of each row outside the fitted data's range (0 inside)."""
    r = fit.ranges
    out = np.zeros(len(f))

    def beyond(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        x = np.maximum(np.asarray(x, dtype=float), 1e-12)
        return np.maximum(np.log(lo / x), 0.0) + np.maximum(np.log(x / hi), 0.0)

    out += beyond(f["n_params"].to_numpy(float), *r["n_params"])
    out += beyond(f["total_samples"].to_numpy(float), *r["total_samples"])
    out += beyond(f["pretrain_image_tokens"].to_numpy(float), *r["pretrain_image_tokens"])
    floor = _token_floor(fit, f["n_params"].to_numpy(float))
    out += np.maximum(np.log(floor / np.maximum(f["pretrain_image_tokens"].to_numpy(float), 1.0)), 0.0)
    out += np.maximum(np.log(np.maximum(f["max_image_tokens"].to_numpy(float), 1) / r["max_image_tokens"][1]), 0.0)
    out += beyond(f["min_text_len"].to_numpy(float), *r["text_len"])
    ft = f["finetune_samples"].to_numpy(float)
    out += np.where(ft > r["finetune_samples"][1], np.log(np.maximum(ft, 1) / max(r["finetune_samples"][1], 1)), 0.0)
    return out


def _token_floor(fit: Fit, n_params: np.ndarray) -> np.ndarray:
    """Fewest pre-training image tokens seen in the data for a model of this size or a smaller one (the inverse
    scaling law: what a smaller model tolerated, a larger one tolerates too); below it a prediction extrapolates.
    Sizes below every observed one get the smallest size's floor."""
    pairs = np.asarray(fit.ranges.get("token_floor", []), dtype=float).reshape(-1, 2)
    if len(pairs) == 0:
        return np.ones(len(n_params))
    sizes, tokens = pairs[:, 0], pairs[:, 1]
    # running minimum of tokens over sizes sorted ascending: floor(n) = min tokens among sizes <= n
    order = np.argsort(sizes)
    sizes, run_min = sizes[order], np.minimum.accumulate(tokens[order])
    idx = np.searchsorted(sizes, n_params * (1 + 1e-9), side="right") - 1
    return np.where(idx >= 0, run_min[np.maximum(idx, 0)], run_min[0])


def _gradient(fit: Fit, X: _Design, logm: np.ndarray) -> np.ndarray:
    """d prediction / d free parameters (forward differences), shape (rows, len(free))."""
    p = dict(fit.params)
    y0 = _law(p, X, logm)
    g = np.zeros((len(y0), len(fit.free)))
    for j, name in enumerate(fit.free):
        h = 1e-5 * max(1.0, abs(p[name]))
        q = dict(p)
        q[name] = p[name] + h
        if name.startswith("ds:"):
            ds = name[3:]
            lm = np.where(X.dataset == ds, logm + h, logm)
            g[:, j] = (_law(p, X, lm) - y0) / h
        else:
            g[:, j] = (_law(q, X, logm) - y0) / h
    return g


def predict_frame(fit: Fit, features: pd.DataFrame) -> pd.DataFrame:
    """Predictions for a frame of ``planner.features`` rows: predicted_top1, low, high (80%), extrapolated.

    Vectorised: one pass of the law per fitted parameter (for the interval), whatever the number of rows."""
    if len(features) == 0:
        return pd.DataFrame({"predicted_top1": [], "low": [], "high": [], "extrapolated": []}, index=features.index)
    own = np.array([d in fit.studies for d in features["dataset"]], dtype=bool) if fit.studies else None
    if own is not None and own.any():
        # rows of a fitted local study: that study's law (a different quantity than ImageNet top-1)
        from planner.studies import predict_study

        parts = [predict_frame(_without_studies(fit), features[~own])] if (~own).any() else []
        for ds in sorted(set(features["dataset"][own])):
            parts.append(predict_study(fit.studies[ds], features[features["dataset"] == ds]))
        out = pd.concat(parts).reindex(features.index)
        out["extrapolated"] = out["extrapolated"].astype(bool)
        return out
    X = _Design.from_frame(features)
    logm, known = _dataset_logm(fit, X.dataset)
    mean = _law(fit.params, X, logm)
    var = np.full(len(mean), fit.sigma**2)
    if fit.free:
        g = _gradient(fit, X, logm)
        var += np.einsum("ij,jk,ik->i", g, fit.cov_matrix(), g)
    # a dataset without results: its multiplier is uncertain by the spread of the known ones
    red = 100.0 - fit.params["E"] - mean  # the reducible error times the multiplier (before the floor)
    var += np.where(known, 0.0, (fit.dataset_sd * np.maximum(red, 0.0)) ** 2)
    excess = _range_excess(fit, features)
    extrapolated = (excess > 1e-9) | ~known
    half = Z80 * np.sqrt(var) * (1.0 + WIDEN_PER_LOG * excess)
    return pd.DataFrame(
        {
            "predicted_top1": mean,
            "low": np.clip(mean - half, 0.0, 100.0),
            "high": np.clip(mean + half, 0.0, 100.0),
            "extrapolated": extrapolated,
        },
        index=features.index,
    )


def _without_studies(fit: Fit) -> Fit:
    from dataclasses import replace

    return replace(fit, studies={})


def predict_stages(fit: Fit, model: str, dataset: str, stages: list) -> Prediction:
    """One run's prediction (see ``predict_frame``)."""
    row = predict_frame(fit, features_frame([run_features(model, dataset, stages)])).iloc[0]
    return Prediction(float(row.predicted_top1), float(row.low), float(row.high), bool(row.extrapolated))


def extrapolation_reasons(fit: Fit, feats: dict[str, Any]) -> list[str]:
    """Why one run's prediction is flagged (empty inside the data's range)."""
    r = fit.ranges
    out = []

    def check(label: str, x: float, key: str, fmt: str = "{:.3g}") -> None:
        lo, hi = r[key]
        if x < lo or x > hi:
            out.append(f"{label} {fmt.format(x)} outside the data's {fmt.format(lo)}..{fmt.format(hi)}")

    check("model size (image-tower params)", feats["n_params"], "n_params")
    check("samples", feats["total_samples"], "total_samples")
    check("pre-training image tokens", feats["pretrain_image_tokens"], "pretrain_image_tokens")
    floor = float(_token_floor(fit, np.array([float(feats["n_params"])]))[0])
    if feats["pretrain_image_tokens"] < floor:
        out.append(f"pre-training image tokens {feats['pretrain_image_tokens']} below the {floor:g} seen for "
                   "models of this size or smaller")
    if feats["max_image_tokens"] > r["max_image_tokens"][1]:
        out.append(f"image tokens {feats['max_image_tokens']} above the data's {r['max_image_tokens'][1]:g}")
    check("text tokens", feats["min_text_len"], "text_len")
    if feats["finetune_samples"] > r["finetune_samples"][1]:
        out.append(f"fine-tune samples {feats['finetune_samples']:.3g} above the data's {r['finetune_samples'][1]:.3g}")
    if feats["dataset"] not in fit.datasets:
        out.append(f"dataset {feats['dataset']} has no results in the fit")
    return out


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
    from planner.studies import IMAGENET, study_mask

    res = load_results(include_runs=include_runs)
    res = res[study_mask(res["dataset"], IMAGENET)].reset_index(drop=True)
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
    """The law's code identity: this module and the feature definitions."""
    h = hashlib.sha256(MODEL_VERSION.encode())
    here = Path(__file__).resolve().parent
    for name in ("accuracy.py", "features.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _param_table(datasets: list[str], reference: str) -> list[tuple[str, float, float, float]]:
    return _BASE_PARAMS + [(f"ds:{d}", 0.0, -DATASET_BOUND, DATASET_BOUND) for d in datasets if d != reference]


def fit_accuracy(
    data: FitData,
    *,
    start: dict[str, float] | None = None,
    fixed: dict[str, float] | None = None,
    max_nfev: int = 4000,
) -> Fit:
    """Fit the law to ``data`` (deterministic: same data and start give the same fit).

    ``data`` must hold the ImageNet study's rows only (``fitting_data`` leaves local runs out; a ``local:`` row
    raises): a local dataset's top-1 is measured on another task and is fitted by ``planner.studies``. ``start`` seeds parameters (e.g. a previous fit, for fast
    leave-one-out); ``fixed`` holds parameters at given values."""
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
    table = _param_table(present, reference)
    fixed = dict(fixed or {})
    fixed.setdefault("n_rep_cap", _rep_cap(named))
    names = [t[0] for t in table if t[0] not in fixed]
    x0 = np.array([(start or {}).get(t[0], t[1]) for t in table if t[0] not in fixed], dtype=float)
    lo = np.array([t[2] for t in table if t[0] not in fixed])
    hi = np.array([t[3] for t in table if t[0] not in fixed])
    x0 = np.clip(x0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))

    X = _Design.from_frame(named)
    y = named["top1"].to_numpy(float)
    w = named["value_kind"].map(WEIGHTS).fillna(1.0).to_numpy(float)
    XM = _Design.from_frame(data.drops_masked)
    XU = _Design.from_frame(data.drops_unmasked)
    yd = data.drops["top1_drop"].to_numpy(float)
    wd = data.drops["value_kind"].map(WEIGHTS).fillna(1.0).to_numpy(float)

    def unpack(x: np.ndarray) -> dict[str, float]:
        p = dict(fixed)
        p.update(zip(names, map(float, x)))
        return p

    # dataset -> column of the multiplier vector (0: the reference, fixed at 0)
    slot = {d: i for i, d in enumerate(present)}
    ds_rows = np.array([slot[d] for d in X.dataset], dtype=int)
    ds_m = np.array([slot.get(d, 0) for d in XM.dataset], dtype=int)
    ds_u = np.array([slot.get(d, 0) for d in XU.dataset], dtype=int)

    def logm_of(p: dict[str, float], idx: np.ndarray) -> np.ndarray:
        vec = np.array([0.0 if d == reference else p[f"ds:{d}"] for d in present])
        return vec[idx]

    def residuals(x: np.ndarray) -> np.ndarray:
        p = unpack(x)
        r_abs = (_law(p, X, logm_of(p, ds_rows)) - y) * w
        if len(yd):
            drop = _law(p, XM, logm_of(p, ds_m)) - _law(p, XU, logm_of(p, ds_u))
            return np.concatenate([r_abs, (drop - yd) * wd])
        return r_abs

    sol = least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=1.0, x_scale="jac",
                        max_nfev=max_nfev)
    p = unpack(sol.x)
    m, k = len(sol.fun), len(names)
    dof = max(m - k, 1)
    s2 = 2.0 * sol.cost / dof
    # Gauss-Newton covariance over every fitted parameter, those at a bound included: their Jacobian column is
    # not a curvature there, but leaving them out makes the other parameters look far better determined than they
    # are (E at its floor trades off against A and alpha).
    span = hi - lo
    interior = (sol.x > lo + 1e-6 * span) & (sol.x < hi - 1e-6 * span)
    J = sol.jac
    cov = s2 * np.linalg.pinv(J.T @ J, rcond=1e-10)
    free = list(names)

    # residual noise of a reported top-1: robust (soft_l1) scale of the absolute rows
    r_abs = (_law(p, X, logm_of(p, ds_rows)) - y) * w
    sigma = float(math.sqrt(2.0 * np.sum(np.sqrt(1.0 + r_abs**2) - 1.0) / max(len(r_abs) - k * len(r_abs) / m, 1.0)))

    dsets = {reference: 0.0}
    dsets.update({d: p[f"ds:{d}"] for d in present if d != reference})
    vals = np.array(list(dsets.values()))
    dataset_sd = float(max(np.std(vals, ddof=1) if len(vals) > 1 else 0.0, MIN_DATASET_SD))

    fit = Fit(
        params=p,
        free=free,
        cov=cov.tolist(),
        sigma=sigma,
        datasets=dsets,
        dataset_sd=dataset_sd,
        ranges=_ranges(named),
    )
    pred = _law(p, X, logm_of(p, ds_rows))
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
        "at_bound": [nm for nm, keep in zip(names, interior) if not keep],
    }
    if len(yd):
        drop = _law(p, XM, logm_of(p, ds_m)) - _law(p, XU, logm_of(p, ds_u))
        fit.metrics["drop_mae"] = float(np.mean(np.abs(drop - yd)))
    return fit


def _rep_cap(rows: pd.DataFrame) -> float:
    """Largest model size (units of 1e8) among rows trained for more than ``HEAVY_REPEAT_EPOCHS`` epochs: beyond it
    the law keeps the repetition half-life fixed (without such rows: the largest size in the data)."""
    uniq = rows["dataset"].map(lambda d: DATASETS[d].unique_samples if d in DATASETS else np.inf).to_numpy(float)
    heavy = rows["total_samples"].to_numpy(float) > HEAVY_REPEAT_EPOCHS * uniq
    n = rows["n_params"].to_numpy(float) / 1e8
    return float(n[heavy].max() if heavy.any() else n.max())


def _ranges(rows: pd.DataFrame) -> dict[str, list[float]]:
    def span(col: str) -> list[float]:
        v = rows[col].to_numpy(float)
        return [float(v.min()), float(v.max())]

    floor = rows.groupby("n_params")["pretrain_image_tokens"].min()
    return {
        "token_floor": [[float(n), float(t)] for n, t in floor.items()],
        "n_params": span("n_params"),
        "total_samples": span("total_samples"),
        "pretrain_image_tokens": span("pretrain_image_tokens"),
        "max_image_tokens": span("max_image_tokens"),
        "text_len": [float(rows["min_text_len"].min()), float(rows[["pretrain_text_len"]].to_numpy().max())],
        "finetune_samples": span("finetune_samples"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# versions on disk


def fit_version(data_hash: str, code: str) -> str:
    return hashlib.sha256(f"{data_hash}:{code}".encode()).hexdigest()[:12]


def save_fit(fit: Fit) -> Path:
    from planner import paths
    from planner.store import atomic_write_text

    return atomic_write_text(paths.fits_dir() / f"{fit.version}.json", fit.to_json())


def load_fit(path: str | Path) -> Fit:
    path = Path(path)
    try:
        return Fit.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClipaError(f"results/fits/{path.name}", f"not a readable fit file ({e})") from None


def load_or_fit(refit: bool = False, include_runs: bool = True) -> Fit:
    """The fit of the current data and code: from ``results/fits/<version>.json`` when it exists (unless ``refit``),
    else fitted now and saved. The version is a hash of the data rows and of this code, so new runs or a changed
    law give a new version and the old files stay as history. Local studies are fitted (or loaded) too and
    attached as ``fit.studies``."""
    data = fitting_data(include_runs=include_runs)
    dh, ch = data.hash(), code_hash()
    version = fit_version(dh, ch)
    fit = _cached(version, dh, ch, refit)
    if fit is None:
        fit = fit_accuracy(data)
        fit.version, fit.data_hash, fit.code_hash = version, dh, ch
        save_fit(fit)
    from planner.studies import load_or_fit_studies

    fit.studies = load_or_fit_studies(fit.params, refit=refit, include_runs=include_runs)
    return fit


def _cached(version: str, dh: str, ch: str, refit: bool) -> Fit | None:
    from planner import paths

    if refit:
        return None
    # the user's fits first, then the one shipped with the code (a fresh clone plans without refitting)
    for folder in dict.fromkeys((paths.fits_dir(), paths.PACKAGE_ROOT / "results" / "fits")):
        path = folder / f"{version}.json"
        if path.exists():
            fit = load_fit(path)
            if fit.data_hash == dh and fit.code_hash == ch:
                return fit
    return None
