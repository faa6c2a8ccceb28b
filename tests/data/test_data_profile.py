"""A user's dataset folder (no dataset.json) profiled from the data itself: classes from the eval set's class names,
native resolution from the images, eval size from the split, caption lengths from the captions; measured once and
cached beside the data, measured again when the folder changes, never replaced by the generated set's defaults."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner import data_profile  # noqa: E402
from planner.cli import run_app  # noqa: E402
from planner.data_profile import PROFILE_FILE, cached_profile, profile_for  # noqa: E402
from planner.errors import ClipaError  # noqa: E402
from planner.pilot import design_pilot  # noqa: E402
from planner.studies import DEFAULT_CLASSES, _dataset_meta  # noqa: E402
from trainer.cli import build_app  # noqa: E402
from trainer.data.profile import ensure_profile  # noqa: E402
from user_dataset import write_user_dataset  # noqa: E402


def _run(capsys, *argv):
    build_app()
    rc = run_app(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> Path:
    """10 classes at 32 px, tokenizer trained with `clipa data tokenizer` (as the README tells a user)."""
    out = write_user_dataset(tmp_path_factory.mktemp("user") / "pets", train=400, eval_n=100, res=32)
    build_app()
    assert run_app(["data", "tokenizer", "--data", str(out), "--vocab-size", "300"]) == 0
    assert not (out / "dataset.json").exists()
    return out


def _fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / PROFILE_FILE).unlink(missing_ok=True)
    return dst


def test_check_prints_what_the_pilot_will_use_and_caches_it(user_data, tmp_path, capsys):
    data = _fresh_copy(user_data, tmp_path / "ds")
    rc, out, err = _run(capsys, "data", "check", str(data), "--samples", "64")
    assert rc == 0
    assert "measured the dataset once" in err and err.count("\n") == 1  # the one-line note
    assert "classes: 10" in out and "chance 10.00%" in out and "native resolution: 32 px" in out
    assert "eval size: 100 images" in out and "caption tokens" in out and "fine-tunes at 32 px" in out
    assert (data / PROFILE_FILE).exists()

    rc, out, err = _run(capsys, "data", "check", str(data), "--samples", "64", "--json")
    assert rc == 0 and err == ""  # cached: measured once
    report = json.loads(out)
    prof = report["profile"]
    assert report["profile_note"] is None and report["resolution"] == 32
    assert (prof["n_classes"], prof["resolution"], prof["eval_size"], prof["train_shards"]) == (10, 32, 100, 2)
    cap = prof["caption_tokens"]
    # "a red disc on grey": 5 words + start/end; the tokenizer may split a word, never merge two
    assert cap["n"] == 400 and 7 <= cap["min"] <= cap["median"] <= cap["max"] <= 14


def test_changed_folder_is_measured_again(user_data, tmp_path):
    data = _fresh_copy(user_data, tmp_path / "ds")
    prof, note = ensure_profile(data)
    assert note and prof.eval_size == 100
    assert ensure_profile(data)[1] is None
    write_user_dataset(tmp_path / "more", train=10, eval_n=50, res=32, seed=3)
    shutil.copy(tmp_path / "more" / "eval" / "eval-0000.tar", data / "eval" / "eval-0001.tar")
    assert cached_profile(data) is None  # stale
    prof, note = ensure_profile(data)
    assert note and prof.eval_size == 150


def test_planner_never_falls_back_to_the_generated_defaults(user_data, tmp_path, monkeypatch):
    data = _fresh_copy(user_data, tmp_path / "ds")
    monkeypatch.setattr(data_profile, "_measurer", None)  # the planner as a library: nothing registered
    with pytest.raises(ClipaError, match="clipa data check"):
        profile_for(data)
    with pytest.raises(ClipaError, match="no measured profile"):
        design_pilot(0.01, "local:pets", data_dir=data)


@pytest.mark.parametrize("res", [24, 48])
def test_pilot_designs_no_stage_above_the_native_resolution(tmp_path, res):
    data = write_user_dataset(tmp_path / "ds", train=60, eval_n=20, res=res, shard_size=30)
    build_app()
    assert run_app(["data", "tokenizer", "--data", str(data), "--vocab-size", "300"]) == 0
    d = design_pilot(0.01, "local:ds", data_dir=data)
    stage_res = {s.image_res for spec in d.specs for s in spec.stages}
    assert max(stage_res) == res and min(stage_res) >= 16
    assert any(f"native {res} px" in n for n in d.notes) and any("10 classes" in n for n in d.notes)
    assert any("captions are short" in n for n in d.notes)  # 32-token runs on ~7-token captions are noted


def test_study_constants_from_records_profile_or_named_assumption(user_data):
    root = str(user_data.absolute())
    assert ensure_profile(user_data)[0].n_classes == 10
    recorded = pd.DataFrame({"n_classes": [10.0] * 3, "eval_n": [100.0] * 3, "data_res": [32.0] * 3,
                             "eval_data": [f"{root}/eval"] * 3})
    m = _dataset_meta(recorded)
    assert (m.chance, m.eval_n, m.native_res, m.assumed) == (10.0, 100, 32, [])
    # old records (no class count, eval size or resolution) of the same data: the data's profile, said so
    old = pd.DataFrame({"eval_data": [f"{root}/eval"] * 2})
    m = _dataset_meta(old)
    assert (m.chance, m.eval_n, m.native_res) == (10.0, 100, 32)
    assert len(m.assumed) == 3 and all("profile" in a and "2 of 2 runs" in a for a in m.assumed)
    # old records with nothing to go by: the generated set's defaults, named as assumed
    m = _dataset_meta(pd.DataFrame({"key": ["a", "b"]}))
    assert m.chance == 100.0 / DEFAULT_CLASSES and m.native_res is None
    assert any(a.startswith(f"classes {DEFAULT_CLASSES}: assumed") for a in m.assumed)
    assert any("native resolution (px) unknown" in a for a in m.assumed)


def test_plan_says_when_it_trains_above_the_native_resolution_or_assumes_it(user_data, tmp_path, capsys):
    rc, out, _ = _run(capsys, "plan", "--budget", "1000", "--dataset", "local:pets", "--data", str(user_data),
                      "--hardware", "a100-80gb", "--out", str(tmp_path / "gpu"), "--json")
    assert rc == 0
    notes = json.loads((tmp_path / "gpu" / "plan.json").read_text())["notes"]
    assert any("above the data's native 32 px" in n for n in notes)
    rc, out, _ = _run(capsys, "plan", "--budget", "0.01", "--dataset", "local:pets", "--hardware", "cpu-2core",
                      "--out", str(tmp_path / "cpu"), "--json")
    assert rc == 0
    notes = json.loads((tmp_path / "cpu" / "plan.json").read_text())["notes"]
    assert any("no --data" in n and "64 px" in n for n in notes)
    rc, out, _ = _run(capsys, "plan", "--budget", "0.01", "--dataset", "local:pets", "--data", str(user_data),
                      "--hardware", "cpu-2core", "--out", str(tmp_path / "cpu32"), "--json")
    assert rc == 0
    body = json.loads((tmp_path / "cpu32" / "plan.json").read_text())
    assert not any("native" in n or "no --data" in n for n in body["notes"])
    from planner.spec import load_spec

    spec = load_spec(body["chosen"]["spec"])
    assert max(s.image_res for s in spec.stages) <= 32
