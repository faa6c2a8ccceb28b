"""Flat, fixed-width features of a training run: what the accuracy model sees of a (model, dataset, stages) triple.

A run is reduced to its model size, its dataset and, per stage, the samples seen, the image tokens kept per sample,
the text tokens per caption and the kind of image masking. Stages are padded to ``MAX_STAGES`` columns
(``s0_samples`` ... ``s7_samples``; an absent stage has 0 samples), so a DataFrame of many candidates can be
evaluated column-wise by ``planner.accuracy.predict_frame`` without a Python loop over runs.

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


def run_features(model: str, dataset: str, stages: Sequence[Stage]) -> dict[str, Any]:
    """One run's flat features (keys: ``FEATURE_COLUMNS``). Raises ClipaError for an unknown model or dataset,
    no stages or more than ``MAX_STAGES``."""
    try:
        v = decode_variant(model)
    except VariantError as e:
        raise ClipaError("model", str(e)) from None
    ds = canonical_dataset(dataset)
    stages = list(stages)
    if not stages:
        raise ClipaError("stages", "a run needs at least one stage")
    if len(stages) > MAX_STAGES:
        raise ClipaError("stages", f"at most {MAX_STAGES} stages")
    out: dict[str, Any] = {
        "model": v.name,
        "size": v.size,
        "patch": v.patch,
        "n_params": 10 ** size_rank(v.size),
        "dataset": ds,
        "n_stages": len(stages),
    }
    tokens, texts = [], []
    for i in range(MAX_STAGES):
        if i < len(stages):
            st = stages[i]
            ratio = st.mask_ratio if st.image_mask != ImageMask.none else 0.0
            kept = kept_image_tokens(image_patches(st.image_res, v.patch), ratio)
            tokens.append(kept)
            texts.append(st.text_len)
            vals = (st.samples, kept, st.text_len, ratio, st.image_mask == ImageMask.block, st.image_res)
        else:
            vals = (0, 0, 0, 0.0, False, 0)
        for f, x in zip(STAGE_FIELDS, vals):
            out[f"s{i}_{f}"] = x
    out["total_samples"] = sum(st.samples for st in stages)
    out["finetune_samples"] = sum(st.samples for st in stages[1:])
    out["pretrain_image_tokens"] = tokens[0]
    out["pretrain_text_len"] = texts[0]
    out["max_image_tokens"] = max(tokens)
    out["min_text_len"] = min(texts)
    out["final_image_res"] = stages[-1].image_res
    return out


def features_frame(rows: Sequence[dict[str, Any]] | None = None, index: Any = None) -> Any:
    """A DataFrame with ``FEATURE_COLUMNS`` from ``run_features`` dicts (column order fixed, index optional)."""
    import pandas as pd

    return pd.DataFrame(list(rows or []), columns=FEATURE_COLUMNS, index=index)


def schedule_features(model: str, dataset: str, schedule: str) -> dict[str, Any]:
    """``run_features`` of a run written in the papers' shorthand."""
    from planner.schedule import parse_schedule

    return run_features(model, dataset, parse_schedule(schedule, model))
