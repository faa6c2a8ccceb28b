"""``clipa data synth|tokenizer|check`` through the real console entry point's app."""

from __future__ import annotations

import json

from trainer.cli import build_app
from planner.cli import run_app


def _run(capsys, *argv):
    build_app()
    rc = run_app(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_synth_tokenizer_and_check(tmp_path, capsys):
    out = tmp_path / "ds"
    rc, stdout, _ = _run(capsys, "data", "synth", "--out", str(out), "--samples", "60", "--eval-samples", "20",
                         "--resolution", "32", "--seed", "2", "--shard-size", "25", "--json")
    assert rc == 0
    info = json.loads(stdout)
    assert info["train_samples"] == 60 and info["resolution"] == 32 and info["seed"] == 2
    assert len(list((out / "train").glob("*.tar"))) == 3 and (out / "tokenizer.json").exists()

    rc, stdout, _ = _run(capsys, "data", "tokenizer", "--data", str(out), "--vocab-size", "320",
                         "--out", str(tmp_path / "tok.json"), "--json")
    assert rc == 0
    tok = json.loads(stdout)
    assert tok["captions"] == 60 and tok["pad_id"] == 0 and tok["eot_id"] == tok["vocab_size"] - 1

    rc, stdout, _ = _run(capsys, "data", "check", "--data", str(out), "--samples", "40", "--resolution", "16",
                         "--json")
    assert rc == 0
    report = json.loads(stdout)
    assert report["shards"] == 3 and report["samples"] >= 40 and report["stats"]["samples_out"] >= 40


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    rc, _, err = _run(capsys, "data", "check", "--data", str(tmp_path / "missing"))
    assert rc == 2 and err.startswith("error: data:") and err.count("\n") == 1
    rc, _, err = _run(capsys, "data", "synth", "--out", str(tmp_path / "x"), "--resolution", "8")
    assert rc == 2 and "resolution" in err
    rc, _, err = _run(capsys, "data", "tokenizer", "--data", str(tmp_path / "nothing.tar"))
    assert rc == 2 and "--out" in err
