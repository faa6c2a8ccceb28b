"""The recipe book: the CLIPA papers' defaults for a stage, in one place; everything else asks here.

A stage's batch, learning-rate base, warm-up, text reduction and image mask default to what CLIPA-v1/v2 used:

* text length: 32 tokens (CLIPA's full caption length); reduction: ``syntax`` below 32 tokens in the first stage
  (CLIPA-v1/v2 pre-training), ``truncate`` otherwise;
* masking: ``random`` when a ratio is given (CLIPA-v2 Table 2: random beats grid and block), none at ratio 0;
* batch: 65,536 for the first stage, 32,768 for a fine-tune at up to 224 px, 16,384 above 224 px;
* lr base (lr = base x batch / 256): 8e-6 for pre-training (4e-6 for bigG and e), 4e-7 for a first fine-tune of
  512M samples or more, 8e-7 for a shorter one, 1e-7 for any later fine-tune;
* warm-up: 3,200 steps of 65,536 (209.7M samples) for pre-training, 26.2M samples for a fine-tune, each capped at
  5% (pre-training) or 20% (fine-tune) of the stage, and at the stage's samples.

Values are plain (the enum values of ``planner.spec`` as strings; its enums are ``str`` enums and compare equal to
them), so that the spec, the notation and the search all read one book without importing each other:
``planner.schedule`` parses the papers' shorthand and builds the one ``Stage`` from these defaults
(``recipe_stage``); ``format_schedule`` here writes stages back in the shorthand, leaving out what equals a default
(``RunSpec.schedule`` uses it, so the spec does not import the parser).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from planner.variants import decode_variant

FULL_TEXT_LEN = 32
PRETRAIN_BATCH = 65_536
FINETUNE_BATCH = 32_768
FINETUNE_HIRES_BATCH = 16_384
PRETRAIN_WARMUP = 3_200 * 65_536
FINETUNE_WARMUP = 800 * 32_768


def default_lr_base(index: int, samples: int, model: str, prev_finetunes: int) -> float:
    if index == 0:
        return 4e-6 if decode_variant(model).size in ("bigG", "e") else 8e-6
    if prev_finetunes == 0:
        return 4e-7 if samples >= 500_000_000 else 8e-7
    return 1e-7


def default_batch(index: int, res: int) -> int:
    if index == 0:
        return PRETRAIN_BATCH
    return FINETUNE_BATCH if res <= 224 else FINETUNE_HIRES_BATCH


def default_warmup(index: int, samples: int) -> int:
    """Warm-up samples of a stage (capped at its samples)."""
    cap = min(PRETRAIN_WARMUP, int(0.05 * samples)) if index == 0 else min(FINETUNE_WARMUP, int(0.2 * samples))
    return min(cap, int(samples))


def default_text_reduction(index: int, text_len: int) -> str:
    """``syntax`` for a shortened pre-training caption (CLIPA), ``truncate`` otherwise."""
    return "syntax" if (index == 0 and text_len < FULL_TEXT_LEN) else "truncate"


def default_image_mask(ratio: float) -> str:
    return "random" if ratio > 0 else "none"


# ---------------------------------------------------------------------------------------------------------------------
# the papers' shorthand, written back (parsed by planner.schedule)


def format_samples(n: int) -> str:
    """Shortest exact form: 12800000000 -> '12.8B', 524288000 -> '524288000' (not exact in M), 512000000 -> '512M'."""
    for suffix, mult in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= mult:
            for digits in range(0, 4):
                s = f"{n / mult:.{digits}f}"
                if int(round(float(s) * mult)) == n:
                    return s.rstrip("0").rstrip(".") + suffix if "." in s else s + suffix
    return str(n)


def format_stage(stage: Any, index: int, model: str) -> str:
    """One ``planner.spec.Stage`` in the notation, leaving out what equals the recipe's default."""
    s = f"{format_samples(stage.samples)}@{stage.image_res}/{stage.text_len}"
    if stage.text_reduction != default_text_reduction(index, stage.text_len):
        s += f":{stage.text_reduction.value}"
    if stage.image_mask != "none":
        s += f"~{stage.mask_ratio:g}"
        if stage.image_mask != "random":
            s += f":{stage.image_mask.value}"
    if stage.batch_size != default_batch(index, stage.image_res):
        s += f",batch={stage.batch_size}"
    if stage.lr_base != default_lr_base(index, stage.samples, model, max(index - 1, 0)):
        s += f",lr={stage.lr_base:g}"
    if stage.warmup_samples != default_warmup(index, stage.samples):
        s += f",warmup={stage.warmup_samples}"
    return s


def format_schedule(stages: Sequence[Any], model: str) -> str:
    """The paper's notation; ``parse_schedule(format_schedule(st, m), m)`` gives back the same stages
    (apart from ``init`` sources other than scratch/previous, which the shorthand cannot express)."""
    return " + ".join(format_stage(st, i, model) for i, st in enumerate(stages))
