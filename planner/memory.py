"""The analytic per-device memory model of one train step, and the choice of micro-batches and remat that fit.

Peak bytes per device = training state + activations kept for the backward pass + the contrastive logits + a
fixed overhead:

* state: float32 parameters and AdamW's two float32 moments (the fit confirms 12 bytes per parameter; gradients
  and the compute-dtype copy are transient): ``STATE_BYTES_PER_PARAM`` x params, divided by the chips under FSDP
  (``sharding: fsdp``);
* activations, per layer and token of each tower, Korthikanti et al. 2022 ("Reducing Activation Recomputation in
  Large Transformer Models", section 4.1) without dropout: 16 d + 4 m bytes at 16 bits plus the attention
  probabilities, 4 x heads x tokens bytes (float32 softmax); times the per-device micro-batch. ``remat: full`` keeps
  only each block's input (2 d bytes per token) plus one block's activations; ``dots`` keeps the matmul outputs;
* logits: B x B/chips float32 similarity matrices (both directions, values and gradients);
* ``STATE_BYTES_PER_PARAM``, ``ACT_LIN``, ``ACT_ATTN`` and ``OVERHEAD_BYTES`` are calibrated against compiled peaks on v5e
  (``benchmarks/fit_calibration.py``, ``benchmarks/results/fit_calibration.json``); the error on that grid is
  reported in ``benchmarks/FIT_CHECK.md`` and checked by a test. Under FSDP the gathered bf16 parameters
  count in full.

``choose_fit`` picks, for a stage on a slice, the setting with the fewest recomputed FLOPs whose peak stays under
``HBM_SHARE`` of the device's memory: no remat and no micro-batching first, then more micro-batches (each costs one
extra forward pass in total: the GradCache scheme in ``trainer.loop``), then ``dots``, then ``full``.
Importable without JAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from planner.flops import image_forward_macs, image_patches, kept_image_tokens, text_forward_macs
from planner.spec import ImageMask, Stage
from planner.variants import ModelVariant, TowerShape, decode_variant

Remat = Literal["none", "full", "dots"]
Sharding = Literal["data", "fsdp"]
HBM_SHARE = 0.9  # a plan's peak must stay under this share of a device's memory (allocator slack, fragmentation)
# All six constants are fitted together by benchmarks/fit_report.py on the compiled grid (17 v5e points of 5 models:
# S/16 and B/16 with none/dots/full remat and micro-batches, L/14, H/14 data and FSDP, bigG/14 FSDP on 256 chips
# with dots and micro-batches), minimising the worst relative error (11.5%), then rounded. Theory gives 12 bytes per
# parameter (f32 parameters, two f32 Adam moments), 2 gathered bytes (bf16) and ACT_* = 1: the fit puts the state
# at 13.9 (gradient buffers partly live at the peak), the gathered parameters at 4.5 (XLA keeps the f32 gather and
# its bf16 cast), the saved matmul outputs of dots remat at 1.2x (XLA also keeps some elementwise results) and
# spreads the fused elementwise work of the other terms. History and errors: benchmarks/FIT_CHECK.md.
STATE_BYTES_PER_PARAM = 13.9
FSDP_GATHER_BYTES_PER_PARAM = 4.5  # under FSDP the step holds the gathered parameters too (XLA gathers them whole)
ACT_LIN = 0.79
ACT_DOTS = 1.21
ACT_ATTN = 0.81
OVERHEAD_BYTES = 0.0
# Extra forward passes, as a share of the train step's 3 forward-equivalents, by remat policy: full recomputes the
# whole forward; dots only the elementwise work between matmuls (not counted by the matmul FLOP counter).
REMAT_EXTRA_FORWARDS = {"none": 0.0, "dots": 0.0, "full": 1.0}
@dataclass(frozen=True)
class MemoryEstimate:
    peak_bytes: float
    state_bytes: float
    activation_bytes: float
    logits_bytes: float
    per_device_batch: int
    micro_batch: int | None
    remat: Remat
    sharding: Sharding

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 1e9


def stage_tokens_per_tower(v: ModelVariant, stage: Stage) -> tuple[int, int]:
    ratio = stage.mask_ratio if stage.image_mask != ImageMask.none else 0.0
    img = kept_image_tokens(image_patches(stage.image_res, v.patch), ratio) + int(v.pool == "tok")
    return img, stage.text_len


def _tower_bytes(t: TowerShape, tokens: int, remat: Remat) -> tuple[float, float, float]:
    """(width-proportional, saved-matmul-output, attention-probability) bytes one sequence keeps for the backward
    pass in one tower."""
    lin = tokens * (16 * t.width + 4 * t.mlp)
    att = tokens * 4 * t.heads * tokens
    if remat == "none":
        return t.depth * lin, 0.0, t.depth * att
    if remat == "full":  # block inputs (2 d bytes per token), plus one block being recomputed
        return t.depth * tokens * 2 * t.width + lin, 0.0, att
    # dots: matmul outputs (QKV 3d, attention output d, MLP hidden m, MLP output d) in 16 bits, plus one block
    return lin, t.depth * tokens * 2 * (5 * t.width + t.mlp), att


def components(model: str | ModelVariant, stage: Stage, chips: int, micro_batch: int | None = None,
               remat: Remat = "none", sharding: Sharding = "data") -> dict[str, float]:
    """The uncalibrated parts of the peak (bytes per device): ``params`` (parameters held per device), ``gathered``
    (parameters FSDP gathers whole), ``inputs``, ``logits``, and the activation terms ``lin``, ``dots``, ``att``
    (scaled by ACT_LIN, ACT_DOTS, ACT_ATTN). benchmarks/fit_report.py fits the constants on these."""
    v = decode_variant(model) if isinstance(model, str) else model
    per_dev = max(1, stage.batch_size // chips)
    mb_per_dev = max(1, (micro_batch or stage.batch_size) // chips)
    fsdp = sharding == "fsdp" and chips > 1
    params = v.params / chips if fsdp else float(v.params)
    gathered = float(v.params) if fsdp else 0.0
    img_t, txt_t = stage_tokens_per_tower(v, stage)
    (li, di, ai), (lt, dt, at) = _tower_bytes(v.image, img_t, remat), _tower_bytes(v.text, txt_t, remat)
    inputs = per_dev * stage.image_res**2 * 3 * (1 + 2)  # uint8 images and their 16-bit copy, whole local batch
    logits = 4 * 4 * stage.batch_size * per_dev  # image->text and text->image, values and gradients, float32
    return {"params": params, "gathered": gathered,
            "state": STATE_BYTES_PER_PARAM * params + FSDP_GATHER_BYTES_PER_PARAM * gathered,
            "inputs": inputs, "logits": logits, "lin": (li + lt) * mb_per_dev, "dots": (di + dt) * mb_per_dev,
            "att": (ai + at) * mb_per_dev, "per_device_batch": per_dev}


def estimate(model: str | ModelVariant, stage: Stage, chips: int, micro_batch: int | None = None,
             remat: Remat = "none", sharding: Sharding = "data") -> MemoryEstimate:
    """Peak bytes per device of one train step of ``stage`` on ``chips`` devices."""
    c = components(model, stage, chips, micro_batch, remat, sharding)
    act = ACT_LIN * c["lin"] + ACT_DOTS * c["dots"] + ACT_ATTN * c["att"] + c["inputs"]
    peak = c["state"] + act + c["logits"] + OVERHEAD_BYTES
    return MemoryEstimate(peak, c["state"], act, c["logits"], int(c["per_device_batch"]), micro_batch, remat,
                          sharding)


def remat_extra_flops_per_sample(model: str | ModelVariant, stage: Stage, remat: Remat,
                                 micro_batch: int | None) -> float:
    """Training FLOPs per sample beyond ``planner.flops``' 6 x forward MACs: remat recomputation and, with
    micro-batches, GradCache's extra forward pass (both towers)."""
    v = decode_variant(model) if isinstance(model, str) else model
    ratio = stage.mask_ratio if stage.image_mask != ImageMask.none else 0.0
    fwd = 2 * (image_forward_macs(v, stage.image_res, ratio) + text_forward_macs(v, stage.text_len))
    extra = REMAT_EXTRA_FORWARDS[remat]
    if micro_batch is not None and micro_batch < stage.batch_size:
        extra += 1.0
    return extra * fwd


