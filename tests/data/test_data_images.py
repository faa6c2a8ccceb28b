"""Random-resized crop, the reduced-size decode fast path, and direct eval resizing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from trainer.data.images import decode_eval, decode_plain, decode_train, sample_crop


def _photo(size: int = 256) -> bytes:
    """A smooth test picture (gradients and discs), JPEG-encoded: fast and plain paths should agree on it."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx * 255, yy * 255, (1 - xx) * 200 + 30], -1)
    for cx, cy, r, c in ((0.3, 0.3, 0.15, (250, 40, 40)), (0.7, 0.6, 0.2, (30, 220, 60))):
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[m] = c
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_crop_boxes_follow_the_inception_rule():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        x0, y0, x1, y1 = sample_crop(300, 200, rng)
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200
        areas.append((x1 - x0) * (y1 - y0) / (300 * 200))
        ratios.append((x1 - x0) / (y1 - y0))
    assert min(areas) >= 0.4 - 1e-9 and max(areas) <= 1.0 + 1e-9
    assert 3 / 4 - 1e-9 <= min(ratios) and max(ratios) <= 4 / 3 + 1e-9
    # extreme aspect ratios fall back to a centred crop
    box = sample_crop(1000, 10, np.random.default_rng(0))
    assert box[3] - box[1] == 10 and abs((box[2] - box[0]) / 10 - 4 / 3) < 1e-6


def test_fast_path_drafts_at_low_resolution_and_matches_the_plain_decode():
    data = _photo(256)
    for res, expect_draft in ((64, True), (112, False), (224, False)):
        events: dict[str, int] = {}
        fast = decode_train(data, res, np.random.default_rng(3), events)
        plain = decode_plain(data, res, np.random.default_rng(3))  # same crop box (same generator draws)
        assert fast.shape == plain.shape == (res, res, 3)
        assert ("draft_decodes" in events) == expect_draft
        diff = np.abs(fast.astype(np.int16) - plain.astype(np.int16)).mean()
        assert diff < 6, (res, diff)  # same picture: reduced decode and reducing_gap change pixels only slightly
    # small outputs from large images always take the reduced decode
    events = {}
    decode_eval(_photo(512), 32, events)
    assert events["draft_decodes"] == 1


def test_eval_resizes_the_whole_image_without_cropping():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = (255, 0, 0)  # left half red, right half blue
    img[:, 100:] = (0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = decode_eval(buf.getvalue(), 20)
    assert out.shape == (20, 20, 3)
    assert out[10, 2, 0] > 200 and out[10, 17, 2] > 200  # both halves survive: squashed, not cropped


def test_decode_is_deterministic_given_the_generator():
    data = _photo(128)
    a = decode_train(data, 48, np.random.default_rng(9))
    b = decode_train(data, 48, np.random.default_rng(9))
    c = decode_train(data, 48, np.random.default_rng(10))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _random_jpeg(rng: np.random.Generator, w: int, h: int, **save) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 120.0)], -1)
    noise = rng.normal(0, 25, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, format="JPEG", **save)
    return buf.getvalue()


def test_libjpeg_turbo_path_gives_exactly_the_pillow_pixels(monkeypatch):
    """The simplejpeg decode (same libjpeg-turbo, same scale rule) must not change a single pixel or crop."""
    import trainer.data.images as images

    if images._turbo is None:  # pragma: no cover - simplejpeg is a dependency; nothing to compare without it
        return
    rng = np.random.default_rng(5)
    cases = []
    for w, h, save in ((256, 256, {"quality": 90}), (300, 200, {"quality": 75, "subsampling": 0}),
                       (211, 317, {"quality": 95, "progressive": True}), (640, 480, {"quality": 85}),
                       (17, 40, {"quality": 80}), (1000, 90, {"quality": 70, "subsampling": 1})):
        cases.append(_random_jpeg(rng, w, h, **save))
    for data in cases:
        assert images._turbo_size(data) is not None  # the fast path is really taken
        for res in (16, 32, 64, 112, 224):
            for seed in range(3):
                ev_fast: dict[str, int] = {}
                fast = decode_train(data, res, np.random.default_rng(seed), ev_fast)
                fast_eval = decode_eval(data, res)
                with monkeypatch.context() as m:
                    m.setattr(images, "_turbo", None)
                    ev_pil: dict[str, int] = {}
                    pil = decode_train(data, res, np.random.default_rng(seed), ev_pil)
                    pil_eval = decode_eval(data, res)
                assert fast.dtype == np.uint8 and fast.flags.c_contiguous and fast.shape == (res, res, 3)
                assert np.array_equal(fast, pil), (len(data), res, seed)
                assert np.array_equal(fast_eval, pil_eval), (len(data), res)
                assert ev_fast == ev_pil


def test_turbo_refusals_fall_back_to_pillow():
    import pytest

    from trainer.data.images import BadImage

    data = _random_jpeg(np.random.default_rng(1), 128, 96, quality=90)
    with pytest.raises(BadImage):  # truncated: libjpeg-turbo refuses, Pillow decides it is bad
        decode_train(data[: len(data) // 2], 32, np.random.default_rng(0))
    grey = io.BytesIO()
    Image.new("L", (64, 64), 128).save(grey, format="JPEG")
    events: dict[str, int] = {}
    out = decode_train(grey.getvalue(), 32, np.random.default_rng(0), events)
    assert out.shape == (32, 32, 3) and events.get("converted_gray") == 1  # grey JPEGs take Pillow's (counted) path
