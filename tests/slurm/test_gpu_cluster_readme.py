"""The README's "GPU cluster" section shows exactly what ``clipa run <the $10k plan> --backend slurm --dry-run``
prints (the plan made here by ``clipa plan --budget 10000``, as a user would), and the dry-run runs nothing; the
batch script quotes every path; the ``cuda`` extra matches the pinned JAX."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

from planner.cli import run_app
from trainer.cli import build_app
from trainer.slurm.options import SlurmOptions
from trainer.slurm.script import render_script

REPO = Path(__file__).resolve().parents[2]


def _section() -> tuple[str, str, str]:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- slurm-dry-run -->\n```console\n\$ (.*?)\n```\n\n```json\n(.*?)\n```\n\n.*?\n\n```bash\n(.*?)```",
                  text, re.S)
    assert m, "README.md has no slurm dry-run block"
    return m.group(1), m.group(2), m.group(3)


def test_readme_dry_run_is_what_the_command_prints(isolated_home, monkeypatch, capsys):
    command, expected, script = _section()
    monkeypatch.chdir(isolated_home)  # the command names plans/<id>, where `clipa plan` writes it
    build_app()
    assert run_app(["plan", "--budget", "10000"]) == 0
    capsys.readouterr()

    def refuse(*a, **k):
        raise AssertionError("--dry-run must not run anything")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    argv = shlex.split(command)
    assert argv[0] == "clipa" and argv[1:3] == ["run", "plans/" + argv[2].split("/")[1]]
    assert (isolated_home / argv[2] / "plan.json").exists(), "the README's plan id is not what `clipa plan " \
                                                             "--budget 10000` writes now"
    assert run_app(argv[1:]) == 0
    assert capsys.readouterr().out == expected + "\n"
    doc = json.loads(expected)
    launch = doc["runs"][0]["launch"]
    assert (launch["nodes"], launch["gpus"], doc["backend"]) == (8, 64, "slurm")
    assert launch["script"] == script  # the script shown below the JSON is the one in it
    assert not Path("/shared/clipa/runs").exists()
    body = json.loads((isolated_home / argv[2] / "plan.json").read_text())
    assert body["budget_usd"] == 10000


def test_script_quotes_every_path_and_validates_names(tmp_path):
    import pytest
    from pydantic import ValidationError

    opts = SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu-a100", time="2-00:00:00", hardware="a100-80gb",
                        pricing="on-demand", clipa="/opt/my env/bin/clipa")
    evil = tmp_path / "runs $(touch pwned) `id`; x" / "r1"
    text = render_script("abc", evil, evil / "slurm", opts)
    line = text.splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:4] == ["exec", "srun", "--kill-on-bad-exit=1", "--cpu-bind=none"]
    assert argv[4:] == ["/opt/my env/bin/clipa", "train", str(evil / "slurm" / "spec.json"), "--run-dir", str(evil),
                        "--no-progress"]
    # bash itself runs it as those words: nothing is executed
    out = subprocess.run(["bash", "-c", "set -- " + line.removeprefix("exec ") + "; printf '%s\\n' \"$@\""],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.splitlines() == argv[1:] and not (tmp_path / "pwned").exists()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=4" in text and "#SBATCH --gpus-per-node=4" in text
    for field, bad in (("partition", "gpu\n#SBATCH --x"), ("account", "a b"), ("qos", "$(id)"), ("time", "1;id")):
        with pytest.raises(ValidationError):
            SlurmOptions(**{**opts.model_dump(), field: bad})


def test_cuda_extra_matches_the_pinned_jax():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    jax_pin = next(d for d in project["dependencies"] if d.startswith("jax=="))
    version = jax_pin.split("==")[1]
    assert project["optional-dependencies"]["cuda"] == [f"jax-cuda12-plugin[with-cuda]=={version}",
                                                        f"jax-cuda12-pjrt=={version}"]
