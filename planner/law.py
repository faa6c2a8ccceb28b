r"""The accuracy law, written once: its formula, its parameter tables, its fit result, interval, range and cache.

Every study is a configuration of this one law (``LawConfig``): the ImageNet study (``planner.accuracy``: published
and executed runs on web-scale datasets) and each local study (``planner.studies``: runs on a ``local:`` dataset,
scored on its own held-out split). A change to the law is a change here; ``tests/planner/test_law.py`` fails if the
two studies' predictions for the same inputs and parameters ever differ.

The law (n = image-tower parameters / ``n_unit``, D = samples / ``d_unit``; image tokens relative to ``t_ref``,
text relative to ``TEXT_REF`` = 32 tokens, CLIPA's full caption; the derivation of each term is in
``planner.accuracy``)::

    top1   = c + softplus(100 - c - err)                   c: the floor (chance; 0 for ImageNet)
    err    = E + m_d (A n^-alpha + B max(D_eff, d_floor)^-beta + p)
    D_eff  = D                                           if D <= U_d (the dataset's unique samples)
           = U_d (1 + R (1 - exp(-(D/U_d - 1) / R)))     otherwise;  R = R* min(n, n_cap)^-rho
    pen(T, L) = n^-gamma [ c_i ((T_eff/t_ref)^-kappa - 1) + c_t max(0, (L/32)^-kappa_t - 1) ]
    T_eff  = kept image tokens x (patch/16)^-zeta x (eta if the stage masks in blocks)
    p      = pen(stage 1); for each later stage k with S_k samples:
             p <- q_k + (p - q_k) exp(-S_k / (s0 j_k^psi)),  q_k = pen(stage k),  j_k = max(1, T_k / T_(k-1))

Parameters are held in internal coordinates (``ln_A`` for A, ...); dataset log multipliers are ``ds:<name>``
(log m_d; a fit's reference dataset is 0). A configuration says which parameters its fit frees (with bounds and
optional Gaussian priors), which it takes from another fit (``shared``) and which are constants (a local study has
no irreducible error E, no data repetition and no patch term).

Each configuration keeps its own estimator, deliberately (the data differ): the ImageNet study a robust weighted
least squares with the Figure-2 drop rows, a local study a MAP fit with priors and a binomial noise floor. Both
build on ``ParamVector`` (bounded parameter vector, priors, at-bound report) and ``covariance`` here.

Interval: ``quantile x sqrt(noise^2 + g^T C g + dataset term + study term) x (1 + widen x range excess)``,
g the prediction's gradient in the free parameters (forward differences), C their covariance; the noise is the fit's
residual scale, at least the evaluation split's binomial noise when the fit knows the split's size; the dataset term
is the multipliers' spread for a dataset without results; the study term is a variance per row that a study adds for
what its fit cannot see (the ImageNet study: thin data where the run stands, ``planner.accuracy.thin_data``). Outside
the data's range (``AXES``) the prediction is flagged ``extrapolated``.

Fits are cached as ``results/fits/<prefix><version>.json``; the version hashes the fitted rows (``data_hash``) and
the code of the law (``code_hash``), so new runs or a changed law give a new version and old files stay as history.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from planner.datasets import DATASETS
from planner.errors import ClipaError
from planner.features import MAX_STAGES
from planner.recipe import FULL_TEXT_LEN

TEXT_REF = float(FULL_TEXT_LEN)  # text loses nothing at CLIPA's full caption length or more
Z80 = 1.2815515655446004  # two-sided 80%: the 10% and 90% quantiles of a normal
# interval growth per natural-log unit outside the data's range, where a fit has learned none of its own: the ImageNet
# study learns it from its backtest (``planner.accuracy.learn_range_widening``, in ``LawFit.thin``); a local study
# from its own forward predictions (``planner.studies.forward_widening``), with this value as its least
WIDEN_PER_LOG = 0.5
# a learned interval term covers this share of the out-of-sample errors it is learned from (the interval is 80%)
COVER_QUANTILE = 0.8
MIN_WIDEN_EXCESS = 0.1  # log units: closer to the range, an error says nothing about the growth per log unit


class Param(NamedTuple):
    """A fitted parameter: start, bounds, and an optional Gaussian prior (mean, sd); a str mean names a parameter
    of the fit it shares with (``"imagenet:alpha"``)."""

    name: str
    start: float
    lower: float
    upper: float
    prior: tuple[Any, float] | None = None


@dataclass(frozen=True)
class LawConfig:
    """One study's configuration of the law: units, floor, which parameters are fitted, shared or constant."""

    kind: str  # "imagenet" or "local-study": the fit file's kind
    n_unit: float
    d_unit: float
    d_floor: float  # the smallest D (law units) the sample term sees
    params: tuple[Param, ...]
    shared: tuple[str, ...] = ()  # taken unchanged from another fit
    constants: tuple[tuple[str, float], ...] = ()
    # a fit over several datasets frees a log multiplier per dataset (the reference's is 0)

    def evaluate(self, p: dict[str, float], features: pd.DataFrame, logm: np.ndarray | None = None, *,
                 t_ref: float = 256.0, chance: float = 0.0) -> np.ndarray:
        """The law's top-1 for each row of a features frame (``logm``: dataset log multipliers per row, default 0)."""
        X = Design.from_frame(features, self)
        lm = np.zeros(len(X.n)) if logm is None else np.asarray(logm, dtype=float)
        return top1({**dict(self.constants), **p}, X, lm, d_floor=self.d_floor, t_ref=t_ref, chance=chance)


