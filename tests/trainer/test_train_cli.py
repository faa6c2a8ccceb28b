"""``clipa train`` / ``clipa eval``: bad input is one line and exit code 2; the real input pipeline end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trainer_helpers import REPO, make_spec, subprocess_env

from planner.cli import run_app
from trainer.cli import build_app


def _clipa(args, capsys):
    build_app()
    code = run_app(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_with_a_missing_init_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    spec = make_spec([dict(init=f"checkpoint:{tmp_path / 'missing'}")]).write(tmp_path / "spec.yaml")
    code, out, err = _clipa(["train", str(spec), "--run-dir", str(tmp_path / "run"), "--synthetic"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: stages[0].init: checkpoint not found: {tmp_path / 'missing'}"]
    assert not (tmp_path / "run").exists()


def test_train_without_data_or_synthetic_says_what_to_do(tmp_path, capsys):
    spec = make_spec([dict()]).write(tmp_path / "spec.yaml")
    code, _, err = _clipa(["train", str(spec), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "use --synthetic" in err and len(err.strip().splitlines()) == 1


def test_eval_of_a_path_without_checkpoints_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _clipa(["eval", str(tmp_path / "empty"), "--data", str(tmp_path)], capsys)
    assert code == 2 and "holds no finished checkpoint" in err


def _run(args, env=None, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=subprocess_env(env),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow  # generates a dataset, trains two stages on it with the real pipeline, evaluates (~1 min)
def test_train_on_a_generated_dataset_then_zero_shot_eval(tmp_path):
    env = {"CLIPA_HOME": str(tmp_path / "home")}
    _run(["data", "synth", "--out", str(tmp_path / "ds"), "-n", "128", "-r", "32", "--eval-samples", "32",
          "--shard-size", "64", "--vocab-size", "512"], env)
    spec = make_spec([
        dict(samples=32, batch_size=8, image_res=16, text_len=8, lr_base=0.02),
        dict(samples=16, batch_size=8, image_res=32, text_len=8, lr_base=0.002, image_mask="grid", mask_ratio=0.75,
             init="previous"),
    ], checkpoint_every_steps=100).model_dump(mode="json")
    spec["data"] = str(tmp_path / "ds" / "train")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    summary = json.loads(_run(["train", str(tmp_path / "spec.json"), "--run-dir", str(tmp_path / "run"), "--json",
                               "--no-progress"], env))
    assert summary["global_step"] == 6 and summary["cost"]["samples"] == 48
    # the vocabulary came from the dataset's tokenizer, not from the variant's 32k default
    from trainer.checkpoint import load_params
    from trainer.data.tokenizer import load_tokenizer

    cfg, _, _ = load_params(tmp_path / "run")
    tok = load_tokenizer(tmp_path / "ds" / "tokenizer.json")
    assert (cfg.vocab_size, cfg.eot_id) == (tok.vocab_size, tok.eot_id)
    result = json.loads(_run(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "ds" / "eval"), "--json"], env))
    assert result["n"] == 32 and 0.0 <= result["top1"] <= 1.0 and result["image_res"] == 32


def test_url_run_dirs_are_refused_with_what_to_do(tmp_path, capsys):
    spec = make_spec([dict()]).write(tmp_path / "spec.yaml")
    code, _, err = _clipa(["train", str(spec), "--run-dir", "gs://bucket/run", "--synthetic"], capsys)
    assert code == 2 and "run_dir: gs://bucket/run: URL run directories are not supported" in err
