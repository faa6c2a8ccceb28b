"""A pilot on a user's own dataset (issue 20): a small folder laid out as a user brings one (webdataset shards with
jpg/txt/cls, classes.txt, templates.txt, a tokenizer from `clipa data tokenizer`, no dataset.json; 10 classes at
32 px), a tiny pilot through the real console script, and a study that reports 10% chance and 32 px, with no pilot
stage above 32 px; every record carries the class count, eval size and resolution it was measured with, and a
record without them still loads, the study saying what it assumed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_closed_loop import clipa  # noqa: E402
from user_dataset import write_user_dataset  # noqa: E402


@pytest.mark.slow
def test_pilot_on_a_user_dataset(isolated_home, tmp_path):
    home = isolated_home
    data = write_user_dataset(tmp_path / "pets", train=600, eval_n=100, res=32, shard_size=200)
    clipa(home, "data", "tokenizer", "--data", str(data), "--vocab-size", "300", "--json")
    check = clipa(home, "data", "check", str(data), "--samples", "64", "--json")
    assert (check["profile"]["n_classes"], check["profile"]["resolution"], check["profile"]["eval_size"]) == (10, 32, 100)

    pilot = clipa(home, "pilot", "--budget", "0.0008", "--dataset", "local:pets", "--data", str(data),
                  "--models", "mu/8", "--runs", "3", "--min-samples", "1000", "--run-dir", str(tmp_path / "runs"), "--json")
    assert any("10 classes" in n and "native 32 px" in n for n in pilot["notes"])
    st = pilot["study"]
    assert st["chance"] == pytest.approx(10.0) and st["n_classes"] == 10 and st["native_res"] == 32
    assert st["eval_n"] == 100 and st["assumed"] == []

    records = sorted((home / "results" / "runs").glob("*.json"))
    assert len(records) == 3
    stage_res = []
    for path in records:
        rec = json.loads(path.read_text())
        assert (rec["extra"]["n_classes"], rec["extra"]["eval_n"], rec["extra"]["data_res"]) == (10, 100, 32)
        stage_res += [s["image_res"] for s in rec["spec"]["stages"]]
    assert max(stage_res) <= 32

    # a record written before runs carried these (no class count, eval size, resolution) still loads
    old = json.loads(records[0].read_text())
    for k in ("n_classes", "eval_n", "data_res"):
        old["extra"].pop(k)
    records[0].write_text(json.dumps(old))
    from planner.accuracy import load_or_fit

    st = load_or_fit(refit=True).studies["local:pets"]
    assert st.chance == pytest.approx(10.0) and st.native_res == 32 and st.eval_n == 100
    assert len(st.assumed) == 3 and all("1 of 3 runs" in a for a in st.assumed)
