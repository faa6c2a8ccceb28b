"""Run identity = what is learned (issue 14): execution settings and locations are outside the run id, a run resumes
with other execution settings (logged), and records, folders and checkpoints made under the old ids stay usable."""

from __future__ import annotations

import hashlib
import json
import shutil

import jax
import numpy as np
import pytest
from trainer_helpers import make_spec

from planner.runs import RunResult, find_record, read_result, record_path, run_folder, utcnow
from planner.spec import RunSpec, spec_from_dict
from trainer.checkpoint import Checkpoints
from trainer.loop import SPEC_FILE, train
from trainer.synthetic import make_synthetic_source
from trainer.telemetry import read_metrics

STAGE = dict(samples=8 * 6, batch_size=8, image_res=16, text_len=4, lr_base=2e-3)


def _with(spec: RunSpec, **changes) -> RunSpec:
    d = spec.model_dump(mode="json")
    for k, v in changes.items():
        if k.startswith("train."):
            d["train"][k[6:]] = v
        elif k.startswith("stage."):
            d["stages"][0][k[6:]] = v
        else:
            d[k] = v
    return spec_from_dict(d)


def test_execution_settings_and_locations_are_not_the_run():
    s = make_spec([STAGE])
    same = [_with(s, **{"train.micro_batch": 4}), _with(s, **{"train.remat": "full"}),
            _with(s, **{"train.checkpoint_every_steps": 7}), _with(s, **{"train.log_every_steps": 3}),
            _with(s, **{"train.compute_dtype": "bfloat16"}), _with(s, **{"train.sharding": "fsdp"}),
            _with(s, data="/d/train", eval_data="gs://b/val", tokenizer="/d/tok.json"), _with(s, name="x"),
            _with(s, hardware="a100-80gb", pricing="clipa-paper")]
    assert {x.run_id for x in same} == {s.run_id}
    learned = [_with(s, seed=1), _with(s, model="mini/8"), _with(s, dataset="local:other"),
               _with(s, **{"train.weight_decay": 0.1}), _with(s, **{"train.b2": 0.98}),
               _with(s, **{"train.posemb": "learn"}), _with(s, **{"train.pool": "gap"}),
               _with(s, **{"stage.lr_base": 1e-3}), _with(s, **{"stage.text_reduction": "syntax"}),
               _with(s, **{"stage.image_mask": "random", "stage.mask_ratio": 0.5})]
    assert len({x.run_id for x in learned} | {s.run_id}) == len(learned) + 1


def test_legacy_run_id_is_the_old_hash_of_every_field_but_name():
    s = make_spec([STAGE], checkpoint_every_steps=5)
    blob = json.dumps(s.model_dump(mode="json", exclude={"name"}), sort_keys=True, separators=(",", ":"))
    assert s.legacy_run_id == hashlib.sha256(blob.encode()).hexdigest()[:16] != s.run_id
    assert _with(s, **{"train.checkpoint_every_steps": 6}).legacy_run_id != s.legacy_run_id


def test_a_record_made_under_the_old_id_is_found_and_keeps_its_key(tmp_path):
    s = make_spec([STAGE])
    now = utcnow()
    old = RunResult(run_id=s.legacy_run_id, spec=s, eval_task="zeroshot:local:synthetic", started_at=now,
                    finished_at=now, wall_seconds=1, device_hours=0, cost_usd=0, samples_per_second=1, mfu=0, top1=5)
    # as clipa wrote it before (write_result now refuses an id that is not the spec's)
    record_path(s.legacy_run_id, tmp_path).write_text(old.model_dump_json())
    found = find_record(s, tmp_path)
    assert found == record_path(s.legacy_run_id, tmp_path)
    assert read_result(found).run_id == s.legacy_run_id  # the fits' data rows are keyed by it: unchanged
    from planner.results import load_runs

    assert list(load_runs(tmp_path)["key"]) == [f"run-{s.legacy_run_id}"]


def test_a_run_folder_started_under_the_old_id_is_resumed_there(tmp_path):
    s = make_spec([STAGE])
    assert run_folder(tmp_path, s) == tmp_path / s.run_id
    (tmp_path / s.legacy_run_id).mkdir()
    assert run_folder(tmp_path, s) == tmp_path / s.legacy_run_id


def _keep_only_step(run_dir, step: int) -> None:
    store = Checkpoints(run_dir / "checkpoints", read_only=True)
    later = [x for x in store.all_steps() if x > step]
    store.close()
    assert later, "nothing to drop"
    for x in later:
        shutil.rmtree(run_dir / "checkpoints" / str(x))


def _close(a, b, atol: float = 0.0) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


# Micro-batching sums the same gradient in another order; AdamW divides by sqrt(v), so for near-zero gradients the
# float difference shows in the update. A quarter of one step's learning rate bounds it (measured: 4.4e-6 = 7%).
MICRO_BATCH_ATOL = 0.25 * STAGE["lr_base"] * STAGE["batch_size"] / 256


@pytest.mark.slow  # three short trainings of mu/8 (two compiles of the step: with and without micro-batching)
def test_resume_with_other_checkpoint_cadence_and_micro_batch_equals_an_uninterrupted_run(tmp_path):
    first = make_spec([STAGE], checkpoint_every_steps=2)
    ref = train(first, tmp_path / "ref", make_synthetic_source, progress=False)
    run_dir = tmp_path / "run"
    train(first, run_dir, make_synthetic_source, progress=False, max_to_keep=None)
    _keep_only_step(run_dir, 2)  # as if it had died after step 3 (out of memory, preempted)
    cadence = _with(first, **{"train.checkpoint_every_steps": 3, "train.log_every_steps": 2})
    out = train(cadence, run_dir, make_synthetic_source, progress=False, max_to_keep=None)
    _close(out.params, ref.params)  # the same computation: bitwise equal
    _keep_only_step(run_dir, 3)
    second = _with(first, **{"train.checkpoint_every_steps": 2, "train.micro_batch": 4})
    assert first.run_id == cadence.run_id == second.run_id
    out = train(second, run_dir, make_synthetic_source, progress=False, max_to_keep=None)
    assert out.global_step == 6
    _close(out.params, ref.params, atol=MICRO_BATCH_ATOL)
    resume = [r for r in read_metrics(run_dir) if r.get("kind") == "resume"][-1]
    assert resume["global_step"] == 3
    assert resume["changed"] == {"train.checkpoint_every_steps": {"was": 3, "now": 2},
                                 "train.log_every_steps": {"was": 2, "now": 10},
                                 "train.micro_batch": {"was": None, "now": 4}}
    assert json.loads((run_dir / SPEC_FILE).read_text())["train"]["micro_batch"] == 4  # the folder's spec is now this one


@pytest.mark.slow
def test_checkpoints_written_under_the_old_run_id_resume(tmp_path, monkeypatch):
    s = make_spec([STAGE], checkpoint_every_steps=2)
    ref = train(s, tmp_path / "ref", make_synthetic_source, progress=False)
    run_dir = tmp_path / s.legacy_run_id
    with monkeypatch.context() as m:  # clipa before the whitelist: the run id hashed every field but the name
        m.setattr(RunSpec, "run_id", property(lambda self: self.legacy_run_id))
        train(s, run_dir, make_synthetic_source, progress=False, max_to_keep=None)
    store = Checkpoints(run_dir / "checkpoints", read_only=True)
    assert store.meta(store.latest_step())["run_id"] == s.legacy_run_id
    store.close()
    _keep_only_step(run_dir, 4)
    out = train(s, run_folder(tmp_path, s), make_synthetic_source, progress=False)
    assert out.global_step == 6
    _close(out.params, ref.params)
