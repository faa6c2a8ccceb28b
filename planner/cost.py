"""The one cost model: FLOPs / (peak x achieved MFU) = device-hours; x price per device-hour = dollars.

MFU depends on the tokens per sample and the model width (``budgets/hardware.yaml``), so the same FLOPs cost more
device-hours at 36 image tokens than at 256. The planner, the trainer's dollar meter and ``results/`` all price with
these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from planner.flops import kept_image_tokens, image_patches, stage_flops
from planner.hardware import Hardware, get_hardware
from planner.spec import ImageMask, RunSpec, Stage
from planner.variants import decode_variant


@dataclass(frozen=True)
class StageCost:
    samples: int
    image_res: int
    tokens_per_sample: int
    train_flops_per_sample: float
    flops: float
    mfu: float
    device_hours: float
    cost_usd: float
    recompute_flops: float = 0.0  # remat / micro-batch recomputation (in device_hours, not in flops: MFU counts model FLOPs)


@dataclass(frozen=True)
class RunCost:
    model: str
    hardware: str
    pricing: str
    usd_per_device_hour: float
    stages: list[StageCost]

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    @property
    def device_hours(self) -> float:
        return sum(s.device_hours for s in self.stages)

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.stages)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "hardware": self.hardware,
            "pricing": self.pricing,
            "usd_per_device_hour": self.usd_per_device_hour,
            "flops": self.flops,
            "device_hours": self.device_hours,
            "cost_usd": self.cost_usd,
            "stages": [asdict(s) for s in self.stages],
        }


def stage_tokens(model: str, stage: Stage) -> int:
    v = decode_variant(model)
    ratio = stage.mask_ratio if stage.image_mask != ImageMask.none else 0.0
    return kept_image_tokens(image_patches(stage.image_res, v.patch), ratio) + stage.text_len


def seconds_per_sample(model: str, stage: Stage, hw: Hardware) -> float:
    """Device-seconds one training sample takes at the profile's achieved MFU."""
    sf = stage_flops(model, stage)
    mfu = hw.mfu.mfu(stage_tokens(model, stage), decode_variant(model).image.width)
    return sf.train_per_sample / (hw.peak_flops * mfu)


def cost_stages(model: str, stages: Sequence[Stage], hardware: str, pricing: str,
                execution: Sequence[tuple[int | None, str]] | None = None) -> RunCost:
    """``execution``: per stage (micro_batch, remat) as run; their recomputed FLOPs are priced
    (``planner.memory.remat_extra_flops_per_sample``)."""
    from planner.memory import remat_extra_flops_per_sample

    hw = get_hardware(hardware)
    rate = hw.price(pricing).usd_per_device_hour
    width = decode_variant(model).image.width
    out = []
    for i, st in enumerate(stages):
        sf = stage_flops(model, st)
        tokens = stage_tokens(model, st)
        mfu = hw.mfu.mfu(tokens, width)
        micro, remat = execution[i] if execution else (None, "none")
        extra = remat_extra_flops_per_sample(model, st, remat, micro) * st.samples  # type: ignore[arg-type]
        hours = (sf.total + extra) / (hw.peak_flops * mfu) / 3600.0
        out.append(StageCost(st.samples, st.image_res, tokens, sf.train_per_sample, sf.total, mfu, hours, hours * rate,
                             extra))
    return RunCost(decode_variant(model).name, hw.name, pricing, rate, out)


def cost_spec(spec: RunSpec, hardware: str | None = None, pricing: str | None = None) -> RunCost:
    execution = [(spec.stage_train(i).micro_batch, spec.stage_train(i).remat) for i in range(len(spec.stages))]
    return cost_stages(spec.model, spec.stages, hardware or spec.hardware, pricing or spec.pricing, execution)


def dollars_for_flops(flops: float, tokens_per_sample: int, width: int, hardware: str, pricing: str) -> float:
    """Dollars for ``flops`` at the given token count (used by the trainer's meter for partial stages)."""
    hw = get_hardware(hardware)
    mfu = hw.mfu.mfu(tokens_per_sample, width)
    return flops / (hw.peak_flops * mfu) / 3600.0 * hw.price(pricing).usd_per_device_hour
