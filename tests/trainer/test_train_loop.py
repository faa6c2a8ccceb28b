"""The staged train loop: what a run writes, bad input refused before training, non-finite stop, two stages."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer_helpers import make_spec

from planner.errors import ClipaError
from planner.spec import spec_from_dict
from planner.variants import decode_variant
from trainer.checkpoint import Checkpoints, load_params, model_meta
from trainer.loop import param_fingerprint, train
from trainer.mesh import check_layout, make_mesh
from trainer.model import ModelConfig, initialize
from trainer.run_layout import SPEC_FILE
from trainer.synthetic import SyntheticSource, make_synthetic_source
from trainer.telemetry import NonFiniteError, read_metrics

OPTS = dict(checkpoint_every_steps=4, log_every_steps=1)
STAGE = dict(samples=48, batch_size=8, image_res=16, text_len=4, lr_base=2e-3, init="scratch")  # 6 steps


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    spec = make_spec([STAGE], **OPTS)
    result = train(spec, run_dir, make_synthetic_source, progress=False)
    return spec, run_dir, result


def test_a_run_writes_its_spec_metrics_tensorboard_and_checkpoints(finished_run):
    spec, run_dir, result = finished_run
    assert result.global_step == 6 and np.isfinite(result.final_loss)
    assert json.loads((run_dir / SPEC_FILE).read_text())["model"] == "mu/8"
    rows = read_metrics(run_dir)
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["global_step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["data_state"]["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm", "lr", "temperature", "usd", "samples"):
        assert key in steps[-1]
    assert steps[-1]["samples"] == 48 and steps[-1]["usd"] > 0
    assert steps[-1]["mfu"] > 0 and steps[-1]["samples_per_s"] > 0
    assert [r["kind"] for r in rows if r["kind"] != "step"] == ["stage_start", "stage_end"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert Checkpoints(run_dir / "checkpoints", read_only=True).all_steps() == [4, 6]
    assert result.cost["samples"] == 48 and result.cost["usd"] > 0


def test_rerunning_a_finished_run_does_nothing(finished_run):
    spec, run_dir, _ = finished_run
    n_rows = len(read_metrics(run_dir))
    again = train(spec, run_dir, make_synthetic_source, progress=False)
    assert again.global_step == 6
    assert len(read_metrics(run_dir)) == n_rows


def test_a_different_spec_in_the_same_run_dir_is_refused(finished_run):
    spec, run_dir, _ = finished_run
    other = make_spec([{**STAGE, "lr_base": 1e-3}], **OPTS)
    with pytest.raises(ClipaError, match=r"run_dir: .* holds run .* not this spec's run"):
        train(other, run_dir, make_synthetic_source, progress=False)


def test_missing_init_checkpoint_fails_before_anything_is_written(tmp_path):
    spec = make_spec([{**STAGE, "init": f"checkpoint:{tmp_path / 'nowhere'}"}])
    with pytest.raises(ClipaError, match=r"stages\[0\]\.init: checkpoint not found"):
        train(spec, tmp_path / "run", make_synthetic_source, progress=False)
    assert not (tmp_path / "run").exists()


def test_micro_batch_that_does_not_divide_the_batch_is_refused():
    base = make_spec([STAGE]).model_dump(mode="json")
    with pytest.raises(ClipaError, match=r"train\.micro_batch: 3 does not divide stages\[0\]\.batch_size 8"):
        spec_from_dict({**base, "train": {"micro_batch": 3}})
    with pytest.raises(ClipaError, match="micro_batch: 3 does not divide the global batch 8"):
        check_layout(8, make_mesh(), 3)


def test_a_source_with_the_wrong_resolution_fails_before_the_first_step(tmp_path):
    spec = make_spec([STAGE], **OPTS)
    other = make_spec([{**STAGE, "image_res": 24}])

    def wrong_source(spec_, k, p, n):  # a real synthetic source, built for another resolution
        return SyntheticSource(other, k, p, n)

    with pytest.raises(ClipaError, match=r"images must be uint8 \[8, 16, 16, 3\], got uint8 \[8, 24, 24, 3\]"):
        train(spec, tmp_path / "run", wrong_source, progress=False)
    assert not [r for r in read_metrics(tmp_path / "run") if r["kind"] == "step"]


def test_no_data_and_no_source_is_refused(tmp_path):
    with pytest.raises(ClipaError, match="^data: "):
        train(make_spec([STAGE]), tmp_path / "run", progress=False)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    # A weights-only checkpoint whose temperature is NaN: a stage that starts from it cannot produce a finite loss.
    cfg = ModelConfig(variant=decode_variant("mu/8"), image_res=16, vocab_size=256, pool="tok")
    bad = dict(initialize(cfg, 0))
    bad["logit_scale"] = jnp.asarray(np.nan, jnp.float32)
    store = Checkpoints(tmp_path / "bad")
    store.save(0, bad, None, {"model": model_meta(cfg)})
    store.wait()
    store.close()
    spec = make_spec([STAGE, {**STAGE, "init": f"checkpoint:{tmp_path / 'bad'}"}], **OPTS)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"non-finite loss at stage 2 step 1 \(global step 7\).*last good "
                                             r"checkpoint is step 6") as err:
        train(spec, run_dir, make_synthetic_source, progress=False)
    assert err.value.last_checkpoint == 6
    assert Checkpoints(run_dir / "checkpoints", read_only=True).all_steps() == [4, 6]


@pytest.mark.slow  # two stages, two resolutions: ~25 s of compiles and steps
def test_two_stages_train_end_to_end_and_stage_two_starts_from_stage_ones_weights(tmp_path):
    spec = make_spec([
        dict(samples=16 * 60, batch_size=16, image_res=16, text_len=4, lr_base=0.02, warmup_samples=16 * 5),
        dict(samples=16 * 20, batch_size=16, image_res=32, text_len=8, lr_base=0.002, image_mask="random",
             mask_ratio=0.3, init="previous"),
    ], checkpoint_every_steps=25, log_every_steps=1)
    run_dir = tmp_path / "run"
    result = train(spec, run_dir, make_synthetic_source, progress=False)
    assert result.global_step == 80
    rows = read_metrics(run_dir)
    s1 = [r["loss"] for r in rows if r["kind"] == "step" and r["stage"] == 0]
    assert np.mean(s1[-10:]) < 0.8 * np.mean(s1[:10]), (s1[:10], s1[-10:])  # it learns
    assert all(np.isfinite(r["loss"]) for r in rows if r["kind"] == "step")
    end1 = next(r for r in rows if r["kind"] == "stage_end" and r["stage"] == 0)
    start2 = next(r for r in rows if r["kind"] == "stage_start" and r["stage"] == 1)
    assert start2["init"] == "stage 1" and start2["image_res"] == 32 and start2["mask_ratio"] == 0.3
    # stage 2's starting weights are stage 1's final weights (sincos2d: nothing to resample) ...
    assert start2["params_fingerprint"] == end1["params_fingerprint"]
    # ... which are the ones in stage 1's final checkpoint
    cfg, params, meta = load_params(run_dir / "checkpoints" / "60")
    assert meta["stage"] == 0 and meta["stage_step"] == 60 and cfg.image_res == 16
    assert param_fingerprint(jax.device_put(params)) == end1["params_fingerprint"]
    assert Checkpoints(run_dir / "checkpoints", read_only=True).all_steps()[-1] == 80
