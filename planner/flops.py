"""The one FLOP counter: per-sample forward and training FLOPs of a CLIP model at a stage's token counts.

Per transformer layer and token, forward MACs = 4 d^2 (QKV and output projections) + 2 d m (MLP) + 2 n d (QK^T and
AV); the patch embedding adds 3 p^2 d per kept patch; the heads add the two projections and the B x B logits.
Softmax, norms and activations are not counted (they are not matmuls). Training = 3 x forward (backward = 2 x
forward), i.e. 6 x forward MACs; rematerialisation is not counted (this is MFU, not HFU). Agrees with OpenCLIP's
fvcore table (``tests/fixtures/openclip_arch_info.csv``) within 0.2%.

Image masking removes patches before the patch embedding (it is per-patch, so embedding only the kept ones is
exact); a class token, when the variant pools with one, is added after masking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner.errors import ClipaError
from planner.spec import ImageMask, RunSpec, Stage
from planner.variants import ModelVariant, TowerShape, decode_variant

TRAIN_MULTIPLIER = 6  # FLOPs per forward MAC for forward + backward (2 per MAC x 3 passes)


def image_patches(resolution: int, patch: int) -> int:
    if resolution % patch:
        raise ClipaError("image_res", f"resolution {resolution} is not a multiple of the patch size {patch}")
    return (resolution // patch) ** 2


def kept_image_tokens(patches: int, mask_ratio: float) -> int:
    """Patches kept after masking: round(patches x (1 - ratio)), at least one. The trainer uses this too."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ClipaError("mask_ratio", f"{mask_ratio} is outside [0, 1)")
    return max(1, int(round(patches * (1.0 - mask_ratio))))


def tower_macs(shape: TowerShape, tokens: int) -> float:
    """Forward MACs of the transformer blocks for one sequence of ``tokens`` tokens."""
    w, m = shape.width, shape.mlp
    return shape.depth * tokens * (4 * w * w + 2 * w * m + 2 * tokens * w)


def image_forward_macs(v: ModelVariant, resolution: int, mask_ratio: float = 0.0, cls_token: bool | None = None) -> float:
    kept = kept_image_tokens(image_patches(resolution, v.patch), mask_ratio)
    cls = (v.pool == "tok") if cls_token is None else cls_token
    patch_embed = kept * 3 * v.patch**2 * v.image.width
    return patch_embed + tower_macs(v.image, kept + int(cls))


def text_forward_macs(v: ModelVariant, text_len: int) -> float:
    return tower_macs(v.text, text_len)


def head_forward_macs(v: ModelVariant, batch_size: int) -> float:
    """Per sample: both projections, plus this sample's row of the batch x batch logits matrix."""
    return (v.image.width + v.text.width) * v.embed_dim + batch_size * v.embed_dim


@dataclass(frozen=True)
class StageFlops:
    image_macs: float  # forward, per sample
    text_macs: float
    head_macs: float
    samples: int

    @property
    def forward_per_sample(self) -> float:
        return 2 * (self.image_macs + self.text_macs + self.head_macs)

    @property
    def train_per_sample(self) -> float:
        return TRAIN_MULTIPLIER * (self.image_macs + self.text_macs + self.head_macs)

    @property
    def total(self) -> float:
        return self.train_per_sample * self.samples


def stage_flops(model: str | ModelVariant, stage: Stage) -> StageFlops:
    v = decode_variant(model) if isinstance(model, str) else model
    ratio = stage.mask_ratio if stage.image_mask != ImageMask.none else 0.0
    return StageFlops(
        image_macs=image_forward_macs(v, stage.image_res, ratio),
        text_macs=text_forward_macs(v, stage.text_len),
        head_macs=head_forward_macs(v, stage.batch_size),
        samples=stage.samples,
    )


def schedule_flops(model: str, stages: Sequence[Stage]) -> list[StageFlops]:
    v = decode_variant(model)
    return [stage_flops(v, st) for st in stages]


def run_flops(spec: RunSpec) -> float:
    """Total training FLOPs of a run."""
    return sum(sf.total for sf in schedule_flops(spec.model, spec.stages))
