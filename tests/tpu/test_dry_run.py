"""``--dry-run`` prints the exact requests and commands of a launch, calls nothing, and what trainer/tpu/README.md
and the README's TPU section show is exactly what the commands print (v5e-64 spot and v6e-256 on-demand)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from planner.cli import run_app
from trainer.cli import build_app

REPO = Path(__file__).resolve().parents[2]
READMES = [REPO / "trainer" / "tpu" / "README.md", REPO / "README.md"]


def _blocks(readme: Path = READMES[0]):
    text = readme.read_text()
    spec = re.search(r"<!-- dry-run-spec -->\n```yaml\n(.*?)\n```", text, re.S).group(1)
    runs = re.findall(r"<!-- dry-run-command -->\n```console\n\$ (.*?)\n```\n\n```json\n(.*?)\n```", text, re.S)
    return spec, runs


def test_readme_has_both_examples():
    _, runs = _blocks()
    assert len(runs) == 2
    docs = [json.loads(out) for _, out in runs]
    v5e, v6e = docs
    assert (v5e["accelerator_type"], v5e["pricing"], v5e["hosts"]) == ("v5litepod-64", "spot", 8)
    assert (v6e["accelerator_type"], v6e["pricing"], v6e["hosts"]) == ("v6e-256", "on-demand", 32)
    qr5 = v5e["api_requests"][0]["request"]["queuedResource"]
    qr6 = v6e["api_requests"][0]["request"]["queuedResource"]
    assert "spot" in qr5 and qr5["tpu"]["nodeSpec"][0]["node"]["schedulingConfig"] == {"spot": True}
    assert "guaranteed" in qr6 and "spot" not in qr6
    assert qr5["tpu"]["nodeSpec"][0]["node"]["runtimeVersion"] == "v2-alpha-tpuv5-lite"
    assert qr6["tpu"]["nodeSpec"][0]["node"]["runtimeVersion"] == "v2-alpha-tpuv6e"
    assert len(v5e["worker_commands"]["start"]) == 8 and len(v6e["worker_commands"]["start"]) == 32
    assert [c[8] for c in v6e["worker_commands"]["start"]] == [f"--worker={i}" for i in range(32)]
    # The bucket is mounted on every worker before the trainer starts, and the trainer gets the mounted path.
    for doc, bucket, run in ((v5e, "my-clipa-bucket", "clipa-demo"), (v6e, "my-clipa-bucket-east5", "demo-v6e")):
        mount = doc["worker_commands"]["setup"][-1]
        assert mount[8] == "--worker=all" and "gcsfuse --implicit-dirs --rename-dir-limit=" in mount[-1]
        assert mount[-1].endswith(f" {bucket} gcs; }}")
        assert all(f"--run-dir gcs/runs/{run} " in c[-1] and "gs://" not in c[-1]
                   for c in doc["worker_commands"]["start"])


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
@pytest.mark.parametrize("index", [0, 1])
def test_readme_output_is_exactly_what_the_command_prints(tmp_path, capsys, monkeypatch, index, readme):
    import trainer.tpu.api as api

    def refuse(*a, **k):
        raise AssertionError("--dry-run must not call anything")

    monkeypatch.setattr(api, "connect", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.chdir(tmp_path)  # the examples use the relative run dir runs/demo
    spec_text, runs = _blocks(readme)
    (tmp_path / "spec.yaml").write_text(spec_text + "\n")
    command, expected = runs[index]
    argv = shlex.split(command)
    assert argv[0] == "clipa"
    build_app()
    assert run_app(argv[1:]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert not (tmp_path / "runs").exists()
