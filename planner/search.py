"""Candidate search: enumerate CLIPA recipes, price each with the cost model, predict each, rank within a budget.

A candidate is a model variant, one pre-training stage (resolution, text length and reduction, samples, batch) and
zero, one or two full-resolution fine-tune stages (resolution, samples, random mask ratio). The space is a grid
(``SearchSpace``) chosen per hardware kind: web-scale models and samples on accelerators, tiny towers on the CPU
profile. Pricing is vectorised: per-sample FLOPs and MFU come from the one FLOP counter and cost model for each
distinct stage shape (a few hundred), then scale with samples; pydantic stages are built only for the plans shown,
by the recipe book's stage builder (``planner.schedule.recipe_stage``). Features for the accuracy law come from
``planner.features.features_table``, the same code as one run's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from planner.cost import stage_tokens
from planner.flops import stage_flops
from planner.hardware import Hardware, get_hardware
from planner.recipe import FULL_TEXT_LEN
from planner.schedule import recipe_stage
from planner.spec import Stage
from planner.variants import decode_variant


@dataclass(frozen=True)
class FinetuneStage:
    res: int
    samples: int
    mask_ratio: float


@dataclass(frozen=True)
class SearchSpace:
    models: tuple[str, ...]
    pretrain_res: dict[int, tuple[int, ...]]  # patch -> resolutions
    text_lens: tuple[int, ...]
    pretrain_samples: tuple[int, ...]
    finetunes: tuple[tuple[FinetuneStage, ...], ...]  # each option: 0, 1 or 2 stages
    min_batch: int
    max_batch: int
    steps_per_batch_doubling: int = 3000  # batch grows with samples so that runs take at least ~this many steps
    full_res: int = 224
    extra: dict = field(default_factory=dict)
    # (pre-training, fine-tune) lr_base for every candidate; None: CLIPA's schedule defaults (planner.schedule)
    lr_base: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        n = 0
        for m in self.models:
            n += len(self.pretrain_res[decode_variant(m).patch]) * len(self.text_lens) * len(self.pretrain_samples)
        return n * len(self.finetunes)


def _geom(lo: float, hi: float, n: int) -> tuple[int, ...]:
    return tuple(int(round(x, -int(math.floor(math.log10(x))) + 2)) for x in np.geomspace(lo, hi, n))


def accelerator_space() -> SearchSpace:
    fts: list[tuple[FinetuneStage, ...]] = [()]
    for samples in (128_000_000, 256_000_000, 512_000_000):
        for mask in (0.0, 0.3, 0.5):
            one = (FinetuneStage(224, samples, mask),)
            fts.append(one)
            for s336 in (64_000_000, 128_000_000):
                fts.append(one + (FinetuneStage(336, s336, 0.4),))
    return SearchSpace(
        models=("S/16", "B/16", "L/16", "L/14", "H/14", "g/14", "bigG/14"),
        pretrain_res={14: (56, 70, 84, 112, 140, 168, 224), 16: (64, 80, 96, 112, 128, 160, 224)},
        text_lens=(8, 16, 32),
        pretrain_samples=_geom(1.28e8, 3.2e10, 20),
        finetunes=tuple(fts),
        min_batch=4_096,
        max_batch=65_536,
    )


# Learning rates of the CPU space (lr = base x batch / 256). CLIPA's 8e-6 is tuned for web-scale towers and
# batches of 32k; the tiny towers here (1-4 layers, width 32-128) on the generated data learn nothing with it in
# minutes. Measured on `clipa data synth` 32 px data (cpu-2core, mu/8, batch 64, docs/closed_loop.md): after 8k
# samples (128 steps) lr_base 1e-3 / 4e-3 / 1.6e-2 all sit at chance (2.0 / 0.9 / 1.5%: too few steps for any
# rate); after 40k samples at 32 px / 16 tokens, 3e-3 reaches 9.4% (chance 1.6%). 3e-3 is used for pre-training
# (the middle of the range where AdamW on these towers trains stably) and a quarter of it for the fine-tune,
# which starts from trained weights.
CPU_LR_BASE = (3e-3, 7.5e-4)


def cpu_space(data_res: int = 64) -> SearchSpace:
    """Tiny towers on generated data, for the local profile: runs of seconds to tens of minutes.

    ``data_res`` is the generated data's resolution: pre-training resolutions go up to it and the fine-tune stage
    trains at it (upsampling beyond the data adds tokens but no information)."""
    res = tuple(r for r in (16, 24, 32, 48, 64) if r <= data_res) or (data_res // 8 * 8,)
    full = max(res)
    fts: list[tuple[FinetuneStage, ...]] = [()]
    for samples in (2_000, 8_000, 32_000):
        for mask in (0.0, 0.5):
            fts.append((FinetuneStage(full, samples, mask),))
    return SearchSpace(
        models=("mu/8", "mini/8", "xs/8"),
        pretrain_res={8: res},
        text_lens=(8, 16, 32),
        # x1.4 steps (a plan can land near its budget) from 2K to 4.8M samples: a $0.08 plan (10x the closed loop's
        # pilot) affords ~5M samples of mini/8 and ~1.2M of xs/8; capped at 320K, loop 5's 10x plan spent 7%
        pretrain_samples=_geom(2e3, 3.2e5 * 160 ** (8 / 15), 24),
        finetunes=tuple(fts),
        # One batch size for pilots and plans alike: the law has no batch or step-count term, so a plan at a batch
        # its pilot never used is an unmeasured extrapolation (a 256 plan scored 11% where 128 pilots reached 13.5%).
        min_batch=64,  # a contrastive batch of 64 captions over 64 classes; smaller ones are mostly overhead here
        max_batch=64,
        steps_per_batch_doubling=200,
        full_res=full,
        lr_base=CPU_LR_BASE,
    )


def space_for(hw: Hardware, data_res: int | None = None) -> SearchSpace:
    return cpu_space(data_res or 64) if hw.kind == "cpu" else accelerator_space()


def batch_for(samples: int, space: SearchSpace) -> int:
    """Largest power of two giving at least ``steps_per_batch_doubling`` steps, within the space's bounds."""
    b = 2 ** int(math.floor(math.log2(max(samples / space.steps_per_batch_doubling, 1))))
    return int(min(max(b, space.min_batch), space.max_batch))