# ---------------------------------------------------------------------------------------------------------------------
# the law


@dataclass
class Design:
    """Column arrays of a ``planner.features`` frame in a configuration's units."""

    n: np.ndarray
    D: np.ndarray
    U: np.ndarray  # unique samples of the dataset (inf: unlimited, e.g. a local dataset)
    S: np.ndarray  # (rows, MAX_STAGES)
    T: np.ndarray
    L: np.ndarray
    block: np.ndarray
    patch: np.ndarray
    dataset: np.ndarray  # names

    @classmethod
    def from_frame(cls, f: pd.DataFrame, config: LawConfig) -> Design:
        def stack(name: str, dtype=float) -> np.ndarray:
            return np.stack([f[f"s{i}_{name}"].to_numpy(dtype) for i in range(MAX_STAGES)], axis=1)

        datasets = f["dataset"].astype(str).to_numpy()
        du = config.d_unit
        uniq = {d: (DATASETS[d].unique_samples / du if d in DATASETS else np.inf) for d in set(datasets)}
        return cls(
            n=f["n_params"].to_numpy(float) / config.n_unit,
            D=f["total_samples"].to_numpy(float) / du,
            U=np.array([uniq[d] for d in datasets], dtype=float),
            S=stack("samples") / du,
            T=stack("image_tokens"),
            L=stack("text_len"),
            block=stack("block_mask", bool),
            patch=f["patch"].to_numpy(float),
            dataset=datasets,
        )


def top1(p: dict[str, float], X: Design, logm: np.ndarray, *, d_floor: float, t_ref: float,
         chance: float) -> np.ndarray:
    """Predicted top-1 (percent) for each row of X, with the dataset log multipliers ``logm`` per row."""
    n = X.n
    # the size dependence of repetition is applied only up to the largest model measured on heavily repeated data
    R = math.exp(p["ln_Rstar"]) * np.minimum(n, p["n_rep_cap"]) ** -p["rho"]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        epochs = np.where(np.isfinite(X.U), X.D / X.U, 0.0)
        extra = np.maximum(epochs - 1.0, 0.0)
        d_eff = np.where(epochs <= 1.0, X.D, X.U * (1.0 + R * (1.0 - np.exp(-extra / R))))
    base = math.exp(p["ln_A"]) * n ** -p["alpha"] + math.exp(p["ln_B"]) * np.maximum(d_eff, d_floor) ** -p["beta"]
    size = n ** -p["gamma"]
    ci, ct = math.exp(p["ln_ci"]), math.exp(p["ln_ct"])
    patch_eff = (X.patch / 16.0) ** -p["zeta"]

    def pen(k: int) -> np.ndarray:
        t = X.T[:, k] * patch_eff * np.where(X.block[:, k], p["eta"], 1.0)
        t = np.maximum(t, 1.0)
        text = np.maximum(X.L[:, k], 1.0)
        # the image term is a gain (negative) above t_ref, bounded by ci
        return size * (ci * ((t / t_ref) ** -p["kappa"] - 1.0)
                       + ct * np.maximum((text / TEXT_REF) ** -p["kappa_t"] - 1.0, 0.0))

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
    return chance + np.logaddexp(0.0, 100.0 - chance - err)  # a smooth floor at the chance level


