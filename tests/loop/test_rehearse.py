"""``clipa rehearse PLAN`` (issue 14): the $10k plan's three stages on a tiny tower, on bound synth data; and the one
line a broken eval folder, a garbage shard and a tokenizer for other data each give (before anything compiles)."""

from __future__ import annotations

import json

import pytest

from planner.cli import run_app
from trainer.cli import build_app


def run(argv, capsys):
    build_app()
    code = run_app([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def bound_plan(tmp_path_factory):
    """`clipa data synth`, then the $10k plan bound to it (g/14 or bigG/14, three stages)."""
    root = tmp_path_factory.mktemp("rehearse")
    d, p = root / "D", root / "P"
    build_app()
    assert run_app(["data", "synth", "--out", str(d), "--samples", "300", "--eval-samples", "300",
                    "--shard-size", "100"]) == 0
    assert run_app(["plan", "--budget", "10000", "--data", str(d / "train"), "--eval-data", str(d / "eval"),
                    "--tokenizer", str(d / "tokenizer.json"), "--out", str(p)]) == 0
    return d, p


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow  # three stages of mu/14 compiled on CPU, twice the last one's steps, an evaluation (~1.5 min)
def test_rehearse_passes_on_the_10k_plan_and_records_nothing(bound_plan, isolated_home, tmp_path, capsys):
    _, p = bound_plan
    spec = json.loads((p / "plan.json").read_text())["chosen"]
    assert spec["model"] in ("g/14", "bigG/14") and spec["schedule"].count("+") == 2
    code, out, err = run(["rehearse", p, "--out", tmp_path / "R", "--json"], capsys)
    assert code == 0, err
    body = json.loads(out)
    (r,) = body["runs"]
    assert r["rehearsed_as"]["model"] == "mu/14" and r["rehearsed_as"]["schedule"].count("+") == 2
    names = [c["check"] for c in r["checks"]]
    assert names == ["data readable", "captions tokenize", "eval layout", "3 stages compile and step",
                     "checkpoint written and resumed", "eval ran"]
    assert "final parameters equal" in r["checks"][4]["detail"]
    assert not (isolated_home / "results" / "runs").exists() or not any((isolated_home / "results" / "runs").iterdir())
    assert (tmp_path / "R" / r["run_id"] / "eval.json").exists()  # everything it wrote is under --out


def test_a_missing_eval_folder_is_one_named_line(bound_plan, tmp_path, capsys):
    d, p = bound_plan
    code, _, err = run(["rehearse", p, "--eval-data", tmp_path / "no-such-val"], capsys)
    line = _one_error_line(err)
    assert code == 2 and line.startswith("error: eval_data:") and "no-such-val does not exist" in line


def test_a_garbage_shard_is_one_named_line(bound_plan, tmp_path, capsys):
    d, p = bound_plan
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "shard-000000.tar").write_bytes(b"this is not a tar archive " * 100)
    code, _, err = run(["rehearse", p, "--data", bad], capsys)
    line = _one_error_line(err)
    assert code == 2 and line.startswith("error: data:") and "shard-000000.tar is not readable webdataset" in line


def test_a_shard_of_captions_without_images_is_one_named_line(bound_plan, tmp_path, capsys):
    import io
    import tarfile

    _, p = bound_plan
    bad = tmp_path / "captions-only"
    bad.mkdir()
    with tarfile.open(bad / "shard-000000.tar", "w") as tar:
        for i in range(3):
            data = b"a photo of a dog"
            info = tarfile.TarInfo(f"{i:06d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    code, _, err = run(["rehearse", p, "--data", bad], capsys)
    line = _one_error_line(err)
    assert code == 2 and line.startswith("error: data:") and "has both an image and a caption" in line


def test_a_tokenizer_made_for_other_data_is_one_named_line(bound_plan, tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<pad>": 0, "[UNK]": 1, "dog": 2, "<start_of_text>": 3, "<end_of_text>": 4}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "other.json"))
    _, p = bound_plan
    code, _, err = run(["rehearse", p, "--tokenizer", tmp_path / "other.json"], capsys)
    line = _one_error_line(err)
    assert code == 2 and line.startswith("error: tokenizer:") and "does not match the data" in line
    (tmp_path / "broken.json").write_text("{}")
    code, _, err = run(["rehearse", p, "--tokenizer", tmp_path / "broken.json"], capsys)
    assert code == 2 and _one_error_line(err).startswith("error: tokenizer:")


def test_the_rehearsal_keeps_the_plans_structure(bound_plan):
    from planner.plan import load_plan
    from trainer.rehearse import rehearsal_spec

    d, p = bound_plan
    _, [(spec, _)] = load_plan(p)
    tiny = rehearsal_spec(spec)
    assert tiny.model == f"mu/{spec.model.split('/')[1]}" and len(tiny.stages) == len(spec.stages) == 3
    big = [st.image_res for st in spec.stages]
    small = [st.image_res for st in tiny.stages]
    assert sorted(range(3), key=big.__getitem__) == sorted(range(3), key=small.__getitem__)  # same order of sizes
    assert max(small) == 6 * 14 and small[1] / small[2] == pytest.approx(big[1] / big[2], rel=0.15)
    for a, b in zip(spec.stages, tiny.stages, strict=True):
        assert (a.image_mask, a.mask_ratio, a.text_len, a.text_reduction, a.lr_base, a.init) == \
               (b.image_mask, b.mask_ratio, b.text_len, b.text_reduction, b.lr_base, b.init)
        assert b.steps == 2
    assert tiny.train.posemb == spec.train.posemb and tiny.train.pool == spec.train.pool
    assert tiny.data == str(d / "train" / "shard-000000.tar") and tiny.tokenizer == spec.tokenizer
    assert tiny.eval_data == spec.eval_data
    learned = spec.model_dump(mode="json")
    learned["train"]["micro_batch"] = 8192
    assert rehearsal_spec(type(spec).model_validate(learned)).train.micro_batch == 4  # accumulation exercised too
