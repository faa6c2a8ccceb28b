"""Scenario 3: a NaN in the loss, and a SIGTERM, in a real ``clipa run`` (in process, through ``run_app``).

The spec's own fields cannot make the loss overflow (``lr_base`` is capped below 1, and images are uint8), so the
fault is injected by wrapping the real compiled step (``trainer.loop.make_train_step``): at the chosen call the
parameters handed to it are multiplied by NaN, and the real forward pass, loss and gradient produce the NaN that the
loop's guard must catch. Then: the run stops with one line and exit code 3, records nothing, and its last good
checkpoint (step 4) restores with finite weights; a new spec starting from that checkpoint (``init: checkpoint:PATH``)
with a lower learning rate runs to a result; the original spec rerun in its folder resumes from step 4 and finishes.
The same wrapper sends SIGTERM instead: the run saves, says how to resume in one line, and exits 128+15."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_spec_dict, write_spec

from planner.cli import run_app
from planner.spec import spec_from_dict


def _one_stage(data, **stage):
    spec = tiny_spec_dict(data)
    spec["stages"] = [{**spec["stages"][0], **stage}]
    return spec


@pytest.fixture
def inject(monkeypatch):
    """inject(at, action): at the ``at``-th call of any compiled train step, do ``action`` ('nan' or 'sigterm')."""
    import trainer.loop as loop

    real = loop.make_train_step
    plan = {"at": None, "action": None, "calls": 0}

    def wrapped_make(*args, **kw):
        step = real(*args, **kw)

        def step_with_fault(state, batch):
            plan["calls"] += 1
            if plan["calls"] == plan["at"]:
                if plan["action"] == "nan":
                    state = {**state, "params": jax.tree.map(lambda x: x * jnp.nan, state["params"])}
                else:
                    os.kill(os.getpid(), signal.SIGTERM)
            return step(state, batch)

        return step_with_fault

    monkeypatch.setattr(loop, "make_train_step", wrapped_make)

    def arm(at, action):
        plan.update(at=at, action=action, calls=0)

    return arm


@pytest.fixture(scope="module")
def app():
    from trainer.cli import build_app

    return build_app()


def _err_lines(capsys):
    err = capsys.readouterr().err
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("WARNING", "I0", "W0"))], err


def test_nan_stops_keeps_last_good_checkpoint_and_a_lower_lr_resumes(app, tiny_data, tmp_path, isolated_home,
                                                                      inject, capsys):
    from trainer.checkpoint import load_params

    spec = _one_stage(tiny_data)
    path = write_spec(tmp_path / "spec.json", spec)
    rid = spec_from_dict(spec).run_id
    runs, records = tmp_path / "runs", isolated_home / "results" / "runs"
    inject(5, "nan")
    capsys.readouterr()
    rc = run_app(["run", str(path), "--run-dir", str(runs), "--no-progress"])
    lines, err = _err_lines(capsys)
    assert rc == 3, err
    assert "Traceback" not in err
    msg = [ln for ln in lines if ln.startswith("error:")]
    assert len(msg) == 1 and "non-finite loss" in msg[0] and "step 4" in msg[0], err
    assert not records.exists() or not list(records.glob("*.json"))  # nothing recorded

    cfg, params, meta = load_params(runs / rid)  # the last good checkpoint
    assert meta["global_step"] == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))

    # a new spec from that checkpoint with a lower learning rate
    spec2 = _one_stage(tiny_data, lr_base=0.001, init=f"checkpoint:{runs / rid}/checkpoints/4", samples=32)
    path2 = write_spec(tmp_path / "spec2.json", spec2)
    inject(None, None)
    assert run_app(["run", str(path2), "--run-dir", str(runs), "--no-progress", "--json"]) == 0
    out = capsys.readouterr().out
    (res,) = json.loads(out)["results"]
    assert res["run_id"] == spec_from_dict(spec2).run_id
    first = [json.loads(ln) for ln in (runs / res["run_id"] / "metrics.jsonl").read_text().splitlines()][0]
    assert first["kind"] == "stage_start" and first["init"].endswith("/4")

    # the original spec, rerun as it is, resumes from step 4 and finishes
    assert run_app(["run", str(path), "--run-dir", str(runs), "--no-progress"]) == 0
    assert sorted(p.stem for p in records.glob("*.json")) == sorted([rid, res["run_id"]])


def test_sigterm_in_clipa_run_saves_and_says_how_to_resume(app, tiny_data, tmp_path, isolated_home, inject, capsys):
    from trainer.checkpoint import Checkpoints

    spec = {**_one_stage(tiny_data), "seed": 1}
    path = write_spec(tmp_path / "spec.json", spec)
    rid = spec_from_dict(spec).run_id
    inject(3, "sigterm")
    capsys.readouterr()
    rc = run_app(["run", str(path), "--run-dir", str(tmp_path / "runs"), "--no-progress"])
    lines, err = _err_lines(capsys)
    assert rc == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and any("SIGTERM" in ln and "resume" in ln for ln in lines), err
    store = Checkpoints(tmp_path / "runs" / rid / "checkpoints", read_only=True, async_save=False)
    assert store.latest_step() == 3  # saved at the step it stopped
    store.close()