def gradient(p: dict[str, float], free: Sequence[str], X: Design, logm: np.ndarray,
             law: Callable[[dict[str, float], np.ndarray], np.ndarray]) -> np.ndarray:
    """d prediction / d free parameters (forward differences), shape (rows, len(free)). ``law(params, logm)``
    evaluates the law on X; a dataset multiplier ``ds:<name>`` moves the log multiplier of that dataset's rows."""
    y0 = law(p, logm)
    g = np.zeros((len(y0), len(free)))
    for j, name in enumerate(free):
        h = 1e-5 * max(1.0, abs(p[name]))
        if name.startswith("ds:"):
            g[:, j] = (law(p, np.where(X.dataset == name[3:], logm + h, logm)) - y0) / h
        else:
            q = dict(p)
            q[name] = p[name] + h
            g[:, j] = (law(q, logm) - y0) / h
    return g


# ---------------------------------------------------------------------------------------------------------------------
# the data's range


class Axis(NamedTuple):
    """One axis of the data's range: a feature column, its range key, and which side of the range extrapolates."""

    label: str
    column: str
    key: str
    side: str  # "both", "above"
    fmt: str = "{:.3g}"


AXES = (
    Axis("model size (image-tower params)", "n_params", "n_params", "both"),
    Axis("samples", "total_samples", "total_samples", "both"),
    Axis("pre-training image tokens", "pretrain_image_tokens", "pretrain_image_tokens", "both"),
    Axis("image tokens", "max_image_tokens", "max_image_tokens", "above", "{}"),
    Axis("text tokens", "min_text_len", "text_len", "both"),
    Axis("fine-tune samples", "finetune_samples", "finetune_samples", "above"),
)


def data_ranges(rows: pd.DataFrame, token_floor: bool, samples_per_size: bool = False) -> dict[str, list]:
    """The range of every axis over the fitted rows; with ``token_floor``, also the fewest pre-training tokens per
    model size (the inverse scaling law: what a smaller model tolerated, a larger one tolerates too); with
    ``samples_per_size``, also the most samples each model size was trained on (``samples_reach``)."""
    out: dict[str, list] = {}
    if token_floor:
        floor = rows.groupby("n_params")["pretrain_image_tokens"].min()
        out["token_floor"] = [[float(n), float(t)] for n, t in floor.items()]
    if samples_per_size:
        reach = rows.groupby("n_params")["total_samples"].max()
        out["samples_reach"] = [[float(n), float(d)] for n, d in reach.items()]
    for ax in AXES:
        v = rows[ax.column].to_numpy(float)
        out[ax.key] = [float(v.min()), float(v.max())]
    # text: from the shortest caption of any stage to the longest pre-training caption
    out["text_len"] = [float(rows["min_text_len"].min()), float(rows[["pretrain_text_len"]].to_numpy().max())]
    return out


def token_floor(ranges: dict[str, list], n_params: np.ndarray) -> np.ndarray:
    """Fewest pre-training image tokens seen for a model of this size or a smaller one (1 without a floor); sizes
    below every observed one get the smallest size's floor."""
    pairs = np.asarray(ranges.get("token_floor", []), dtype=float).reshape(-1, 2)
    if len(pairs) == 0:
        return np.ones(len(n_params))
    sizes, tokens = pairs[:, 0], pairs[:, 1]
    # running minimum of tokens over sizes sorted ascending: floor(n) = min tokens among sizes <= n
    order = np.argsort(sizes)
    sizes, run_min = sizes[order], np.minimum.accumulate(tokens[order])
    idx = np.searchsorted(sizes, n_params * (1 + 1e-9), side="right") - 1
    return np.where(idx >= 0, run_min[np.maximum(idx, 0)], run_min[0])


def samples_reach(ranges: dict[str, list], n_params: np.ndarray) -> np.ndarray:
    """Most samples a model of this size was trained on in the data (inf without ``samples_reach``). A size without
    runs of its own gets the lesser reach of the nearest measured sizes on either side (the one nearest, outside
    the measured sizes)."""
    n = np.asarray(n_params, dtype=float)
    pairs = np.asarray(ranges.get("samples_reach", []), dtype=float).reshape(-1, 2)
    if len(pairs) == 0:
        return np.full(len(n), np.inf)
    pairs = pairs[np.argsort(pairs[:, 0])]
    sizes, reach = pairs[:, 0], pairs[:, 1]
    exact = np.isclose(n[:, None], sizes[None, :], rtol=1e-9, atol=0.0)
    below = np.clip(np.searchsorted(sizes, n, side="right") - 1, 0, len(sizes) - 1)
    above = np.clip(np.searchsorted(sizes, n, side="left"), 0, len(sizes) - 1)
    between = np.minimum(reach[below], reach[above])
    return np.where(exact.any(axis=1), reach[np.argmax(exact, axis=1)], between)


