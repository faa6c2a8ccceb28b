"""trainer.fit_check / clipa fit-check: the real train step compiled for a TPU slice that is not here (libtpu).

Compiles use tiny towers except the one slow B/16 test. libtpu allows one process at a time; these tests lift that
lock (ALLOW_MULTIPLE_LIBTPU_LOAD, safe on a host without TPUs: nothing runs on a chip) so that a concurrent compile
elsewhere (a benchmark) does not fail them.
"""

from __future__ import annotations

import json

import pytest

from planner.cli import run_app
from planner.flops import stage_flops
from planner.hardware import get_hardware
from planner.memory import estimate, remat_extra_flops_per_sample
from planner.spec import spec_from_dict
from trainer.cli import build_app
from trainer import fit_check

pytest.importorskip("libtpu")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    monkeypatch.setenv("CLIPA_FIT_CACHE", str(tmp_path / "cache"))


def spec(model="mu/8", res=32, text=8, batch=64, **stage_kw):
    return spec_from_dict({"model": model, "dataset": "datacomp-1b", "hardware": "tpu-v5e", "pricing": "spot",
                           "stages": [{"samples": 10**6, "batch_size": batch, "image_res": res, "text_len": text,
                                       "lr_base": 1e-5, "init": "scratch", **stage_kw}]})


def test_topology_names():
    v5e = get_hardware("tpu-v5e")
    assert [fit_check.topology_name(v5e, n) for n in (1, 4, 8, 16, 256)] == \
        ["v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:16x16"]
    assert fit_check.topology_name(get_hardware("tpu-v5p"), 8) == "v5p:2x2x2"


def test_compiled_step_of_a_tiny_tower_and_its_stage_micro_batch(tmp_path):
    """The stage's own micro_batch reaches the compiled step (a different program: loops over micro-batches, with
    temporaries). XLA's cost analysis counts a loop body once, so a micro-batched step's compiled FLOPs are not
    comparable with planner.flops (fit-check leaves that ratio out for them). A tiny tower's softmax/norm/optimizer
    work, which planner.flops does not count, puts its compiled FLOPs at ~1.5x the matmul count; the B/16 slow test
    checks agreement at real size. Compiles are cached."""
    v5e = get_hardware("tpu-v5e")
    s = spec()
    whole = fit_check.compile_stage(s, 0, v5e, 4)
    assert whole.fits and whole.peak_bytes > 0 and whole.topology == "v5e:2x2" and whole.dtype == "bfloat16"
    planner = stage_flops(s.model, s.stages[0]).train_per_sample * 64
    assert 1.0 <= whole.flops_per_device * 4 / planner < 2.0
    split = spec(micro_batch=32)
    micro = fit_check.compile_stage(split, 0, v5e, 4)
    assert micro.micro_batch == 32 and micro.fits
    assert micro.flops_per_device != whole.flops_per_device and micro.temp_bytes != whole.temp_bytes
    assert remat_extra_flops_per_sample(s.model, s.stages[0], "none", 32) > 0  # ... which the plan prices
    again = fit_check.compile_stage(s, 0, v5e, 4)
    assert again.cached and again.peak_bytes == whole.peak_bytes
    assert fit_check.cached_result(s, 0, v5e, 4) is not None
    # what clipa plan does with a cached compile of its chosen stage: the compiled peak replaces the analytic one
    path = tmp_path / "spec.yaml"
    s.write(path)
    body = {"chosen": {"hardware": "tpu-v5e", "chips": 4, "spec": str(path),
                       "stages": [{"peak_memory_gb": 1.0, "memory_source": "analytic"}]}}
    fit_check.attach_compiled(body, tmp_path, compile_=False)
    row = body["chosen"]["stages"][0]
    assert row["memory_source"] == "compiled" and row["peak_memory_gb"] == whole.peak_bytes / 1e9
    assert row["analytic_peak_memory_gb"] == 1.0 and json.loads((tmp_path / "plan.json").read_text()) == body


def test_fit_check_rejects_what_fits_no_setting(tmp_path, capsys):
    """bigG/14 at 336 px on one v5e chip: over the HBM at its smallest setting; rejected without compiling."""
    p = tmp_path / "g.yaml"
    p.write_text(spec("bigG/14", 336, 32, 256).to_yaml())
    build_app()
    code = run_app(["fit-check", str(p), "--slice", "1", "--json"])
    out = capsys.readouterr()
    assert code == 2
    body = json.loads(out.out)
    assert body["fits"] is False and body["stages"][0]["memory_source"] == "analytic"
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "stages[0]" in lines[0] and "does not fit 1 x tpu-v5e" in lines[0]


@pytest.mark.slow
def test_fit_check_b16_224_on_v5e_2x2_is_compiled(tmp_path, capsys):
    """The real B/16 224 px stage (batch 256) compiled for v5e:2x2 (minutes): compiled memory, FLOPs within a few %
    of planner.flops, and the analytic model within 15% of the compiled peak."""
    p = tmp_path / "b.yaml"
    s = spec("B/16", 224, 32, 256)
    p.write_text(s.to_yaml())
    build_app()
    code = run_app(["fit-check", str(p), "--slice", "4", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    row = json.loads(out.out)["stages"][0]
    assert row["memory_source"] == "compiled" and row["fits"] and row["compile_s"] > 0
    assert row["compiled_over_planner_flops"] == pytest.approx(1.0, rel=0.05)
    assert estimate("B/16", s.stages[0], 4).peak_gb == pytest.approx(row["peak_gb"], rel=0.15)
