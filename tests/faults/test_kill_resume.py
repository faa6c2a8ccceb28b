"""Scenario 1: SIGKILL a real ``clipa run SPEC`` at chosen points, restart it, and check that it ends exactly where an
uninterrupted run ends: the same final parameters (bitwise: tolerance 0, compared leaf by leaf from the saved final
checkpoints), the same recorded top-1, exactly one result record, and no half-written file left behind.

Kill points are found from the run directory's own files (no hooks in the code): ``metrics.jsonl`` rows (a step
reached, a stage ended), an orbax ``*.orbax-checkpoint-tmp*`` folder (a checkpoint being written), the final
checkpoint committed without ``eval.json`` (evaluating), ``eval.json`` without a result record (recording). A kill
point whose moment passed before the poll saw it is reported as ``missed`` and the run is killed at the next
observed point instead; the test requires that the fault was actually injected (the process died by SIGKILL) for
every point. The fast test kills twice; the slow one kills at ten points across both stages, evaluation and recording.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLIPA, REPO, clipa_env, clipa_ok, leftovers, tiny_spec_dict, write_spec

from planner.spec import spec_from_dict

# Fake secrets planted in the environment of every killed/resumed run (scenario 6): none may appear in anything the
# run writes (metrics, TensorBoard events, checkpoints, eval.json, the result record) or prints.
SECRETS = {"HF_TOKEN": "hf_fakeTokenValue1234", "MY_SECRET": "s3cr3t-value-xyz",
           "CLOUDSDK_AUTH_ACCESS_TOKEN": "ya29.fake-access-token-abcdef", "AWS_SECRET_ACCESS_KEY": "AKfakeAWSsecret99"}


def _scan_for_secrets(roots, texts) -> None:
    blobs = [t.encode() for t in texts]
    for root in roots:
        blobs += [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    assert len(blobs) > 10
    for value in SECRETS.values():
        assert not any(value.encode() in b for b in blobs), value


def _steps(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being appended right now
    return rows


def at_step(n: int):
    def pred(run_dir, record):
        return any(r.get("kind") == "step" and r["global_step"] >= n for r in _steps(run_dir))
    pred.__name__ = f"step>={n}"
    return pred


def stage_end(k: int):
    def pred(run_dir, record):
        return any(r.get("kind") == "stage_end" and r["stage"] == k for r in _steps(run_dir))
    pred.__name__ = f"after stage {k + 1}"
    return pred


def checkpoint_writing(min_step: int):
    def pred(run_dir, record):
        d = run_dir / "checkpoints"
        return d.exists() and any("orbax-checkpoint-tmp" in c.name and c.name.split(".")[0].isdigit()
                                  and int(c.name.split(".")[0]) >= min_step for c in d.iterdir())
    pred.__name__ = f"writing checkpoint>={min_step}"
    return pred


def evaluating(final_step: int):
    def pred(run_dir, record):
        return (run_dir / "checkpoints" / str(final_step) / "commit_success.txt").exists() and \
            not (run_dir / "eval.json").exists()
    pred.__name__ = "evaluating"
    return pred


def recording(run_dir, record):
    return (run_dir / "eval.json").exists() and not record.exists()


recording.__name__ = "recording"


def _final_params(run_dir: Path):
    from trainer.checkpoint import load_params

    _, params, meta = load_params(run_dir)
    import jax

    return meta["global_step"], jax.tree.map(np.asarray, params)


def _run_killed(spec_path, run_root, home, cache, pred, record, timeout=300) -> str:
    """Start ``clipa run``, SIGKILL its process group once ``pred`` holds; 'killed' or 'finished' (not injected)."""
    proc = subprocess.Popen([*CLIPA, "run", str(spec_path), "--run-dir", str(run_root), "--no-progress"], cwd=REPO,
                            env=clipa_env(home, cache, SECRETS), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    run_dir = run_root / spec_from_dict(json.loads(Path(spec_path).read_text())).run_id
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if pred(run_dir, record):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return "killed"
            time.sleep(0.01)
        if proc.poll() is None:
            raise AssertionError(f"{pred.__name__}: not reached in {timeout} s")
        err = proc.stderr.read()
        assert proc.returncode == 0, err[-3000:]
        return "finished"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        proc.stderr.close()


def _reference(tiny_data, tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("reference")
    spec = tiny_spec_dict(tiny_data)
    spec_path = write_spec(root / "spec.json", spec)
    clipa_ok(root / "home", "run", str(spec_path), "--run-dir", str(root / "runs"), "--no-progress", jax_cache=cache)
    rid = spec_from_dict(spec).run_id
    rec = json.loads((root / "home" / "results" / "runs" / f"{rid}.json").read_text())
    return rid, _final_params(root / "runs" / rid), rec


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory, jax_cache):
    return _reference(tiny_data, tmp_path_factory, jax_cache)


def _kill_sequence(points, tiny_data, tmp_path, cache, reference):
    rid, (ref_step, ref_params), ref_rec = reference
    spec_path = write_spec(tmp_path / "spec.json", tiny_spec_dict(tiny_data))
    home, run_root = tmp_path / "home", tmp_path / "runs"
    record = home / "results" / "runs" / f"{rid}.json"
    outcomes = []
    for pred in points:
        outcomes.append((pred.__name__, _run_killed(spec_path, run_root, home, cache, pred, record)))
    final = clipa_ok(home, "run", str(spec_path), "--run-dir", str(run_root), "--no-progress", "--json",
                     jax_cache=cache, extra_env=SECRETS)
    _scan_for_secrets([run_root, home], [final.stdout, final.stderr])
    # exactly one record, the right one, readable
    records = sorted((home / "results" / "runs").glob("*"))
    assert [p.name for p in records] == [f"{rid}.json"], records
    rec = json.loads(record.read_text())
    assert rec["run_id"] == rid and rec["top1"] == ref_rec["top1"] and rec["top5"] == ref_rec["top5"]
    # the final parameters equal the uninterrupted run's, bitwise
    step, params = _final_params(run_root / rid)
    assert step == ref_step
    import jax

    flat_a, tree_a = jax.tree.flatten(params)
    flat_b, tree_b = jax.tree.flatten(ref_params)
    assert tree_a == tree_b
    for a, b in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b)
    assert leftovers(run_root, home / "results") == []
    return outcomes


def test_kill_twice_then_resume_equals_uninterrupted(tiny_data, tmp_path, jax_cache, reference):
    outcomes = _kill_sequence([at_step(3), at_step(11)], tiny_data, tmp_path, jax_cache, reference)
    assert [o for _, o in outcomes] == ["killed", "killed"], outcomes


@pytest.mark.slow
def test_kill_at_ten_points_then_resume_equals_uninterrupted(tiny_data, tmp_path, jax_cache, reference):
    points = [at_step(1), checkpoint_writing(4), at_step(5), stage_end(0), at_step(9), checkpoint_writing(10),
              at_step(12), checkpoint_writing(14), evaluating(14), recording]
    outcomes = _kill_sequence(points, tiny_data, tmp_path, jax_cache, reference)
    print("kill points:", outcomes)
    killed = [name for name, o in outcomes if o == "killed"]
    # every point that can always be observed must have been hit; the sub-second windows (a checkpoint being
    # written, the result being written) are reported, and most runs catch them
    for must in ("step>=1", "step>=5", "after stage 1", "step>=9", "step>=12", "evaluating"):
        assert must in killed, outcomes
    assert len(killed) >= 7, outcomes


@pytest.mark.parametrize("content", ["[]", "{}", '{"started_at": 5}', '{"started_at": "yesterday"}', "{", "null"])
def test_a_damaged_started_file_restarts_the_clock(tmp_path, content):
    """started.json in a run folder is rewritten atomically, but a folder copied or edited by hand may hold
    anything: the run takes a new start time instead of failing."""
    from trainer.closed_loop import _started_at
    from trainer.run_layout import STARTED_FILE

    (tmp_path / STARTED_FILE).write_text(content)
    started = _started_at(tmp_path)
    assert json.loads((tmp_path / STARTED_FILE).read_text())["started_at"] == started.isoformat()
