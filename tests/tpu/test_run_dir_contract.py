"""The launcher and the trainer agree on the run dir: whatever ``--run-dir`` the launcher puts into the worker
command for a gs:// bucket is a path ``clipa train`` accepts (it refuses URLs), and it lies inside the bucket mount
that the setup step makes on every worker, on the bucket the run dir URL names."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

import pytest
from tpu_helpers import PROJECT, ZONE, write_spec

from planner.errors import ClipaError
from planner.spec import load_spec
from trainer.run_layout import local_run_dir
from trainer.tpu.launcher import LaunchPlan, make_workers
from trainer.tpu.options import TpuOptions
from trainer.tpu.workers import GCSFUSE_OPTIONS, MOUNT_DIR, WORKDIR, GcloudSshExec, LocalExec


def _run_dir_arg(argv: list[str]) -> str:
    return argv[argv.index("--run-dir") + 1]


@pytest.mark.parametrize("bucket", ["gs://my-bucket", "gs://my-bucket/runs", "gs://my.bucket_1/a/b-c/d_e"])
@pytest.mark.parametrize("install", [True, False])
def test_trainer_accepts_the_run_dir_of_a_gs_bucket_launch(tmp_path, bucket, install):
    options = TpuOptions.create(project=PROJECT, zone=ZONE, hardware="tpu-v5e", slice=16, bucket=bucket,
                                install=install)
    workers = make_workers(options)  # the real ssh implementation, as `clipa tpu run` uses it
    plan = LaunchPlan(load_spec(write_spec(tmp_path / "spec.json")), tmp_path / "run", options, workers)
    arg = _run_dir_arg(plan.trainer_argv())
    assert "://" not in arg
    local_run_dir(arg)  # the trainer's own check: raises ClipaError for a URL
    # The path is inside the mount point, where the bucket's objects appear under their own names.
    bucket_name, _, prefix = bucket[len("gs://"):].partition("/")
    expected = PurePosixPath(MOUNT_DIR, *([prefix] if prefix else []), plan.run_name)
    assert PurePosixPath(arg) == expected
    assert plan.remote_run_dir == f"{bucket}/{plan.run_name}"
    # The setup step mounts exactly that bucket there, with what orbax needs (directory renames) and what
    # multi-host needs (no metadata caching), before the trainer starts.
    setup = workers.setup_commands(plan.qr_id(1), plan.files(), install, plan.remote_run_dir)
    remote = setup[-1][-1]
    assert remote.startswith(f"--command=cd {WORKDIR} && ")
    assert shlex.join(["gcsfuse", *GCSFUSE_OPTIONS, bucket_name, MOUNT_DIR]) in remote
    assert any(o.startswith("--rename-dir-limit=") for o in GCSFUSE_OPTIONS) and "--implicit-dirs" in GCSFUSE_OPTIONS
    # Each worker's command, as the remote shell will split it, carries the same accepted path.
    for w in range(plan.slice.hosts):
        cmd = workers.start_command(plan.qr_id(1), w, plan.trainer_argv(), workers.distributed_env(plan.qr_id(1), w,
                                                                                                   plan.slice.hosts))
        words = shlex.split(cmd[-1][len("--command="):])
        assert _run_dir_arg(words) == arg


def test_local_workers_get_the_file_bucket_path_and_refuse_gs(tmp_path):
    spec = load_spec(write_spec(tmp_path / "spec.json"))
    options = TpuOptions.create(project=PROJECT, zone=ZONE, bucket=f"file://{tmp_path}/bucket")
    plan = LaunchPlan(spec, tmp_path / "run", options, LocalExec(tmp_path / "vms"))
    arg = _run_dir_arg(plan.trainer_argv())
    assert local_run_dir(arg) == tmp_path / "bucket" / plan.run_name
    gs = TpuOptions.create(project=PROJECT, zone=ZONE, bucket="gs://my-bucket/runs")
    with pytest.raises(ClipaError) as e:
        LaunchPlan(spec, tmp_path / "run", gs, LocalExec(tmp_path / "vms"))
    assert e.value.field == "bucket"


def test_the_trainer_still_refuses_urls():
    with pytest.raises(ClipaError) as e:
        local_run_dir("gs://my-bucket/runs/x")
    assert e.value.field == "run_dir"


@pytest.mark.parametrize("has_gcsfuse", [True, False])
def test_the_mount_step_runs_under_bash(tmp_path, has_gcsfuse):
    """The remote mount step, run by bash with stand-ins for the VM's external programs (sudo, curl, lsb_release,
    mountpoint, gcsfuse) that record their arguments: gcsfuse is installed only when missing, then the run dir's
    bucket is mounted at WORKDIR/MOUNT_DIR with the contract's options."""
    import shutil
    import subprocess

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    (home / WORKDIR).mkdir(parents=True)
    record = 'echo "$(basename "$0") $*" >> "$HOME/calls"\n'
    tools = {
        "mountpoint": record + "exit 1\n",  # nothing mounted yet
        "curl": record,
        "lsb_release": "echo jammy\n",
        # apt-get install puts a gcsfuse there, as the real package would
        "sudo": record + '[ "$1" = tee ] && cat >/dev/null\ncase "$*" in *"install -y gcsfuse"*) '
                         'cp "$(dirname "$0")/.gcsfuse" "$(dirname "$0")/gcsfuse";; esac\nexit 0\n',
        ".gcsfuse": record,
    }
    if has_gcsfuse:
        tools["gcsfuse"] = record
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    ex = GcloudSshExec(PROJECT, ZONE)
    remote = ex.setup_commands("x-a1", [], False, "gs://my-bucket/runs/clipa-x")[-1][-1].removeprefix("--command=")
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run([bash, "-c", remote], cwd=home, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = (home / "calls").read_text().splitlines()
    installs = [c for c in calls if c.startswith("sudo apt-get")]
    assert bool(installs) is not has_gcsfuse
    mount = " ".join(["gcsfuse", *GCSFUSE_OPTIONS, "my-bucket", MOUNT_DIR])
    assert calls[-2:] == [f"mountpoint -q {MOUNT_DIR}", mount]
    assert (home / WORKDIR / MOUNT_DIR).is_dir()
    assert ex.local_run_dir("gs://my-bucket/runs/clipa-x") == f"{MOUNT_DIR}/runs/clipa-x"
