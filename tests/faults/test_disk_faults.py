"""Scenario 2a: the checkpoint folder becomes read-only. Tests run as root, where chmod does not stop writes, so the
folder is made read-only for real with a read-only bind mount inside a private mount namespace (``unshare -m``;
skipped where that is not permitted). The run is SIGKILLed once checkpoint 4 exists, the folder is remounted
read-only, and the same ``clipa train`` is restarted: it resumes from checkpoint 4 and, at its next save, must stop
with one line naming the problem (exit 2) instead of orbax's background threads failing and waiting out a 300 s
signal timeout; afterwards (outside the namespace) checkpoint 4 is intact and restores.

And a folder that turns read-only while orbax is already writing a checkpoint in the background: the write fails
and ``Checkpoints.wait`` raises one ClipaError within seconds (it used to hang for orbax's 300 s signal timeout,
because the step folder was created by a background thread the array writers waited for)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO, clipa_env

SPEC = {"model": "mu/8", "dataset": "local:synthetic", "hardware": "cpu-2core", "pricing": "on-demand", "seed": 0,
        "stages": [{"samples": 480, "batch_size": 8, "image_res": 16, "text_len": 4, "lr_base": 0.01,
                    "init": "scratch"}],
        "train": {"checkpoint_every_steps": 2, "log_every_steps": 1}}

SCRIPT = r"""
set -u
CK="$RD/checkpoints"
"$PY" -c 'from trainer.cli import main; main()' train "$SPEC" --synthetic --run-dir "$RD" --no-progress \
    >/dev/null 2>"$RD.err1" & pid=$!
while [ ! -e "$CK/4/commit_success.txt" ]; do kill -0 $pid 2>/dev/null || exit 90; sleep 0.01; done
kill -9 $pid; wait $pid 2>/dev/null
rm -rf "$CK"/*orbax-checkpoint-tmp*   # a save the kill interrupted (the next start would clean it up itself)
mount --bind "$CK" "$CK" && mount -o remount,bind,ro "$CK" || exit 91
"$PY" -c 'from trainer.cli import main; main()' train "$SPEC" --synthetic --run-dir "$RD" --no-progress \
    >/dev/null 2>"$RD.err2"
echo "exit=$?"
"""


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_ok(), reason="unshare -m (a private mount namespace) is not permitted here")
def test_read_only_checkpoint_folder_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, jax_cache):
    import sys

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    rd = tmp_path / "run"
    env = clipa_env(tmp_path / "home", jax_cache, {"RD": str(rd), "PY": sys.executable, "SPEC": str(spec)})
    proc = subprocess.run(["unshare", "-m", "sh", "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.stdout.strip().endswith("exit=2"), (proc.stdout, proc.stderr, (tmp_path / "run.err2").read_text())
    err = [ln for ln in (tmp_path / "run.err2").read_text().splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "checkpoint" in err[0] and "Read-only file system" in err[0], err
    assert "Traceback" not in (tmp_path / "run.err2").read_text()
    # outside the namespace: the last checkpoint before the fault is whole and restores
    from trainer.checkpoint import Checkpoints, load_params

    store = Checkpoints(rd / "checkpoints", read_only=True, async_save=False)
    latest = store.latest_step()
    store.close()
    assert latest is not None and latest >= 4
    _, params, meta = load_params(rd)
    assert meta["global_step"] == latest
    import jax

    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert not [p for p in (rd / "checkpoints").iterdir() if "orbax-checkpoint-tmp" in p.name]


DURING_WRITE = r"""
import os, subprocess, sys, time
import jax.numpy as jnp
from planner.errors import ClipaError
from trainer.checkpoint import Checkpoints
mnt = sys.argv[1]
subprocess.run(["mount", "--bind", mnt, mnt], check=True)
store = Checkpoints(os.path.join(mnt, "checkpoints"))
start = time.monotonic()
store.save(1, {"w": jnp.ones((128, 1024, 1024), jnp.float32)}, None, {"step": 1})  # 512 MB: still being written
# the kernel refuses a read-only remount (EBUSY) while a file on the mount is open for writing, so retry until the
# writers are between files; the write is still far from done then
for _ in range(5000):
    if subprocess.run(["mount", "-o", "remount,bind,ro", mnt], capture_output=True).returncode == 0:
        break
    time.sleep(0.002)
else:
    sys.exit("the read-only remount stayed busy")
try:
    store.wait()
    print("RESULT finished-before-remount")
except ClipaError as e:
    print(f"RESULT error {time.monotonic() - start:.1f} {e.field} | {e}")
"""


@pytest.mark.skipif(not _unshare_ok(), reason="unshare -m (a private mount namespace) is not permitted here")
def test_folder_turning_read_only_during_a_write_fails_at_once(tmp_path):
    import sys

    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(["unshare", "-m", sys.executable, "-c", DURING_WRITE, str(tmp_path / "mnt")], cwd=REPO,
                          env=clipa_env(tmp_path / "home"), capture_output=True,
                          text=True, timeout=200)  # the old failure mode waited out orbax's 300 s signal timeout
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), proc.stderr[-3000:])
    assert line.startswith("RESULT error"), line
    _, _, _seconds, field, message = line.split(" ", 4)
    assert field == "checkpoint" and "Read-only file system" in message and "last finished checkpoint is none" in message
    assert "tensorstore_spec" not in message and len(message) < 700


DISK_FILLS = r"""
import os, subprocess, sys, time
import numpy as np
from planner.errors import ClipaError
from trainer.checkpoint import Checkpoints
mnt = sys.argv[1]
noise = np.random.default_rng(0).standard_normal((32, 1024, 1024), dtype=np.float32)  # random: does not compress
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt], check=True)
store = Checkpoints(os.path.join(mnt, "checkpoints"))
store.save(1, {"w": noise[:4]}, None, {"step": 1})  # 16 MB: fits
store.wait()
start = time.monotonic()
try:
    store.save(2, {"w": noise}, None, {"step": 2})  # 128 MB: fills the disk
    store.wait()
    print("RESULT finished")
except ClipaError as e:
    print(f"RESULT error {time.monotonic() - start:.1f} {e.field} | {e}")
print("STEPS", sorted(os.listdir(os.path.join(mnt, "checkpoints"))))
"""


@pytest.mark.skipif(not _unshare_ok(), reason="unshare -m (a private mount namespace) is not permitted here")
def test_disk_filling_during_a_write_fails_at_once_and_keeps_the_last_checkpoint(tmp_path):
    """ENOSPC for real: a 64 MB tmpfs mounted in a private namespace, then a 128 MB checkpoint written to it."""
    import sys

    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(["unshare", "-m", sys.executable, "-c", DISK_FILLS, str(tmp_path / "mnt")], cwd=REPO,
                          env=clipa_env(tmp_path / "home"), capture_output=True, text=True, timeout=200)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), proc.stderr[-3000:])
    assert line.startswith("RESULT error"), line
    _, _, _seconds, field, message = line.split(" ", 4)
    assert field == "checkpoint" and "No space left on device" in message, message
    assert "last finished checkpoint is step 1" in message and len(message) < 700
    steps = next(ln for ln in proc.stdout.splitlines() if ln.startswith("STEPS"))
    assert "'1'" in steps, steps
