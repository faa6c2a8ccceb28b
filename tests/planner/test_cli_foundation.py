"""The CLI contract of schema/validate/cost: JSON keys, the papers' default pricing, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainer.cli import build_app
from planner.cli import run_app

H14 = "12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4"


def run(argv, capsys):
    build_app()
    code = run_app(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cost_json_defaults_to_paper_convention(capsys):
    code, out, _ = run(["cost", "--model", "H/14", "--schedule", H14, "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert {"flops", "device_hours", "cost_usd", "stages"} <= set(d)
    assert d["hardware"] == "a100-80gb" and d["pricing"] == "clipa-paper"
    assert d["device_hours"] == pytest.approx(8640, rel=0.1)
    assert len(d["stages"]) == 3


def test_schema_and_validate(tmp_path, capsys):
    code, out, _ = run(["schema"], capsys)
    assert code == 0 and "stages" in json.loads(out)["properties"]
    from planner.schedule import parse_schedule
    from planner.spec import spec_from_dict

    spec = spec_from_dict({"model": "B/16", "dataset": "laion-400m",
                           "stages": [s.model_dump(mode="json") for s in parse_schedule("1B@112/16 + 100M@224", "B/16")]})
    p = spec.write(tmp_path / "s.yaml")
    code, out, _ = run(["validate", str(p)], capsys)
    assert code == 0 and spec.run_id in out
    code, out, _ = run(["cost", str(p), "--hardware", "tpu-v5e", "--pricing", "spot", "--json"], capsys)
    assert code == 0 and json.loads(out)["pricing"] == "spot"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["cost", "--model", "Z/16", "--schedule", "1M@224"], "model"),
        (["cost", "--model", "B/16", "--schedule", "1M@100"], "image_res"),
        (["cost", "--model", "B/16", "--schedule", "1M@224~1.0"], "mask ratio"),
        (["cost", "--model", "B/16", "--schedule", "1M@224/1"], "text_len"),
        (["cost", "--model", "B/16", "--schedule", "-5@224"], "schedule"),
        (["cost", "--model", "B/16", "--schedule", "lots@224"], "schedule"),
        (["cost", "--model", "B/16", "--schedule", "1M@224", "--hardware", "abacus"], "hardware"),
        (["cost", "--model", "B/16", "--schedule", "1M@224", "--dataset", "mnist"], "dataset"),
        (["cost", "--model", "B/16"], "spec"),
        (["validate", "/nonexistent/spec.yaml"], "not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1
    assert needle in err
    assert "Traceback" not in err


def test_console_script_exit_code_and_no_jax_import():
    """The real entry point: exit code 2 on bad input, and planner commands never import JAX."""
    code = (
        "import sys; from trainer.cli import main\n"
        "try:\n    main(['cost','--model','B/16','--schedule','1M@224','--json'])\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'jax' not in sys.modules, 'planner imported jax'\n"
        "try:\n    main(['cost','--model','B/16','--schedule','1M@99'])\n"
        "except SystemExit as e:\n    sys.exit(e.code)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "error:" in p.stderr


def test_command_exit_codes_reach_the_shell():
    """typer.Exit(n) inside a command must become the process exit code (the TPU launcher relies on it)."""
    code = (
        "import typer\nfrom planner.cli import app\nfrom trainer.cli import main\n"
        "@app.command('exit-three', hidden=True)\ndef _x():\n    raise typer.Exit(3)\n"
        "main(['exit-three'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
