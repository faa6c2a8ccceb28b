"""The CLIPA papers' schedule shorthand, parsed into stages and written back.

Grammar (stages joined by ``+``)::

    SAMPLES@RES[/TEXTLEN[:truncate|random|block|syntax]][~RATIO[:random|grid|block]][,batch=N][,lr=BASE][,warmup=N]

``12.8B@70/8 + 512M@224/32~0.3 + 128M@336/32~0.4`` is CLIPA-v2's H/14 recipe. SAMPLES accepts ``12.8B``, ``512M``,
``640K``, ``2.56e9`` or a plain integer. What a stage leaves out is the CLIPA recipes' default (``planner.recipe``:
text 32 tokens, syntax reduction for a shorter pre-training caption, random masking, batch, lr base, warm-up);
``recipe_stage`` is the one place a ``Stage`` is built from those defaults (the parser and the search use it);
``planner.recipe.format_schedule`` writes a run back, leaving out what equals them.
"""

from __future__ import annotations

import math
import re

from pydantic import ValidationError

from planner.errors import ClipaError, from_validation_error
from planner.recipe import (FULL_TEXT_LEN, default_batch, default_image_mask, default_lr_base, default_text_reduction,
                            default_warmup)
from planner.spec import ImageMask, Stage, TextReduction
from planner.variants import VariantError, decode_variant

_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_STAGE_RE = re.compile(
    r"""^\s*
    (?P<samples>[0-9][0-9_.,]*(?:[eE][+-]?[0-9]+)?[KMBGTkmbgt]?)
    \s*@\s*(?P<res>[0-9]+)
    (?:\s*/\s*(?P<text>[0-9]+)(?:\s*:\s*(?P<tred>[a-z]+))?)?
    (?:\s*~\s*(?P<ratio>[0-9.]+)(?:\s*:\s*(?P<mask>[a-z]+))?)?
    (?P<extras>(?:\s*,\s*[a-z_]+\s*=\s*[^,]+)*)
    \s*$""",
    re.VERBOSE,
)


def parse_samples(text: str, field: str = "samples", allow_zero: bool = False) -> int:
    """'12.8B' -> 12_800_000_000; '2.56e9'; '512M'; '1000'."""
    t = text.strip().replace("_", "")
    if not t:
        raise ClipaError(field, "empty sample count")
    mult = 1.0
    if t[-1].upper() in _SUFFIX and not t[-1].isdigit():
        mult = _SUFFIX[t[-1].upper()]
        t = t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise ClipaError(field, f"{text!r} is not a sample count like 12.8B, 512M or 2.56e9") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ClipaError(field, f"sample count must be positive, got {text!r}")
    if value > 1e15:
        raise ClipaError(field, f"sample count {text!r} is implausibly large")
    return int(round(value))


def _parse_stage(text: str, index: int, model: str) -> Stage:
    field = f"schedule stage {index + 1} ({text.strip()!r})"
    m = _STAGE_RE.match(text)
    if not m:
        raise ClipaError(
            field,
            "expected SAMPLES@RES[/TEXTLEN[:reduction]][~RATIO[:mask]][,batch=N][,lr=X][,warmup=N], "
            "e.g. 512M@224/32~0.3",
        )
    samples = parse_samples(m["samples"], field)
    res = int(m["res"])
    text_len = int(m["text"]) if m["text"] else FULL_TEXT_LEN
    if m["tred"]:
        if m["tred"] not in TextReduction.__members__:
            raise ClipaError(field, f"unknown text reduction {m['tred']!r} (truncate, random, block, syntax)")
        tred = TextReduction(m["tred"])
    else:
        tred = None
    ratio = 0.0
    mask = None
    if m["ratio"]:
        try:
            ratio = float(m["ratio"])
        except ValueError:
            raise ClipaError(field, f"mask ratio {m['ratio']!r} is not a number") from None
        if not 0.0 <= ratio < 1.0:
            raise ClipaError(field, f"mask ratio {ratio} is outside [0, 1)")
        if m["mask"]:
            if m["mask"] not in ("random", "grid", "block"):
                raise ClipaError(field, f"unknown mask {m['mask']!r} (random, grid, block)")
            mask = ImageMask(m["mask"]) if ratio > 0 else None
    extras: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (m["extras"] or "").split(","))):
        key, _, value = part.partition("=")
        extras[key.strip()] = value.strip()
    unknown = set(extras) - {"batch", "lr", "warmup"}
    if unknown:
        raise ClipaError(field, f"unknown option {sorted(unknown)[0]!r} (batch, lr, warmup)")
    try:
        batch = parse_samples(extras["batch"], field) if "batch" in extras else None
        lr = float(extras["lr"]) if "lr" in extras else None
        warmup = parse_samples(extras["warmup"], field, allow_zero=True) if "warmup" in extras else None
    except ValueError as e:
        raise ClipaError(field, f"bad option value: {e}") from None
    return recipe_stage(model, index, samples, res, text_len=text_len, mask_ratio=ratio, image_mask=mask,
                        text_reduction=tred, batch=batch, lr_base=lr, warmup=warmup, field=field)


def recipe_stage(model: str, index: int, samples: int, res: int, *, text_len: int = FULL_TEXT_LEN,
                 mask_ratio: float = 0.0, image_mask: ImageMask | None = None,
                 text_reduction: TextReduction | None = None, batch: int | None = None, lr_base: float | None = None,
                 warmup: int | None = None, prev_finetunes: int | None = None, field: str = "stage") -> Stage:
    """Stage ``index`` of a run of ``model``: what is not given is the recipe book's default (``planner.recipe``).
    ``prev_finetunes`` (default: every stage between the first and this one) picks the fine-tune lr base.
    A value the spec refuses is a ClipaError on ``field``."""
    prev = max(index - 1, 0) if prev_finetunes is None else prev_finetunes
    try:
        return Stage(
            samples=int(samples),
            batch_size=int(batch if batch is not None else default_batch(index, res)),
            image_res=int(res),
            image_mask=image_mask if image_mask is not None else ImageMask(default_image_mask(mask_ratio)),
            mask_ratio=float(mask_ratio),
            text_len=int(text_len),
            text_reduction=(text_reduction if text_reduction is not None
                            else TextReduction(default_text_reduction(index, text_len))),
            lr_base=lr_base if lr_base is not None else default_lr_base(index, samples, model, prev),
            warmup_samples=min(warmup if warmup is not None else default_warmup(index, samples), int(samples)),
            init="scratch" if index == 0 else "previous",
        )
    except ValidationError as e:
        err = from_validation_error(e)
        raise ClipaError(f"{field}.{err.field}" if err.field else field, err.message) from None


def split_stages(schedule: str) -> list[str]:
    # '+' joins stages, but '2.56e+9' is one number: don't split after an exponent marker.
    return [p for p in re.split(r"(?<![eE])\+", schedule)]


def parse_schedule(schedule: str, model: str) -> list[Stage]:
    """Parse the shorthand into stages for ``model`` (defaults depend on the model size)."""
    if not isinstance(schedule, str) or not schedule.strip():
        raise ClipaError("schedule", "empty schedule")
    try:
        decode_variant(model)
    except VariantError as e:
        raise ClipaError("model", str(e)) from None
    parts = split_stages(schedule)
    if any(not p.strip() for p in parts):
        raise ClipaError("schedule", f"empty stage in {schedule!r}")
    if len(parts) > 8:
        raise ClipaError("schedule", "at most 8 stages")
    return [_parse_stage(p, i, model) for i, p in enumerate(parts)]
