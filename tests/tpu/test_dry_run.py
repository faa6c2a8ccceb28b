"""``--dry-run`` prints the exact requests and commands of a launch, calls nothing, and what trainer/tpu/README.md
shows is exactly what the commands print (v5e-64 spot and v6e-256 on-demand)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from planner.cli import run_app
from trainer.cli import build_app

README = Path(__file__).resolve().parents[2] / "trainer" / "tpu" / "README.md"


def _blocks():
    text = README.read_text()
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


@pytest.mark.parametrize("index", [0, 1])
def test_readme_output_is_exactly_what_the_command_prints(tmp_path, capsys, monkeypatch, index):
    import trainer.tpu.api as api

    def refuse(*a, **k):
        raise AssertionError("--dry-run must not call anything")

    monkeypatch.setattr(api, "connect", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.chdir(tmp_path)  # the examples use the relative run dir runs/demo
    spec_text, runs = _blocks()
    (tmp_path / "spec.yaml").write_text(spec_text + "\n")
    command, expected = runs[index]
    argv = shlex.split(command)
    assert argv[0] == "clipa"
    build_app()
    assert run_app(argv[1:]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert not (tmp_path / "runs").exists()
