"""The run spec: the contract between the planner and the trainer.

A ``RunSpec`` names a model variant, a dataset, a hardware profile and pricing, and an ordered list of ``Stage``s.
Everything token-related (resolution, masking, text length and reduction) lives in a stage, never in the variant.
Specs are pydantic models (``extra="forbid"``, frozen); the hash of what they learn (``RunSpec.content``: model,
dataset, seed, stages, optimiser and architecture options; not data locations, hardware or execution settings) is the
run id; they round-trip through YAML and JSON. Importable without JAX.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from planner.datasets import SAFE_NAME, canonical_dataset
from planner.errors import ClipaError, from_validation_error
from planner.variants import VariantError, decode_variant

SCHEMA_VERSION = 1


class ImageMask(str, Enum):
    none = "none"
    random = "random"  # per-sample random subset of patches (FLIP / CLIPA patch dropout)
    grid = "grid"  # a regular sub-grid of patches (one per 2x2 window at ratio 0.75)
    block = "block"  # one contiguous block of patches


class TextReduction(str, Enum):
    truncate = "truncate"  # first N tokens
    random = "random"  # N tokens at random, order kept
    block = "block"  # one contiguous span
    syntax = "syntax"  # nouns, then adjectives, then verbs, then the rest (CLIPA)


_INIT_RE = re.compile(r"^(scratch|previous|checkpoint:.+)$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Stage(_Frozen):
    """One training stage: a fixed token budget per sample, its own optimiser and schedule."""

    samples: Annotated[int, Field(gt=0, description="samples seen in this stage")]
    batch_size: Annotated[int, Field(gt=0, description="global batch size")]
    image_res: Annotated[int, Field(ge=8, le=1024, description="square input resolution in pixels")]
    image_mask: ImageMask = Field(ImageMask.none, description="image-token masking strategy (training only)")
    mask_ratio: Annotated[float, Field(ge=0.0, lt=1.0, description="share of image tokens removed")] = 0.0
    text_len: Annotated[int, Field(ge=2, le=77, description="text tokens per caption, incl. start/end")]
    text_reduction: TextReduction = Field(TextReduction.truncate, description="how captions are shortened")
    lr_base: Annotated[float, Field(gt=0.0, lt=1.0, description="learning rate per 256 samples of batch")]
    warmup_samples: Annotated[int, Field(ge=0, description="linear warm-up length in samples")] = 0
    init: str = Field("previous", description="'scratch', 'previous' (last stage's weights), 'checkpoint:PATH' or "
                                              "'checkpoint:open_clip:DIR' (an open_clip model folder)")
    # Execution settings of this stage (how it fits in device memory, not what it learns): None falls back to
    # train.micro_batch / train.remat. Stages differ in batch and resolution, so one global setting cannot serve all.
    micro_batch: Annotated[int, Field(gt=0)] | None = Field(None, description="per-step slice of this stage's batch")
    remat: Literal["none", "full", "dots"] | None = Field(None, description="rematerialisation policy of this stage")

    @field_validator("init")
    @classmethod
    def _check_init(cls, v: str) -> str:
        if not _INIT_RE.match(v):
            raise ValueError("must be 'scratch', 'previous' or 'checkpoint:PATH'")
        return v

    @model_validator(mode="after")
    def _check_mask(self) -> Stage:
        if self.image_mask == ImageMask.none and self.mask_ratio != 0.0:
            raise ValueError("mask_ratio must be 0 when image_mask is 'none'")
        if self.image_mask != ImageMask.none and self.mask_ratio == 0.0:
            raise ValueError(f"image_mask '{self.image_mask.value}' needs a mask_ratio above 0")
        if self.warmup_samples > self.samples:
            raise ValueError("warmup_samples exceeds the stage's samples")
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise ValueError(f"micro_batch {self.micro_batch} does not divide batch_size {self.batch_size}")
        return self

    @property
    def lr(self) -> float:
        """Peak learning rate: lr = base x batch / 256 (CLIPA's scaling rule)."""
        return self.lr_base * self.batch_size / 256

    @property
    def steps(self) -> int:
        return -(-self.samples // self.batch_size)


class TrainOptions(_Frozen):
    """How the trainer executes the stages; none of it changes what is learned except the optimiser settings."""

    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on accelerators, f32 on CPU
    remat: Literal["none", "full", "dots"] = "none"
    sharding: Literal["data", "fsdp"] = "data"
    micro_batch: Annotated[int, Field(gt=0)] | None = None  # per-step slice of the global batch (grad accumulation)
    checkpoint_every_steps: Annotated[int, Field(gt=0)] = 200
    log_every_steps: Annotated[int, Field(gt=0)] = 10
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.2
    b1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    b2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.95
    posemb: Literal["sincos2d", "learn"] = "sincos2d"
    pool: Literal["default", "gap", "tok"] = "default"


# What the run id covers (``RunSpec.content``): what is learned. Everything else is execution or location.
IDENTITY_STAGE_FIELDS = ("samples", "batch_size", "image_res", "image_mask", "mask_ratio", "text_len",
                         "text_reduction", "lr_base", "warmup_samples", "init")
IDENTITY_TRAIN_FIELDS = ("weight_decay", "b1", "b2", "posemb", "pool")


def _hash16(content: dict[str, Any]) -> str:
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.micro_batch": 4, "stages[0].batch_size": 8, ...} for comparing two specs field by field."""
    if isinstance(d, dict):
        return {k2: v2 for k, v in d.items() for k2, v2 in _flat(v, f"{prefix}.{k}" if prefix else k).items()}
    if isinstance(d, list):
        return {k2: v2 for i, v in enumerate(d) for k2, v2 in _flat(v, f"{prefix}[{i}]").items()}
    return {prefix: d}


class RunSpec(_Frozen):
    """A complete, executable training run. ``run_id`` is its content hash."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str | None = Field(None, description="human label; not part of the run id")
    model: str = Field(description="model variant, e.g. 'B/16', 'H/14', 'bigG/14', 'mu/8'")
    dataset: str = Field(description="dataset name, e.g. 'datacomp-1b' or 'local:synth'")
    data: str | None = Field(None, description="training shards: folder, brace pattern or bucket URL")
    eval_data: str | None = Field(None, description="zero-shot evaluation data: folder or shards")
    tokenizer: str | None = Field(None, description="tokenizer.json (BPE); default: the one in the data folder")
    hardware: str = Field("a100-80gb", description="hardware profile from budgets/hardware.yaml")
    pricing: str = Field("clipa-paper", description="pricing model of that hardware profile")
    seed: Annotated[int, Field(ge=0)] = 0
    stages: Annotated[list[Stage], Field(min_length=1, max_length=8)]
    train: TrainOptions = TrainOptions()

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and not SAFE_NAME.match(v):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-' (it is used in paths)")
        return v

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str) -> str:
        try:
            return decode_variant(v).name
        except VariantError as e:
            raise ValueError(str(e)) from None

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, v: str) -> str:
        try:
            return canonical_dataset(v)
        except ClipaError as e:
            raise ValueError(e.message) from None

    @model_validator(mode="after")
    def _check_consistency(self) -> RunSpec:
        from planner.hardware import check_hardware_pricing

        try:
            check_hardware_pricing(self.hardware, self.pricing)
        except ClipaError as e:
            raise ValueError(f"{e.field}: {e.message}") from None
        patch = decode_variant(self.model).patch
        for i, st in enumerate(self.stages):
            if st.image_res % patch:
                raise ValueError(
                    f"stages[{i}].image_res: resolution {st.image_res} is not a multiple of the patch size {patch}"
                )
            if i == 0 and st.init == "previous":
                raise ValueError("stages[0].init: the first stage cannot start from 'previous'")
        if self.train.micro_batch is not None:
            for i, st in enumerate(self.stages):
                if st.micro_batch is None and st.batch_size % self.train.micro_batch:
                    raise ValueError(
                        f"train.micro_batch: {self.train.micro_batch} does not divide stages[{i}].batch_size "
                        f"{st.batch_size}"
                    )
        return self

    def stage_train(self, index: int) -> TrainOptions:
        """The train options stage ``index`` executes with: its own micro_batch/remat where set, else the run's."""
        st = self.stages[index]
        update = {k: getattr(st, k) for k in ("micro_batch", "remat") if getattr(st, k) is not None}
        return self.train.model_copy(update=update) if update else self.train

    # --- identity ---------------------------------------------------------------------------------------------
    def content(self) -> dict[str, Any]:
        """What the run id hashes: what is learned, as an explicit whitelist (``IDENTITY_*``). Data locations,
        hardware, pricing and execution settings (dtype, remat, sharding, micro-batch, cadences) are left out, so a
        run can move, be re-priced or be resumed with other execution settings; a field added later is left out
        unless it is listed here."""
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "dataset": self.dataset,
            "seed": self.seed,
            "stages": [{k: st.model_dump(mode="json")[k] for k in IDENTITY_STAGE_FIELDS} for st in self.stages],
            "train": {k: self.train.model_dump(mode="json")[k] for k in IDENTITY_TRAIN_FIELDS},
        }

    @property
    def run_id(self) -> str:
        return _hash16(self.content())

    @property
    def legacy_run_id(self) -> str:
        """The run id clipa gave this spec before run ids covered only what is learned (it hashed every field but
        ``name``). Records, run folders and checkpoints made then carry it; lookups by spec try it after
        ``run_id`` (``planner.runs.find_record``, ``planner.runs.run_folder``)."""
        return _hash16(self.model_dump(mode="json", exclude={"name"}))

    def execution_changes(self, other: RunSpec) -> dict[str, tuple[Any, Any]]:
        """Fields outside the run id that differ from ``other`` (same run, other execution): {field: (old, new)}."""
        a = _flat(other.model_dump(mode="json", exclude={"name"}))
        b = _flat(self.model_dump(mode="json", exclude={"name"}))
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.stages)

    @property
    def schedule(self) -> str:
        from planner.recipe import format_schedule

        return format_schedule(self.stages, self.model)

    # --- serialisation ----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def write(self, path: str | Path) -> Path:
        """Write atomically as YAML or JSON by suffix."""
        from planner.store import atomic_write_text

        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        atomic_write_text(path, text)
        return path


def spec_from_dict(data: Any, source: str = "spec") -> RunSpec:
    if not isinstance(data, dict):
        raise ClipaError(source, "a spec must be a mapping of fields")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None


def load_spec(path: str | Path) -> RunSpec:
    """Read a YAML or JSON spec file; every problem becomes a ClipaError naming the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClipaError("spec", f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ClipaError("spec", f"cannot read {path}: {e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClipaError("spec", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from None
    return spec_from_dict(data)


def spec_json_schema() -> dict[str, Any]:
    return RunSpec.model_json_schema()
