"""Per-stage execution settings (Stage.micro_batch / Stage.remat): None falls back to train.*; the trainer builds
each stage's model config and step options from them."""

from __future__ import annotations

import pytest
from trainer_helpers import make_spec

from planner.errors import ClipaError
from planner.spec import spec_from_dict
from trainer.compiled import _PROGRAMS
from trainer.loop import make_train_step, preflight
from trainer.mesh import make_mesh
from trainer.model import MaskConfig, ModelConfig


def test_stage_settings_override_the_run_and_fall_back_to_it():
    spec = make_spec([dict(batch_size=16), dict(batch_size=8, micro_batch=4, remat="full", init="previous")],
                     micro_batch=8, remat="dots")
    assert (spec.stage_train(0).micro_batch, spec.stage_train(0).remat) == (8, "dots")
    assert (spec.stage_train(1).micro_batch, spec.stage_train(1).remat) == (4, "full")
    assert ModelConfig.for_stage(spec, 0).remat == "dots" and ModelConfig.for_stage(spec, 1).remat == "full"
    import jax

    mesh = make_mesh(jax.devices()[:1])
    preflight(spec, mesh)  # stage 1's micro-batch 4 divides its batch 8 (the run's 8 would too; 16 for stage 0)
    cfg = ModelConfig.for_stage(spec, 1)
    make_train_step(cfg, MaskConfig.for_stage(spec.stages[1]), spec.stages[1], spec.stage_train(1), mesh)
    built = [k for k in _PROGRAMS if k[0] == "step" and k[1] == cfg]
    assert built and built[-1][4].micro_batch == 4 and built[-1][1].remat == "full"


def test_a_stage_micro_batch_must_divide_its_batch():
    base = {"model": "mu/8", "dataset": "local:synthetic", "hardware": "cpu-2core", "pricing": "on-demand",
            "stages": [{"samples": 64, "batch_size": 16, "image_res": 16, "text_len": 8, "lr_base": 1e-3,
                        "init": "scratch", "micro_batch": 6}]}
    with pytest.raises(ClipaError) as e:
        spec_from_dict(base)
    assert "stages.0" in e.value.field or "stages[0]" in str(e.value)
    # a stage's own setting exempts it from the run-wide one
    base["stages"][0]["micro_batch"] = 8
    spec_from_dict({**base, "train": {"micro_batch": 3}})
