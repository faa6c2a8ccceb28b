"""Binding data to a plan (issue 14): --data/--eval-data/--tokenizer on plan and run, the datasets.yaml catalog,
"executable" and what is missing, and the run id staying the same whatever the locations."""

from __future__ import annotations

import json

import pytest
import yaml

from planner.cli import run_app
from trainer.cli import build_app


def run(argv, capsys):
    build_app()
    code = run_app([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth") / "D"
    build_app()
    assert run_app(["data", "synth", "--out", str(d), "--samples", "200", "--eval-samples", "100",
                    "--shard-size", "100"]) == 0
    return d


def _spec(plan_dir):
    (path,) = (plan_dir / "runs").glob("*.yaml")
    return yaml.safe_load(path.read_text())


def test_plan_with_all_locations_is_executable_and_runs_dry(synth, tmp_path, capsys):
    p = tmp_path / "P"
    code, out, err = run(["plan", "--budget", "10000", "--data", synth / "train", "--eval-data", synth / "eval",
                          "--tokenizer", synth / "tokenizer.json", "--out", p, "--json"], capsys)
    assert code == 0, err
    body = json.loads(out)
    assert body["executable"] is True and body["missing"] == []
    # priced on the papers' A100 node, so it executes there (not on whatever machine typed it)
    assert body["execute"] == f"clipa run {p} --backend slurm --nodes 1 --gpus-per-node 8"
    spec = _spec(p)
    assert spec["data"] == str(synth / "train") and spec["eval_data"] == str(synth / "eval")
    assert spec["tokenizer"] == str(synth / "tokenizer.json")
    assert len(spec["stages"]) == 3 and spec["model"] in ("g/14", "bigG/14")
    code, out, err = run(["run", p, "--dry-run"], capsys)
    assert code == 0, err
    (item,) = json.loads(out)["runs"]
    assert item["action"] == "train locally, evaluate, record"
    assert item["blocked"].startswith("memory: ") and body["execute"] in item["blocked"]


def test_local_run_of_a_plan_priced_for_a_gpu_node_says_where_to_run_it(synth, tmp_path, capsys, isolated_home):
    """The README's path typed on this CPU: `clipa run P` of the $10k plan must not start a g/14 step here and die
    in the allocator; it names the stage, the memory and the command for the hardware the plan was priced on."""
    p = tmp_path / "P"
    code, out, err = run(["plan", "--budget", "10000", "--data", synth / "train", "--eval-data", synth / "eval",
                          "--tokenizer", synth / "tokenizer.json", "--out", p], capsys)
    assert code == 0, err
    assert f"then  clipa run {p} --backend slurm --nodes 1 --gpus-per-node 8" in out
    code, out, err = run(["run", p], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "memory" in err and "stage 1 of 3" in err and "GB per device" in err
    assert f"clipa run {p} --backend slurm --nodes 1 --gpus-per-node 8" in err and f"clipa rehearse {p}" in err
    assert not (isolated_home / "runs").exists() or not any((isolated_home / "runs").iterdir())  # nothing started
    # a TPU-priced plan names the slice and the cloud placeholders, and repeats the locations given here
    p2 = tmp_path / "P2"
    code, out, err = run(["plan", "--budget", "10000", "--hardware", "tpu-v5e", "--pricing", "spot", "--slice", "64",
                          "--data", "gs://b/dc/{0..9}.tar", "--eval-data", "gs://b/in/{0..3}.tar", "--tokenizer",
                          synth / "tokenizer.json", "--out", p2, "--json", "--no-compile"], capsys)
    assert code == 0, err
    assert json.loads(out)["execute"] == (f"clipa run {p2} --backend tpu --hardware tpu-v5e --slice 64 --project "
                                          "PROJECT --zone ZONE --bucket gs://BUCKET")
    code, _, err = run(["run", p2, "--data", synth / "train", "--eval-data", synth / "eval"], capsys)
    assert code == 2 and f"--bucket gs://BUCKET --data {synth / 'train'} --eval-data {synth / 'eval'}" in err


def test_plan_without_eval_data_says_what_is_missing_and_how(synth, tmp_path, capsys):
    p = tmp_path / "P"
    code, out, err = run(["plan", "--budget", "10000", "--data", synth / "train", "--out", p], capsys)
    assert code == 0, err  # a plan without data is still a plan
    assert "execute with" not in out
    assert "missing eval_data (--eval-data)" in out
    assert f"clipa run {p} --eval-data EVAL_DATA" in out
    code, out, _ = run(["plan", "--budget", "10000", "--data", synth / "train", "--out", p, "--json"], capsys)
    body = json.loads(out)
    assert body["executable"] is False and [m["field"] for m in body["missing"]] == ["eval_data"]
    # the tokenizer beside local data is found and written into the spec
    assert _spec(p)["tokenizer"] == str(synth / "tokenizer.json")
    code, _, err = run(["run", p, "--dry-run"], capsys)
    assert code == 2 and "eval_data" in err and "--eval-data" in err and len(err.strip().splitlines()) == 1
    # supplying it on the run command line makes the same plan executable, with the same run id
    code, out, err = run(["run", p, "--dry-run", "--eval-data", synth / "eval"], capsys)
    assert code == 0, err
    assert json.loads(out)["runs"][0]["run_id"] == body["chosen"]["run_id"]


def test_plan_without_data_lists_all_three(tmp_path, capsys):
    code, out, _ = run(["plan", "--budget", "10000", "--out", tmp_path / "P", "--json"], capsys)
    assert code == 0
    body = json.loads(out)
    assert [m["field"] for m in body["missing"]] == ["data", "eval_data", "tokenizer"]
    assert body["execute"] == (f"clipa run {tmp_path / 'P'} --data DATA --eval-data EVAL_DATA --tokenizer TOKENIZER"
                               " --backend slurm --nodes 1 --gpus-per-node 8")


def test_bucket_data_without_tokenizer_is_not_executable(tmp_path, capsys):
    code, out, _ = run(["plan", "--budget", "10000", "--data", "gs://b/dc1b/{00000..00009}.tar", "--eval-data",
                        "gs://b/imagenet-val/{0000..0003}.tar", "--out", tmp_path / "P", "--json"], capsys)
    body = json.loads(out)
    assert body["executable"] is False and [m["field"] for m in body["missing"]] == ["tokenizer"]
    assert _spec(tmp_path / "P")["data"] == "gs://b/dc1b/{00000..00009}.tar"


def test_the_catalog_fills_in_known_locations_and_options_override_it(isolated_home, tmp_path, capsys):
    (isolated_home / "datasets.yaml").write_text(yaml.safe_dump({"datasets": {"DataComp1B": {
        "data": "gs://b/dc1b/{00000..00009}.tar", "eval_data": "gs://b/in1k-val/{0000..0003}.tar",
        "tokenizer": "gs://b/dc1b/tokenizer.json"}}}))
    code, out, err = run(["plan", "--budget", "10000", "--dataset", "datacomp-1b", "--out", tmp_path / "P",
                          "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["executable"] is True
    assert _spec(tmp_path / "P")["eval_data"] == "gs://b/in1k-val/{0000..0003}.tar"
    code, out, _ = run(["plan", "--budget", "10000", "--eval-data", "gs://other/val", "--out", tmp_path / "Q",
                        "--json"], capsys)
    spec = _spec(tmp_path / "Q")
    assert spec["eval_data"] == "gs://other/val" and spec["data"] == "gs://b/dc1b/{00000..00009}.tar"


def test_a_bad_catalog_is_one_line_naming_the_file(isolated_home, tmp_path, capsys):
    (isolated_home / "datasets.yaml").write_text("datasets:\n  datacomp-1b:\n    shards: /x\n")
    code, _, err = run(["plan", "--budget", "10000", "--out", tmp_path / "P"], capsys)
    assert code == 2 and "datasets.yaml" in err and "shards" in err and len(err.strip().splitlines()) == 1


def test_a_synth_folder_as_data_binds_its_splits(synth, tmp_path, capsys):
    code, out, _ = run(["plan", "--budget", "10000", "--data", synth, "--out", tmp_path / "P", "--json"], capsys)
    assert code == 0 and json.loads(out)["executable"] is True
    spec = _spec(tmp_path / "P")
    assert (spec["data"], spec["eval_data"]) == (str(synth / "train"), str(synth / "eval"))