def ft_batch(ft: FinetuneStage, space: SearchSpace) -> int:
    cap = space.max_batch // 2 if ft.res <= space.full_res else space.max_batch // 4
    return int(min(batch_for(ft.samples, space), max(cap, space.min_batch)))


def make_stage(model: str, index: int, samples: int, batch: int, res: int, text_len: int, mask: float,
               prev_finetunes: int = 0, lr_base: tuple[float, float] | None = None) -> Stage:
    """A candidate's stage: the recipe book's stage (``planner.schedule.recipe_stage``) at the search's batch and,
    where the space sets them, its (pre-training, fine-tune) lr bases."""
    return recipe_stage(model, index, samples, res, text_len=text_len, mask_ratio=mask, batch=batch,
                        lr_base=lr_base[0 if index == 0 else 1] if lr_base else None, prev_finetunes=prev_finetunes)


class _PerSample:
    """Per-sample training FLOPs and device-seconds for each distinct stage shape, from the one cost model."""

    def __init__(self, hw: Hardware):
        self.hw = hw
        self.cache: dict[tuple, tuple[float, float]] = {}

    def __call__(self, model: str, res: int, text_len: int, mask: float, batch: int, index: int) -> tuple[float, float]:
        key = (model, res, text_len, mask, batch, index > 0)
        if key not in self.cache:
            st = make_stage(model, index, 1_000_000, batch, res, text_len, mask)
            flops = stage_flops(model, st).train_per_sample
            mfu = self.hw.mfu.mfu(stage_tokens(model, st), decode_variant(model).image.width)
            self.cache[key] = (flops, flops / (self.hw.peak_flops * mfu))
        return self.cache[key]


