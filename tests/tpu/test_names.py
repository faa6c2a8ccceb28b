"""Every spec- or option-derived name that reaches a resource name, a path or a worker command is validated:
path traversal, shell metacharacters, whitespace and GCP naming rules are rejected with the field named."""

from __future__ import annotations

import json
import shlex

import pytest
from tpu_helpers import write_spec

from planner.errors import ClipaError
from trainer.cli import build_app
from planner.cli import run_app
from trainer.tpu import names
from trainer.tpu.launcher import dry_run
from trainer.tpu.options import TpuOptions
from trainer.tpu.workers import GcloudSshExec

BAD = ["../x", "a;rm -rf", "$(id)", "with space", "`id`", "a|b", "x/../../etc", "", "A" * 70, "-lead", "trail-",
       "new\nline", "q'uote", "dollar$", "back\\slash", "gt>x"]
BASE = dict(project="my-project", zone="us-central1-a", bucket="gs://my-bucket/runs")


@pytest.mark.parametrize("bad", BAD)
def test_bad_resource_names_are_rejected(bad):
    with pytest.raises(ClipaError) as e:
        TpuOptions.create(**BASE, name=bad)
    assert e.value.field == "name"


@pytest.mark.parametrize("bad", BAD + ["UPPER", "my_proj", "p"])
def test_bad_projects_are_rejected(bad):
    with pytest.raises(ClipaError) as e:
        TpuOptions.create(**{**BASE, "project": bad})
    assert e.value.field == "project"


@pytest.mark.parametrize("bad", BAD + ["us-central1", "US-CENTRAL1-A"])
def test_bad_zones_are_rejected(bad):
    with pytest.raises(ClipaError) as e:
        TpuOptions.create(**{**BASE, "zone": bad})
    assert e.value.field == "zone"


@pytest.mark.parametrize("bad", ["gs://my-bucket/../x", "gs://my-bucket/a;rm -rf", "gs://my-bucket/$(id)",
                                 "gs://my bucket", "gs://my-bucket/with space", "gs://..", "s3://my-bucket",
                                 "/abs/path", "gs://my-bucket//x", "file:///tmp/../etc", "gs://my-bucket/.hidden"])
def test_bad_buckets_are_rejected(bad):
    with pytest.raises(ClipaError) as e:
        TpuOptions.create(**{**BASE, "bucket": bad})
    assert e.value.field == "bucket"


@pytest.mark.parametrize("bad", ["../x", "a;rm -rf", "$(id)", "with space"])
def test_bad_spec_names_never_reach_the_launcher(tmp_path, bad):
    # The spec contract itself refuses such names (they are used in paths), with the field named.
    with pytest.raises(ClipaError) as e:
        write_spec(tmp_path / "spec.json", name=bad)
    assert e.value.field == "name"
    with pytest.raises(ClipaError):
        names.resource_id_from_label(bad, "spec.name")


def test_spec_labels_become_valid_resource_ids():
    assert names.resource_id_from_label("My.Run_1", "spec.name") == "clipa-my-run-1"
    assert names.resource_id_from_label("0a1b2c3d4e5f6789", "spec.name") == "clipa-0a1b2c3d4e5f6789"
    assert names.attempt_id("clipa-" + "x" * 57, 12) == "clipa-" + "x" * 53 + "-a12"
    assert len(names.attempt_id("clipa-" + "x" * 57, 12)) <= 63


def test_safe_arg_refuses_shell_and_traversal():
    for bad in ["a b", "a;b", "$(id)", "`id`", "a|b", "a&b", "a>b", "../x", "x/../y", "'q'", '"q"', "a\nb", "*"]:
        with pytest.raises(ClipaError):
            names.safe_arg(bad, "arg")
    assert names.safe_arg("gs://b/runs/clipa-x", "arg") == "gs://b/runs/clipa-x"