def _outside(x: np.ndarray, lo: float, hi: float, side: str) -> np.ndarray:
    """Natural-log distance of ``x`` outside [lo, hi] (0 inside). Above a range whose top is 0 (e.g. fine-tuning
    where the data never fine-tuned): one log unit, since the effect rests on the law's structure alone."""
    x = np.asarray(x, dtype=float)
    if side == "above":
        return np.where(x > hi, np.log(np.maximum(x, 1.0) / max(hi, 1.0)) if hi > 0 else 1.0, 0.0)
    x = np.maximum(x, 1e-12)
    return np.maximum(np.log(max(lo, 1e-12) / x), 0.0) + np.maximum(np.log(x / max(hi, 1e-12)), 0.0)


def range_excess(ranges: dict[str, list], f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Natural-log distance of each row outside the data's range (0 inside): in samples seen (beyond the data's
    range, or beyond the most samples its own model size was trained on, whichever is further), and summed over
    every other axis (model size, image tokens and the token floor, text length, fine-tune samples)."""
    samples = np.zeros(len(f))
    other = np.zeros(len(f))
    for ax in AXES:
        d = _outside(f[ax.column].to_numpy(float), *ranges[ax.key], ax.side)
        if ax.column == "total_samples":
            samples += d
        else:
            other += d
    D = np.maximum(f["total_samples"].to_numpy(float), 1.0)
    samples = np.maximum(samples, np.log(np.maximum(D / samples_reach(ranges, f["n_params"].to_numpy(float)), 1.0)))
    floor = token_floor(ranges, f["n_params"].to_numpy(float))
    other += np.maximum(np.log(floor / np.maximum(f["pretrain_image_tokens"].to_numpy(float), 1.0)), 0.0)
    return samples, other


def extrapolation_reasons(ranges: dict[str, list], feats: dict[str, Any], dataset_known: bool) -> list[str]:
    """Why one run's prediction is flagged (empty inside the data's range), axis by axis as ``range_excess``."""
    out = []
    for ax in AXES:
        x = feats[ax.column]
        lo, hi = ranges[ax.key]
        if ax.side == "above":
            if x > hi:
                out.append(f"{ax.label} {ax.fmt.format(x)} above the data's {hi:{'g' if ax.fmt == '{}' else '.3g'}}")
        elif x < lo or x > hi:
            out.append(f"{ax.label} {ax.fmt.format(x)} outside the data's {ax.fmt.format(lo)}..{ax.fmt.format(hi)}")
        if ax.column == "total_samples" and lo <= x <= hi:
            reach = float(samples_reach(ranges, np.array([float(feats["n_params"])]))[0])
            if x > reach:
                out.append(f"samples {x:.3g} above the {reach:.3g} that runs of this model size reached")
        if ax.column == "pretrain_image_tokens":
            floor = float(token_floor(ranges, np.array([float(feats["n_params"])]))[0])
            if x < floor:
                out.append(f"pre-training image tokens {x} below the {floor:g} seen for models of this size or smaller")
    if not dataset_known:
        out.append(f"dataset {feats['dataset']} has no results in the fit")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the fit result


@dataclass
class LawFit:
    """A fitted configuration of the law: parameters, their covariance, noise, the data's range, identity."""

    kind: str  # LawConfig.kind
    params: dict[str, float]  # every parameter the law reads, dataset log multipliers 'ds:<name>' included
    free: list[str]  # parameters in the covariance
    cov: list[list[float]]
    sigma: float  # residual noise (points) of one run
    ranges: dict[str, list]
    datasets: dict[str, float]  # dataset -> log multiplier (the reference is 0)
    dataset_sd: float = 0.0  # spread of the multipliers: the extra uncertainty of a dataset without results
    quantile: float = Z80  # of the 80% interval (normal, or Student-t for a fit with few degrees of freedom)
    t_ref: float = 256.0  # image tokens at which the image penalty is 0
    chance: float = 0.0  # the floor of top-1
    eval_n: int | None = None  # size of the evaluation split, when known: its binomial noise floors the noise
    study: str = ""
    dataset: str = ""  # a local study's dataset
    version: str = ""
    data_hash: str = ""
    code_hash: str = ""
    model_version: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    # a local study's data: its native image side (px) when records or the data's profile say it, and one line per
    # study constant (classes, eval size, resolution) the runs' records did not carry (planner.studies.StudyMeta)
    native_res: int | None = None
    assumed: list[str] = field(default_factory=list)
    # local studies' own fits by dataset, attached to the ImageNet fit; saved in their own files, not in this one
    studies: dict[str, LawFit] = field(default_factory=dict, repr=False)
    # the ImageNet study's thin-data term (planner.accuracy.thin_data): runs per model size and dataset in the fitted
    # rows ("cells") and the widths learned from the backtest ("widths"); both studies' range widening
    # ("widen_per_log": the ImageNet study's from its backtest, a local study's from its forward predictions)
    thin: dict[str, Any] = field(default_factory=dict)

    def version_for(self, dataset: str) -> str:
        """The fit version a prediction for ``dataset`` comes from: its study's fit for a fitted local study."""
        st = self.studies.get(dataset)
        return f"{self.version}+{st.version}" if st is not None else self.version

    def cov_matrix(self) -> np.ndarray:
        return np.asarray(self.cov, dtype=float).reshape(len(self.free), len(self.free))

    def param_sd(self) -> dict[str, float]:
        return dict(zip(self.free, np.sqrt(np.clip(np.diag(self.cov_matrix()), 0, None)).tolist()))

    # -- persistence: the ImageNet fit's file layout is the one of the shipped fits (clipa-acc-1) ---------------------
    def to_dict(self) -> dict[str, Any]:
        natural = {(k[3:] if k.startswith("ln_") else k): (math.exp(v) if k.startswith("ln_") else v)
                   for k, v in self.params.items()}
        common = {"version": self.version, "data_hash": self.data_hash, "code_hash": self.code_hash,
                  "params": self.params, "natural_params": natural, "free": self.free, "cov": self.cov,
                  "sigma": self.sigma, "ranges": self.ranges, "metrics": self.metrics}
        if self.kind == "imagenet":
            return {**common, "model_version": self.model_version, "datasets": self.datasets,
                    "dataset_sd": self.dataset_sd, "thin_data": self.thin}
        return {**common, "kind": self.kind, "study": self.study, "dataset": self.dataset,
                "t_quantile": self.quantile, "chance": self.chance, "t_ref": self.t_ref, "eval_n": self.eval_n,
                "n_classes": round(100.0 / self.chance) if self.chance else None, "native_res": self.native_res,
                "assumed": self.assumed, "thin_data": self.thin}

    def to_json(self) -> str:
        return json.dumps(round_floats(self.to_dict()), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LawFit:
        kind = d.get("kind", "imagenet")
        common = dict(params={k: float(v) for k, v in d["params"].items()}, free=list(d["free"]), cov=d["cov"],
                      sigma=float(d["sigma"]), ranges={k: list(v) for k, v in d["ranges"].items()},
                      version=d.get("version", ""), data_hash=d.get("data_hash", ""),
                      code_hash=d.get("code_hash", ""), metrics=d.get("metrics", {}))
        if kind == "imagenet":
            return cls(kind=kind, datasets={k: float(v) for k, v in d["datasets"].items()},
                       dataset_sd=float(d["dataset_sd"]), model_version=d.get("model_version", ""),
                       thin=dict(d.get("thin_data") or {}), **common)
        return cls(kind=kind, datasets={d["dataset"]: 0.0}, quantile=float(d["t_quantile"]),
                   chance=float(d["chance"]), t_ref=float(d["t_ref"]), eval_n=int(d["eval_n"]), study=d["study"],
                   dataset=d["dataset"], native_res=d.get("native_res"), assumed=list(d.get("assumed", [])),
                   thin=dict(d.get("thin_data") or {}), **common)


def round_floats(o: Any) -> Any:
    """12 significant digits (non-finite: null): the JSON of a refit is byte-identical across platforms'
    last-bit differences."""
    if isinstance(o, float):
        return float(f"{o:.12g}") if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: round_floats(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [round_floats(v) for v in o]
    return o


def without_studies(fit: LawFit) -> LawFit:
    return replace(fit, studies={})


# ---------------------------------------------------------------------------------------------------------------------
# prediction


def dataset_logm(fit: LawFit, datasets: np.ndarray, is_named: Callable[[str], bool]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log multiplier and whether the dataset has results in the fit; a dataset without results gets the
    mean multiplier of the named datasets (``is_named``)."""
    known = dict(fit.datasets)
    named = [v for d, v in known.items() if is_named(d)]
    mean = float(np.mean(named)) if named else 0.0
    uniq, inv = np.unique(datasets, return_inverse=True)
    vals = np.array([known.get(d, mean) for d in uniq])
    has = np.array([d in known for d in uniq])
    return vals[inv], has[inv]


WIDEN_AXES = ("model size", "other")  # the range widening is learned per axis group: size, and everything else


def widen_per_log(fit: LawFit) -> dict[str, float]:
    """The fit's interval growth per log unit outside its data's range, for the model-size axis and the others
    together: learned (the ImageNet study) or the default."""
    learned = fit.thin.get("widen_per_log") or {}
    return {k: float(learned.get(k, WIDEN_PER_LOG)) for k in WIDEN_AXES}


def widen_need(error: np.ndarray, inner: np.ndarray, excess: np.ndarray,
               covered: float | np.ndarray = 0.0) -> np.ndarray:
    """What each out-of-sample prediction needs of the interval's growth per log unit outside the range:
    ``max(0, |error| / inner - 1 - covered) / max(excess, MIN_WIDEN_EXCESS)``, ``inner`` its half-width inside the
    range and ``covered`` the growth other axes already give it. Both studies learn their widening from these needs
    (``planner.accuracy.learn_range_widening``, ``planner.studies.forward_widening``)."""
    ratio = np.abs(np.asarray(error, dtype=float)) / np.asarray(inner, dtype=float) - 1.0 - covered
    return np.maximum(ratio, 0.0) / np.maximum(np.asarray(excess, dtype=float), MIN_WIDEN_EXCESS)


def size_excess(ranges: dict[str, list], f: pd.DataFrame) -> np.ndarray:
    """Natural-log distance of each row's model size outside the data's size range (part of ``range_excess``'s
    other axes)."""
    return _outside(f["n_params"].to_numpy(float), *ranges["n_params"], "both")


def widening(widen: dict[str, float], size: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The interval's factor for rows ``size`` log units outside the size range and ``other`` outside the rest."""
    return 1.0 + widen["model size"] * np.asarray(size, dtype=float) + widen["other"] * np.asarray(other, dtype=float)


def predict(fit: LawFit, config: LawConfig, features: pd.DataFrame,
            is_named: Callable[[str], bool] = lambda d: True, extra_var: np.ndarray | None = None) -> pd.DataFrame:
    """Predictions for a frame of ``planner.features`` rows: predicted_top1, low, high (80%), extrapolated, how
    far outside the data's range, in log units (samples_excess, other_excess, and size_excess: the part of
    other_excess that is model size), and ``sd``: the standard deviation
    inside the range (before the range widening) without ``extra_var``, the study's own variance per row (points^2).
    Vectorised: one pass of the law per free parameter (for the interval), whatever the number of rows."""
    X = Design.from_frame(features, config)
    logm, known = dataset_logm(fit, X.dataset, is_named)

    def law(p: dict[str, float], lm: np.ndarray) -> np.ndarray:
        return top1(p, X, lm, d_floor=config.d_floor, t_ref=fit.t_ref, chance=fit.chance)

    mean = law(fit.params, logm)
    noise = np.full(len(mean), fit.sigma**2)
    if fit.eval_n is not None:
        # the evaluation split's own binomial noise is a floor on the residual noise of a single run
        pf = np.clip(mean / 100.0, 0.0, 1.0)
        noise = np.maximum(noise, (100.0 * np.sqrt(pf * (1 - pf) / max(fit.eval_n, 1))) ** 2)
    var = noise
    if fit.free:
        g = gradient(fit.params, fit.free, X, logm, law)
        var = var + np.einsum("ij,jk,ik->i", g, fit.cov_matrix(), g)
    # a dataset without results: its multiplier is uncertain by the spread of the known ones
    red = 100.0 - fit.params["E"] - mean  # the reducible error times the multiplier (before the floor)
    var += np.where(known, 0.0, (fit.dataset_sd * np.maximum(red, 0.0)) ** 2)
    samples_excess, other_excess = range_excess(fit.ranges, features)
    excess = samples_excess + other_excess
    total = var if extra_var is None else var + np.asarray(extra_var, dtype=float)
    size = size_excess(fit.ranges, features)
    half = fit.quantile * np.sqrt(total) * widening(widen_per_log(fit), size, excess - size)
    return pd.DataFrame({"predicted_top1": mean, "low": np.clip(mean - half, 0.0, 100.0),
                         "high": np.clip(mean + half, 0.0, 100.0), "extrapolated": (excess > 1e-9) | ~known,
                         "samples_excess": samples_excess, "other_excess": other_excess, "size_excess": size,
                         "sd": np.sqrt(var)},
                        index=features.index)


# ---------------------------------------------------------------------------------------------------------------------
# fitting helpers shared by the studies' estimators


@dataclass
class ParamVector:
    """The fitted parameters of one fit as a bounded vector for ``scipy.optimize.least_squares``."""

    names: list[str]
    x0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    held: dict[str, float]  # every parameter that is not fitted (constants, shared, fixed)
    priors: list[tuple[int, tuple[float, float]]]  # (index in names, (mean, sd))

    @classmethod
    def build(cls, table: Sequence[Param], held: dict[str, float], start: dict[str, float] | None = None,
              margin: float = 1e-9) -> ParamVector:
        rows = [t for t in table if t.name not in held]
        lo = np.array([t.lower for t in rows], dtype=float)
        hi = np.array([t.upper for t in rows], dtype=float)
        x0 = np.array([(start or {}).get(t.name, t.start) for t in rows], dtype=float)
        x0 = np.clip(x0, lo + margin * (hi - lo), hi - margin * (hi - lo))
        priors = [(i, t.prior) for i, t in enumerate(rows) if t.prior is not None]
        return cls([t.name for t in rows], x0, lo, hi, dict(held), priors)  # type: ignore[arg-type]

    def unpack(self, x: np.ndarray) -> dict[str, float]:
        p = dict(self.held)
        p.update(zip(self.names, map(float, x)))
        return p

    def at_bound(self, x: np.ndarray) -> list[str]:
        span = self.upper - self.lower
        edge = (x <= self.lower + 1e-6 * span) | (x >= self.upper - 1e-6 * span)
        return [n for n, e in zip(self.names, edge) if e]


def covariance(jac: np.ndarray, s2: float) -> np.ndarray:
    """Gauss-Newton covariance ``s^2 (J^T J)^+`` over every fitted parameter."""
    return s2 * np.linalg.pinv(jac.T @ jac, rcond=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# versions on disk


def files_hash(*paths: Path, salt: str = "") -> str:
    """The code identity of a configuration: this module and the modules that define it."""
    h = hashlib.sha256(salt.encode())
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


# this module, the features it reads and the recipe book (the text reference)
LAW_FILES = tuple(Path(__file__).resolve().parent / name for name in ("law.py", "features.py", "recipe.py"))


def fit_version(data_hash: str, code: str) -> str:
    return hashlib.sha256(f"{data_hash}:{code}".encode()).hexdigest()[:12]


def load_fit(path: str | Path) -> LawFit:
    """One fit file (either kind); an unreadable one is a ClipaError naming it."""
    path = Path(path)
    try:
        return LawFit.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClipaError(f"results/fits/{path.name}", f"not a readable fit file ({e})") from None


def save_fit(fit: LawFit, name: str) -> Path:
    from planner import paths
    from planner.store import atomic_write_text

    return atomic_write_text(paths.fits_dir() / name, fit.to_json())


def cached_or_fit(name: str, data_hash: str, code: str, refit: bool, fit: Callable[[], LawFit]) -> LawFit:
    """The fit saved as ``name`` (``<prefix><version>.json``) in the user's fits, then in the ones shipped with the
    code (a fresh clone plans without refitting), if its hashes match; else ``fit()``, saved under ``name``.
    An unreadable cached file is refitted and replaced (it is derived data)."""
    from planner import paths

    if not refit:
        for folder in dict.fromkeys((paths.fits_dir(), paths.PACKAGE_ROOT / "results" / "fits")):
            path = folder / name
            if path.exists():
                try:
                    cached = load_fit(path)
                except ClipaError:
                    continue
                if cached.data_hash == data_hash and cached.code_hash == code:
                    return cached
    result = fit()
    save_fit(result, name)
    return result