def enumerate_candidates(space: SearchSpace, hardware: str, pricing: str) -> pd.DataFrame:
    """Every candidate with its stages (flat columns) and its cost on ``hardware`` at ``pricing``."""
    hw = get_hardware(hardware)
    rate = hw.price(pricing).usd_per_device_hour
    per_sample = _PerSample(hw)
    samples = np.asarray(space.pretrain_samples, dtype=np.float64)
    batches = np.array([batch_for(int(s), space) for s in samples])
    n_ft = len(space.finetunes)
    cols: dict[str, list] = {k: [] for k in ("model", "pt_res", "pt_text", "pt_samples", "pt_batch", "ft_id", "flops", "secs")}
    for model in space.models:
        patch = decode_variant(model).patch
        ft_flops = np.zeros(n_ft)
        ft_secs = np.zeros(n_ft)
        for ft_id, ft in enumerate(space.finetunes):
            for j, stage in enumerate(ft):
                f, sec = per_sample(model, stage.res, FULL_TEXT_LEN, stage.mask_ratio, ft_batch(stage, space), j + 1)
                ft_flops[ft_id] += f * stage.samples
                ft_secs[ft_id] += sec * stage.samples
        for res, text_len in itertools.product(space.pretrain_res[patch], space.text_lens):
            per = np.array([per_sample(model, res, text_len, 0.0, int(b), 0) for b in batches])
            # grid: pre-training samples (rows) x fine-tune options (columns), flattened row-major
            cols["flops"].append((per[:, 0] * samples)[:, None] + ft_flops[None, :])
            cols["secs"].append((per[:, 1] * samples)[:, None] + ft_secs[None, :])
            n = len(samples) * n_ft
            cols["model"].append(np.full(n, model, dtype=object))
            cols["pt_res"].append(np.full(n, res))
            cols["pt_text"].append(np.full(n, text_len))
            cols["pt_samples"].append(np.repeat(samples.astype(np.int64), n_ft))
            cols["pt_batch"].append(np.repeat(batches, n_ft))
            cols["ft_id"].append(np.tile(np.arange(n_ft), len(samples)))
    df = pd.DataFrame({k: np.concatenate([np.ravel(a) for a in v]) for k, v in cols.items()})
    df["device_hours"] = df.pop("secs") / 3600.0
    df["cost_usd"] = df["device_hours"] * rate
    return df


def candidate_stages(row, space: SearchSpace) -> list[Stage]:
    """The pydantic stages of one candidate row."""
    stages = [make_stage(row.model, 0, row.pt_samples, row.pt_batch, row.pt_res, row.pt_text, 0.0,
                         lr_base=space.lr_base)]
    for j, ft in enumerate(space.finetunes[int(row.ft_id)]):
        stages.append(make_stage(row.model, j + 1, ft.samples, ft_batch(ft, space), ft.res, FULL_TEXT_LEN, ft.mask_ratio, j,
                                 lr_base=space.lr_base))
    return stages


def frontier(df: pd.DataFrame, value: str = "predicted_top1", n_bins: int = 40) -> pd.DataFrame:
    """Best ``value`` reachable at each cost: the upper envelope of candidates, on a log grid of costs."""
    d = df.sort_values("cost_usd")
    best = d[value].cummax()
    keep = d[value] >= best  # candidates that improve on every cheaper one
    env = d[keep][["cost_usd", value, "model"]]
    if len(env) > n_bins:
        grid = np.geomspace(env["cost_usd"].iloc[0], env["cost_usd"].iloc[-1], n_bins)
        idx = np.searchsorted(env["cost_usd"].to_numpy(), grid, side="right") - 1
        env = env.iloc[np.unique(np.clip(idx, 0, len(env) - 1))]
    return env.reset_index(drop=True)


# features (planner.features.FEATURE_COLUMNS) -> predicted_top1, low, high, extrapolated (same index)
Predictor = Callable[[pd.DataFrame], pd.DataFrame]


def candidate_features(cands: pd.DataFrame, space: SearchSpace, dataset: str) -> pd.DataFrame:
    """``planner.features`` rows of every candidate, column-wise: the candidates' stage arrays through
    ``planner.features.features_table``, the code ``run_features`` uses for one run."""
    from planner.features import MAX_STAGES, features_table

    n = len(cands)
    ft_id = cands["ft_id"].to_numpy().astype(np.int64)
    stages = {f: np.zeros((n, MAX_STAGES)) for f in ("samples", "image_res", "mask_ratio", "block_mask", "text_len")}
    stages["samples"][:, 0] = cands["pt_samples"].to_numpy()
    stages["image_res"][:, 0] = cands["pt_res"].to_numpy()
    stages["text_len"][:, 0] = cands["pt_text"].to_numpy()
    # fine-tunes: a (option, stage) table per field, gathered by ft_id; later stage columns stay zero (absent)
    for j in range(max((len(o) for o in space.finetunes), default=0)):
        table = np.zeros((len(space.finetunes), 3))
        for k, opt in enumerate(space.finetunes):
            if j < len(opt):
                table[k] = (opt[j].samples, opt[j].res, opt[j].mask_ratio)
        rows = table[ft_id]
        stages["samples"][:, j + 1] = rows[:, 0]
        stages["image_res"][:, j + 1] = rows[:, 1]
        stages["mask_ratio"][:, j + 1] = rows[:, 2]
        stages["text_len"][:, j + 1] = np.where(rows[:, 0] > 0, FULL_TEXT_LEN, 0)
    return features_table(cands["model"].to_numpy(), dataset, stages, index=cands.index)