def test_loopback_only_for_insecure_endpoints():
    from trainer.tpu.api import _check_loopback

    assert _check_loopback("127.0.0.1:5000") == "127.0.0.1:5000"
    for bad in ["tpu.googleapis.com:443", "10.0.0.1:5000", "example.com:80", "127.0.0.1"]:
        with pytest.raises(ClipaError):
            _check_loopback(bad)


def test_worker_commands_quote_every_argument(tmp_path):
    """Even the remote shell sees each argument as one word: the command round-trips through shlex."""
    spec = write_spec(tmp_path / "spec.json", name="Odd.Name_1")
    options = TpuOptions.create(**BASE, slice=8)
    plan = dry_run(spec, tmp_path / "run", options, workers=GcloudSshExec(options.project, options.zone))
    start = plan["worker_commands"]["start"][0]
    remote = start[-1].removeprefix("--command=")
    inner = remote.split(" && ", 1)[1].rsplit(" 2>&1", 1)[0]
    assert shlex.split(inner) == ["env", "CLIPA_DISTRIBUTED=1", "venv/bin/python", "-m", "trainer.cli", "train",
                                  "spec.json", "--run-dir", "gcs/runs/clipa-odd-name-1"]
    assert plan["run_name"] == "clipa-odd-name-1"
    options = TpuOptions.create(**BASE, slice=8, trainer_args=("--synthetic", "--steps=3"))
    plan = dry_run(spec, tmp_path / "run", options, workers=GcloudSshExec(options.project, options.zone))
    assert plan["worker_commands"]["start"][0][-1].endswith(" --synthetic --steps=3 2>&1 | tee -a train.log")


@pytest.mark.parametrize("argv", [
    ["tpu", "run", "SPEC", "--run-dir", "R", "--project", "my-project", "--zone", "us-central1-a",
     "--bucket", "gs://my-bucket/../x", "--dry-run"],
    ["tpu", "run", "SPEC", "--run-dir", "R", "--project", "my-project", "--zone", "us-central1-a",
     "--bucket", "gs://my-bucket", "--name", "$(id)", "--dry-run"],
    ["tpu", "up", "--project", "my-project", "--zone", "us-central1-a", "--name", "a;rm -rf", "--dry-run"],
    ["tpu", "down", "--project", "my-project", "--zone", "us-central1-a", "--name", "../x", "--dry-run"],
    ["tpu", "status", "--project", "$(id)", "--zone", "us-central1-a", "--dry-run"],
    ["tpu", "logs", "--project", "my-project", "--zone", "us-central1-a", "--name", "with space", "--dry-run"],
    ["tpu", "run", "SPEC", "--run-dir", "R", "--project", "my-project", "--zone", "us-central1-a",
     "--bucket", "gs://my-bucket", "--trainer-arg", "$(id)", "--dry-run"],
])
def test_cli_rejects_bad_names_with_one_line_and_exit_2(tmp_path, capsys, argv):
    spec = write_spec(tmp_path / "spec.json")
    argv = [str(spec) if a == "SPEC" else a for a in argv]
    build_app()
    assert run_app(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("error: ") and out.err.count("\n") == 1
    json.dumps(out.err)  # a plain line, nothing else


@pytest.mark.parametrize(("hardware", "chips"), [("tpu-v5e", 1), ("tpu-v5e", 8), ("tpu-v5e", 32), ("tpu-v4", 8),
                                                 ("tpu-v5p", 16), ("tpu-v6e", 16)])
def test_an_accelerator_type_reads_back_as_the_slice_it_names(hardware, chips):
    from trainer.tpu.options import SliceInfo

    s = SliceInfo.of(hardware, chips, "spot")
    assert SliceInfo.of_accelerator_type(s.accelerator_type) == s


@pytest.mark.parametrize("bad", ["v9-8", "v5litepod", "v5litepod-0", "v5litepod-12", "v4-3", "gpu-8"])
def test_an_unknown_accelerator_type_is_a_clipa_error(bad):
    from trainer.tpu.options import SliceInfo

    with pytest.raises(ClipaError) as e:
        SliceInfo.of_accelerator_type(bad)
    assert e.value.field in ("accelerator_type", "slice")
