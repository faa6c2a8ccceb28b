"""The CLIPA papers' schedule shorthand, parsed into stages and written back.

Grammar (stages joined by ``+``)::

    SAMPLES@RES[/TEXTLEN[:truncate|random|block|syntax]][~RATIO[:random|grid|block]][,batch=N][,lr=BASE][,warmup=N]

``12.8B@70/8 + 512M@224/32~0.3 + 128M@336/32~0.4`` is CLIPA-v2's H/14 recipe. SAMPLES accepts ``12.8B``, ``512M``,
``640K``, ``2.56e9`` or a plain integer. Defaults follow the CLIPA recipes (docs: ``clipa schedule --help``):

* text length: 32 (CLIPA's full caption length); reduction: ``syntax`` below 32 tokens in the first stage
  (CLIPA-v1/v2 pre-training), ``truncate`` otherwise;
* masking: ``random`` when a ratio is given (CLIPA-v2 Table 2: random beats grid and block);
* batch: 65,536 for the first stage, 32,768 for a fine-tune at up to 224 px, 16,384 above 224 px;
* lr base (lr = base x batch / 256): 8e-6 for pre-training (4e-6 for bigG and e), 4e-7 for a first fine-tune of
  512M samples or more, 8e-7 for a shorter one, 1e-7 for any later fine-tune;
* warm-up: 3,200 steps of 65,536 (209.7M samples) for pre-training, 26.2M samples for a fine-tune, each capped at
  5% (pre-training) or 20% (fine-tune) of the stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from pydantic import ValidationError

from planner.errors import ClipaError, from_validation_error
from planner.spec import ImageMask, Stage, TextReduction
from planner.variants import VariantError, decode_variant

FULL_TEXT_LEN = 32
PRETRAIN_BATCH = 65_536
FINETUNE_BATCH = 32_768
FINETUNE_HIRES_BATCH = 16_384
PRETRAIN_WARMUP = 3_200 * 65_536
FINETUNE_WARMUP = 800 * 32_768

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


def format_samples(n: int) -> str:
    """Shortest exact form: 12800000000 -> '12.8B', 524288000 -> '524288000' (not exact in M), 512000000 -> '512M'."""
    for suffix, mult in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= mult:
            for digits in range(0, 4):
                s = f"{n / mult:.{digits}f}"
                if int(round(float(s) * mult)) == n:
                    return s.rstrip("0").rstrip(".") + suffix if "." in s else s + suffix
    return str(n)


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
    if index == 0:
        return min(PRETRAIN_WARMUP, int(0.05 * samples))
    return min(FINETUNE_WARMUP, int(0.2 * samples))


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
        tred = TextReduction.syntax if (index == 0 and text_len < FULL_TEXT_LEN) else TextReduction.truncate
    ratio = 0.0
    mask = ImageMask.none
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
            mask = ImageMask(m["mask"])
        elif ratio > 0:
            mask = ImageMask.random
        if ratio == 0.0:
            mask = ImageMask.none
    extras: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (m["extras"] or "").split(","))):
        key, _, value = part.partition("=")
        extras[key.strip()] = value.strip()
    unknown = set(extras) - {"batch", "lr", "warmup"}
    if unknown:
        raise ClipaError(field, f"unknown option {sorted(unknown)[0]!r} (batch, lr, warmup)")
    return _build_stage(index, samples, res, text_len, tred, mask, ratio, extras, model, field)


def _build_stage(index, samples, res, text_len, tred, mask, ratio, extras, model, field) -> Stage:
    prev_ft = max(index - 1, 0)
    try:
        batch = parse_samples(extras["batch"], field) if "batch" in extras else default_batch(index, res)
        lr = float(extras["lr"]) if "lr" in extras else default_lr_base(index, samples, model, prev_ft)
        warmup = (
            parse_samples(extras["warmup"], field, allow_zero=True)
            if "warmup" in extras
            else default_warmup(index, samples)
        )
    except ValueError as e:
        raise ClipaError(field, f"bad option value: {e}") from None
    try:
        return Stage(
            samples=samples,
            batch_size=batch,
            image_res=res,
            image_mask=mask,
            mask_ratio=ratio,
            text_len=text_len,
            text_reduction=tred,
            lr_base=lr,
            warmup_samples=min(warmup, samples),
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


def format_stage(stage: Stage, index: int, model: str) -> str:
    s = f"{format_samples(stage.samples)}@{stage.image_res}/{stage.text_len}"
    default_tred = (
        TextReduction.syntax if (index == 0 and stage.text_len < FULL_TEXT_LEN) else TextReduction.truncate
    )
    if stage.text_reduction != default_tred:
        s += f":{stage.text_reduction.value}"
    if stage.image_mask != ImageMask.none:
        s += f"~{stage.mask_ratio:g}"
        if stage.image_mask != ImageMask.random:
            s += f":{stage.image_mask.value}"
    if stage.batch_size != default_batch(index, stage.image_res):
        s += f",batch={stage.batch_size}"
    if stage.lr_base != default_lr_base(index, stage.samples, model, max(index - 1, 0)):
        s += f",lr={stage.lr_base:g}"
    if stage.warmup_samples != min(default_warmup(index, stage.samples), stage.samples):
        s += f",warmup={stage.warmup_samples}"
    return s


def format_schedule(stages: Sequence[Stage], model: str) -> str:
    """The paper's notation; ``parse_schedule(format_schedule(st, m), m)`` gives back the same stages
    (apart from ``init`` sources other than scratch/previous, which the shorthand cannot express)."""
    return " + ".join(format_stage(st, i, model) for i, st in enumerate(stages))
