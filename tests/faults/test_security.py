"""Scenario 6: names and paths from specs and results cannot escape their folders, no spec-derived string reaches a
shell, and secrets in the environment never reach what a local run writes (that last check rides on the kill/resume
runs of test_kill_resume, which plant fake secrets in every ``clipa run`` they start; see ``SECRETS`` there).

* Names: a spec's ``name``, a local dataset's name and the run id (a content hash) are the only spec-derived parts
  of paths the code writes; hostile values are rejected with a ClipaError naming the field, and a result whose
  run id is not its spec's is refused before anything is written.
* Shell: the code base has no ``shell=True``, ``os.system`` or ``os.popen`` (checked on the AST, so comments and
  strings do not count); the one remote shell (``gcloud ... ssh --command``) gets every argument through
  ``shlex.join``, so metacharacters in arguments or environment values stay literal words.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
from conftest import REPO

from planner.errors import ClipaError
from planner.runs import RunResult, read_runs, record_path, utcnow, write_result
from planner.spec import spec_from_dict

BASE = {"model": "mu/8", "dataset": "local:tiny", "hardware": "cpu-2core", "pricing": "on-demand",
        "stages": [{"samples": 64, "batch_size": 8, "image_res": 16, "text_len": 4, "lr_base": 0.01,
                    "init": "scratch"}]}
HOSTILE = ["../x", "..", ".", "/etc/passwd", "a/../../b", "x\x00y", "a\nb", "~root", "$(id)", "`id`", "a;rm -rf /",
           "..\\..\\x", "", " ", "-rf", ".hidden", "x" * 65]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_spec_names_are_rejected(name):
    with pytest.raises(ClipaError) as e:
        spec_from_dict({**BASE, "name": name})
    assert e.value.field == "name"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_local_dataset_names_are_rejected(name):
    with pytest.raises(ClipaError) as e:
        spec_from_dict({**BASE, "dataset": f"local:{name}"})
    assert e.value.field == "dataset"


def test_run_ids_are_hex_hashes_and_results_cannot_pick_their_file(tmp_path):
    spec = spec_from_dict(BASE)
    assert len(spec.run_id) == 16 and all(c in "0123456789abcdef" for c in spec.run_id)
    now = utcnow()
    kw = dict(spec=spec, eval_task="x", started_at=now, finished_at=now, wall_seconds=0, device_hours=0, cost_usd=0,
              samples_per_second=0, mfu=0, top1=1)
    runs = tmp_path / "results" / "runs"
    for bad in ["../../escaped", "/tmp/escaped", "x/../../escaped"]:
        with pytest.raises(ValueError):
            write_result(RunResult(run_id=bad, **kw), runs)
    assert not (tmp_path / "escaped.json").exists() and not Path("/tmp/escaped.json").exists()
    assert write_result(RunResult(run_id=spec.run_id, **kw), runs) == record_path(spec.run_id, runs)
    assert [p.parent for p in runs.rglob("*")] == [runs]
    # a record planted with a hostile run id is read (reading writes nothing) and its spec decides its identity
    (runs / "planted.json").write_text(RunResult(run_id=spec.run_id, **kw).model_dump_json()
                                       .replace(spec.run_id, "../../x", 1))
    results, problems = read_runs(runs)
    assert problems == [] and len(results) == 2


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_shell_in_the_code_base():
    offenders = []
    for path in sorted([*(REPO / "planner").rglob("*.py"), *(REPO / "trainer").rglob("*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree):
            f = call.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if owner == "os" and name in ("system", "popen", "execl", "execlp", "spawnl", "spawnlp"):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno} os.{name}")
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno} shell=")
    assert offenders == []


def test_remote_shell_command_keeps_hostile_arguments_literal():
    from trainer.tpu.workers import WORKDIR, GcloudSshExec

    ex = GcloudSshExec("clipa-test-1", "us-central2-b")
    argv = ["python", "-m", "trainer.tpu.worker", "spec; rm -rf ~", "$(touch /tmp/pwned)", "`id`", "a'b\"c", "x\ny"]
    env = {"CLIPA_RUN": "$(id)", "X": "a b;c|d&e>f"}
    cmd = ex.start_command("node-1", 0, argv, env)
    remote = next(a for a in cmd if a.startswith("--command=")).removeprefix("--command=")
    prefix = f"set -o pipefail; cd {WORKDIR} && "
    assert remote.startswith(prefix)
    inner = remote[len(prefix):].rsplit(" 2>&1 | tee -a ", 1)[0]
    assert shlex.split(inner) == ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]