@dataclass(frozen=True)
class FitChoice:
    fits: bool
    estimate: MemoryEstimate
    extra_flops_per_sample: float
    limit_bytes: float

    @property
    def micro_batch(self) -> int | None:
        return self.estimate.micro_batch

    @property
    def remat(self) -> Remat:
        return self.estimate.remat


def candidate_settings(batch: int, chips: int) -> list[tuple[int | None, Remat]]:
    """Settings in order of recomputed FLOPs: none/dots without micro-batches, then halving micro-batches (each
    still a multiple of the chip count), then full remat at each."""
    micros: list[int | None] = [None]
    m = batch // 2
    while m >= chips and m % chips == 0 and batch % m == 0:
        micros.append(m)
        m //= 2
    out: list[tuple[int | None, Remat]] = [(None, "none"), (None, "dots")]
    out += [(mb, r) for mb in micros[1:] for r in ("none", "dots")]
    out += [(mb, "full") for mb in micros]
    return out


def choose_fit(model: str | ModelVariant, stage: Stage, chips: int, memory_gb: float, sharding: Sharding = "data",
               share: float = HBM_SHARE, scale: float = 1.0) -> FitChoice:
    """The setting with the fewest extra FLOPs whose estimated peak is under ``share`` of ``memory_gb``; when none
    fits, the one with the smallest peak, with ``fits=False``. ``scale`` multiplies the estimate: the correction a
    compile of this stage showed (``trainer.fit_check.attach_compiled``)."""
    limit = share * memory_gb * 1e9
    best: FitChoice | None = None
    for mb, remat in candidate_settings(stage.batch_size, chips):
        est = estimate(model, stage, chips, mb, remat, sharding)
        choice = FitChoice(est.peak_bytes * scale <= limit, est, remat_extra_flops_per_sample(model, stage, remat, mb),
                           limit)
        if choice.fits:
            return choice
        if best is None or est.peak_bytes < best.estimate.peak_bytes:
            best = choice
    assert best is not None
    return best
