"""Run-spec contract and schedule shorthand: round trips, defaults from the CLIPA recipes, bad input named."""

from __future__ import annotations

import json

import pytest
import yaml

from planner.errors import ClipaError
from planner.recipe import format_samples, format_schedule
from planner.schedule import parse_samples, parse_schedule
from planner.spec import ImageMask, RunSpec, TextReduction, load_spec, spec_from_dict

H14 = "12.8B@70/8 + 512M@224/32~0.3 + 128M@336/32~0.4"


def make_spec(**over):
    stages = [s.model_dump(mode="json") for s in parse_schedule(H14, "H/14")]
    data = {"model": "H/14", "dataset": "datacomp-1b", "stages": stages}
    data.update(over)
    return spec_from_dict(data)


def test_parse_clipa_v2_h14_recipe():
    pre, ft224, ft336 = parse_schedule(H14, "H/14")
    assert (pre.samples, pre.image_res, pre.text_len) == (12_800_000_000, 70, 8)
    assert pre.text_reduction == TextReduction.syntax and pre.image_mask == ImageMask.none
    assert (pre.batch_size, pre.lr_base, pre.init) == (65_536, 8e-6, "scratch")
    assert pre.lr == pytest.approx(2.048e-3)
    assert (ft224.samples, ft224.image_res, ft224.mask_ratio) == (512_000_000, 224, 0.3)
    assert ft224.image_mask == ImageMask.random and ft224.text_reduction == TextReduction.truncate
    assert (ft224.batch_size, ft224.lr_base, ft224.init) == (32_768, 4e-7, "previous")
    assert (ft336.batch_size, ft336.lr_base, ft336.mask_ratio) == (16_384, 1e-7, 0.4)


def test_bigG_alias_and_pretrain_lr():
    (st,) = parse_schedule("12.8B@84/8", "G/14")
    assert st.lr_base == 4e-6
    assert make_spec(model="G/14", stages=[st.model_dump(mode="json")]).model == "bigG/14"


@pytest.mark.parametrize(
    "model, sched",
    [
        ("H/14", H14),
        ("B/16", "2.56e9@112/16:truncate + 131072000@224/16"),
        ("mu/8", "1M@64/8:block~0.5:grid,batch=256,lr=1e-05,warmup=0 + 200K@64/16~0.25:block,batch=128"),
        ("mu/8", "640K@32/4:random"),
    ],
)
def test_schedule_round_trip(model, sched):
    stages = parse_schedule(sched, model)
    again = parse_schedule(format_schedule(stages, model), model)
    assert again == stages


def test_samples_notation():
    assert parse_samples("12.8B") == 12_800_000_000
    assert parse_samples("2.56e9") == 2_560_000_000
    assert parse_samples("512M") == 512_000_000
    assert parse_samples("1_000") == 1000
    assert format_samples(12_800_000_000) == "12.8B"
    assert format_samples(524_288_000) == "524.288M"
    assert parse_schedule("2.56e+9@84/8", "H/14")[0].samples == 2_560_000_000


def test_run_id_is_content_hash_and_ignores_name():
    a, b = make_spec(), make_spec(name="my-run")
    assert a.run_id == b.run_id and len(a.run_id) == 16
    assert make_spec(seed=1).run_id != a.run_id


def test_yaml_and_json_round_trip(tmp_path):
    s = make_spec(name="x")
    for suffix in (".yaml", ".json"):
        p = s.write(tmp_path / f"spec{suffix}")
        assert load_spec(p) == s
    assert json.loads((tmp_path / "spec.json").read_text())["model"] == "H/14"


def test_spec_is_frozen():
    s = make_spec()
    with pytest.raises(Exception):
        s.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "over, field",
    [
        ({"model": "Q/16"}, "model"),
        ({"dataset": "imagenet-21k"}, "dataset"),
        ({"hardware": "tpu-v9"}, "hardware"),
        ({"pricing": "bargain"}, "pricing"),
        ({"bogus": 1}, "bogus"),
        ({"name": "../etc"}, "name"),
        ({"stages": []}, "stages"),
    ],
)
def test_bad_spec_names_the_field(over, field):
    with pytest.raises(ClipaError) as e:
        make_spec(**over)
    assert field in str(e.value)


@pytest.mark.parametrize(
    "stage_over, field",
    [
        ({"image_res": 100}, "image_res"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"text_len": 1}, "text_len"),
        ({"samples": 0}, "samples"),
        ({"samples": -5}, "samples"),
        ({"colour": "red"}, "colour"),
        ({"init": "elsewhere"}, "init"),
    ],
)
def test_bad_stage_names_the_field(stage_over, field):
    stages = [s.model_dump(mode="json") for s in parse_schedule(H14, "H/14")]
    stages[1].update(stage_over)
    with pytest.raises(ClipaError) as e:
        spec_from_dict({"model": "H/14", "dataset": "datacomp-1b", "stages": stages})
    assert field in str(e.value)


@pytest.mark.parametrize(
    "sched",
    ["", "12.8B", "12.8B@", "abc@224", "1M@224~1.5", "1M@224/1", "1M@224/8:nouns", "1M@224~0.3:zigzag",
     "1M@224,batch=abc", "1M@224,speed=3", "0@224", "1M@224 + ", "1e20@224"],
)
def test_bad_schedules_rejected_with_clear_error(sched):
    with pytest.raises(ClipaError) as e:
        parse_schedule(sched, "B/16")
    assert str(e.value) and "\n" not in str(e.value)


def test_unknown_field_in_spec_file(tmp_path):
    s = make_spec().model_dump(mode="json")
    s["stages"][0]["resolution"] = 224
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(s))
    with pytest.raises(ClipaError) as e:
        load_spec(p)
    assert "stages[0].resolution" in str(e.value) and "unknown field" in str(e.value)


def test_malformed_spec_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ClipaError, match="not valid JSON"):
        load_spec(p)
    with pytest.raises(ClipaError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
