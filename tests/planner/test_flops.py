"""The FLOP counter against OpenCLIP's fvcore architecture table (kept as a fixture), and its token accounting."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from planner.flops import image_forward_macs, kept_image_tokens, stage_flops, text_forward_macs
from planner.schedule import parse_schedule
from planner.variants import IMAGE_TOWERS, ModelVariant, TowerShape, decode_variant

FIXTURE = Path(__file__).parent.parent / "fixtures" / "openclip_arch_info.csv"
_WIDTH_TO_SIZE = {t.width: s for s, t in IMAGE_TOWERS.items()}
# OpenCLIP text towers by text width (model_configs/*.json): width -> (depth, heads)
_OPENCLIP_TEXT = {256: (10, 4), 384: (12, 6), 512: (12, 8), 640: (12, 10), 768: (12, 12), 1024: (24, 16), 1280: (32, 20)}


def _vit_rows():
    with open(FIXTURE) as f:
        for row in csv.DictReader(f):
            if row["model"].startswith("ViT-"):
                yield row


def _openclip_variant(row) -> tuple[ModelVariant, int]:
    """The OpenCLIP architecture of a table row, built from our variant table (B-16-plus has its own width)."""
    name = row["model"]  # e.g. ViT-B-16-plus-240, ViT-S-32-alt, ViT-H-14-336
    patch = int(name.split("-")[2])
    width = int(row["image_width"])
    if width == 896:  # ViT-B-16-plus: 14 heads of 64, mlp ratio 4
        image = TowerShape(896, 12, 3584, 14)
    elif name.startswith("ViT-e-"):
        image = IMAGE_TOWERS["e"]
    else:
        image = IMAGE_TOWERS[_WIDTH_TO_SIZE[width]]
    tw = int(row["text_width"])
    depth, heads = _OPENCLIP_TEXT[tw]
    if name.startswith("ViT-e-"):
        depth = 36
    v = decode_variant("B/16", convention="openclip")
    v = ModelVariant(
        name=name, size="x", patch=patch, image=image, text=TowerShape(tw, depth, 4 * tw, heads),
        embed_dim=int(row["embed_dim"]), vocab_size=49408, pool="tok", text_pool="eot", text_causal=True,
        max_text_len=77,
    )
    return v, int(row["image_size"])


ROWS = list(_vit_rows())


def test_fixture_has_all_vit_rows():
    assert len(ROWS) == 24


@pytest.mark.parametrize("row", ROWS, ids=[r["model"] for r in ROWS])
def test_flops_match_openclip_table_within_2_percent(row):
    v, res = _openclip_variant(row)
    img = image_forward_macs(v, res, cls_token=True) / 1e9
    txt = text_forward_macs(v, 77) / 1e9
    assert img == pytest.approx(float(row["image_gmacs"]), rel=0.02)
    assert txt == pytest.approx(float(row["text_gmacs"]), rel=0.02)
    assert img + txt == pytest.approx(float(row["gmacs"]), rel=0.02)


def test_masking_removes_tokens_and_flops():
    assert kept_image_tokens(256, 0.3) == 179
    assert kept_image_tokens(256, 0.0) == 256
    assert kept_image_tokens(4, 0.99) == 1
    full, masked = parse_schedule("1M@224/32 + 1M@224/32~0.5", "H/14")
    f_full, f_masked = stage_flops("H/14", full), stage_flops("H/14", masked)
    assert f_masked.image_macs < 0.52 * f_full.image_macs
    assert f_masked.text_macs == f_full.text_macs


def test_training_is_three_forward_passes():
    (st,) = parse_schedule("1M@224/32", "B/16")
    sf = stage_flops("B/16", st)
    assert sf.train_per_sample == pytest.approx(3 * sf.forward_per_sample)
    assert sf.total == pytest.approx(sf.train_per_sample * 1_000_000)


def test_lower_resolution_and_shorter_text_cost_less():
    lo, hi = parse_schedule("1M@84/8 + 1M@224/32", "H/14")
    ratio = stage_flops("H/14", lo).train_per_sample / stage_flops("H/14", hi).train_per_sample
    assert 0.12 < ratio < 0.20  # 36 + 8 tokens against 256 + 32 tokens (attention is quadratic)
