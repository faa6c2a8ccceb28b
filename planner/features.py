"""Flat, fixed-width features of a training run: what the accuracy model sees of a (model, dataset, stages) triple.

A run is reduced to its model size, its dataset and, per stage, the samples seen, the image tokens kept per sample,
the text tokens per caption and the kind of image masking. Stages are padded to ``MAX_STAGES`` columns
(``s0_samples`` ... ``s7_samples``; an absent stage has 0 samples), so a DataFrame of many candidates can be
evaluated column-wise by ``planner.law`` without a Python loop over runs.

``features_table`` computes the features of many runs at once from per-stage arrays; ``run_features`` (one run's
pydantic stages) and ``planner.search.candidate_features`` (the search's grid) both go through it.

Conventions that carry modelling decisions:

* model size ``n_params`` is the image tower's transformer parameter count (``planner.variants.size_rank``), so B/32
  and B/16 are the same size: the patch only changes the token count (CLIPA-v1's own reading of B/32 vs B/16);
* image tokens are the patches a stage keeps after masking (``planner.flops.kept_image_tokens``), whatever removed
  the others (lower resolution, a larger patch, or random/grid/block masking); block masks are flagged separately
  because they keep one contiguous region (CLIPA-v2 Table 2: clearly worse than random at high ratios);
* text tokens are the caption length of the stage; the reduction method is kept for reference only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from planner.datasets import canonical_dataset
from planner.errors import ClipaError
from planner.flops import image_patches, kept_image_tokens
from planner.spec import ImageMask, Stage
from planner.variants import VariantError, decode_variant, size_rank

MAX_STAGES = 8
STAGE_FIELDS = ("samples", "image_tokens", "text_len", "mask_ratio", "block_mask", "image_res")


def stage_columns() -> list[str]:
    return [f"s{i}_{f}" for i in range(MAX_STAGES) for f in STAGE_FIELDS]


FEATURE_COLUMNS = [
    "model", "size", "patch", "n_params", "dataset", "n_stages", "total_samples", "finetune_samples",
    "pretrain_image_tokens", "pretrain_text_len", "max_image_tokens", "min_text_len", "final_image_res",
] + stage_columns()


def features_table(models: Sequence[str], dataset: str, stages: dict[str, Any], index: Any = None) -> Any:
    """``FEATURE_COLUMNS`` of many runs of ``dataset`` at once. ``stages`` maps each of ``samples``, ``image_res``,
    ``mask_ratio`` (0 where the stage does not mask), ``block_mask`` and ``text_len`` to a (runs, MAX_STAGES)
    array; an absent stage has 0 samples (and zeros elsewhere). Kept image tokens come from the FLOP counter's
    ``kept_image_tokens``, once per distinct (resolution, patch, ratio). Raises ClipaError for an unknown model."""
    import numpy as np
    import pandas as pd

    codes, names = pd.factorize(np.asarray(models, dtype=object))
    try:
        variants = [decode_variant(m) for m in names]
    except VariantError as e:
        raise ClipaError("model", str(e)) from None
    ds = canonical_dataset(dataset)
    samples = np.asarray(stages["samples"], dtype=np.int64)
    res = np.asarray(stages["image_res"], dtype=np.int64)
    ratio = np.asarray(stages["mask_ratio"], dtype=float)
    block = np.asarray(stages["block_mask"], dtype=bool)
    text = np.asarray(stages["text_len"], dtype=np.int64)
    n = len(codes)
    patch = np.array([v.patch for v in variants], dtype=np.int64)[codes]
    present = samples > 0
    tokens = np.zeros((n, MAX_STAGES), dtype=np.int64)
    # one integer key per (resolution, patch, ratio) cell: hashing int64 is far faster than hashing tuples
    cell_res, cell_patch, cell_ratio = res[present], np.broadcast_to(patch[:, None], res.shape)[present], ratio[present]
    ratio_codes, ratios = pd.factorize(cell_ratio)
    key = (cell_res * 4096 + cell_patch) * max(len(ratios), 1) + ratio_codes
    cell_codes, keys = pd.factorize(key)
    first = np.zeros(len(keys), dtype=np.int64)
    first[cell_codes[::-1]] = np.arange(len(cell_codes))[::-1]  # a cell of each key
    kept = np.array([kept_image_tokens(image_patches(int(cell_res[i]), int(cell_patch[i])), float(cell_ratio[i]))
                     for i in first], dtype=np.int64)
    tokens[present] = kept[cell_codes] if len(kept) else 0
    n_stages = present.sum(axis=1)
    rows = np.arange(n)
    out: dict[str, Any] = {
        "model": np.array([v.name for v in variants], dtype=object)[codes],
        "size": np.array([v.size for v in variants], dtype=object)[codes],
        "patch": patch,
        "n_params": np.array([10 ** size_rank(v.size) for v in variants], dtype=float)[codes],
        "dataset": np.full(n, ds, dtype=object),
        "n_stages": n_stages,
        "total_samples": samples.sum(axis=1),
        "finetune_samples": samples[:, 1:].sum(axis=1),
        "pretrain_image_tokens": tokens[:, 0],
        "pretrain_text_len": text[:, 0],
        "max_image_tokens": np.where(present, tokens, np.iinfo(np.int64).min).max(axis=1),
        "min_text_len": np.where(present, text, np.iinfo(np.int64).max).min(axis=1),
        "final_image_res": res[rows, np.maximum(n_stages - 1, 0)],
    }
    columns = {"samples": samples, "image_tokens": tokens, "text_len": text, "mask_ratio": ratio,
               "block_mask": block, "image_res": res}
    for i in range(MAX_STAGES):
        for f in STAGE_FIELDS:
            out[f"s{i}_{f}"] = columns[f][:, i]
    return pd.DataFrame(out, index=index)[FEATURE_COLUMNS]


def run_features(model: str, dataset: str, stages: Sequence[Stage]) -> dict[str, Any]:
    """One run's flat features (keys: ``FEATURE_COLUMNS``; ``features_table`` of one run). Raises ClipaError for an
    unknown model or dataset, no stages or more than ``MAX_STAGES``."""
    import numpy as np

    stages = list(stages)
    if not stages:
        raise ClipaError("stages", "a run needs at least one stage")
    if len(stages) > MAX_STAGES:
        raise ClipaError("stages", f"at most {MAX_STAGES} stages")
    arrays = {f: np.zeros((1, MAX_STAGES)) for f in ("samples", "image_res", "mask_ratio", "block_mask", "text_len")}
    for i, st in enumerate(stages):
        arrays["samples"][0, i] = st.samples
        arrays["image_res"][0, i] = st.image_res
        arrays["mask_ratio"][0, i] = st.mask_ratio if st.image_mask != ImageMask.none else 0.0
        arrays["block_mask"][0, i] = st.image_mask == ImageMask.block
        arrays["text_len"][0, i] = st.text_len
    return features_table([model], dataset, arrays).to_dict(orient="records")[0]


def features_frame(rows: Sequence[dict[str, Any]] | None = None, index: Any = None) -> Any:
    """A DataFrame with ``FEATURE_COLUMNS`` from ``run_features`` dicts (column order fixed, index optional)."""
    import pandas as pd

    return pd.DataFrame(list(rows or []), columns=FEATURE_COLUMNS, index=index)


def schedule_features(model: str, dataset: str, schedule: str) -> dict[str, Any]:
    """``run_features`` of a run written in the papers' shorthand."""
    from planner.schedule import parse_schedule

    return run_features(model, dataset, parse_schedule(schedule, model))
