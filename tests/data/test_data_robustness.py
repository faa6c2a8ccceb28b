"""Broken inputs are skipped or converted, counted, reported, and never fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import image_bytes, sample_members, write_tar

from planner.errors import ClipaError
from trainer.data.images import BadImage, decode_eval, decode_train
from trainer.data.pipeline import TrainSource, make_eval_source
from trainer.data.tokenizer import train_tokenizer

GOOD = 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"caption {i} a red square" for i in range(50)], vocab_size=300, min_frequency=1)


def _drain(urls, tok, n_batches=6, batch=4, **kw):
    src = TrainSource([str(u) for u in urls], tok, batch, 16, 8, seed=0, shuffle_buffer=3, cycle_length=2,
                      decode_threads=kw.pop("decode_threads", 2), **kw)
    batches = [src.next_batch() for _ in range(n_batches)]
    stats = src.stats()
    src.close()
    return batches, stats


def _good_members(prefix: str, n: int = GOOD):
    out = []
    for i in range(n):
        out += sample_members(f"{prefix}{i:03d}", f"caption {i}", image_bytes(24, 24, seed=i))
    return out


def test_corrupt_and_truncated_tars(tmp_path, tok):
    good = write_tar(tmp_path / "good.tar", _good_members("g"))
    data = write_tar(tmp_path / "trunc_src.tar", _good_members("t")).read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2 + 100])  # cut in the middle of a member
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 40)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    flipped = bytearray(data)
    flipped[512 * 9 + 100] ^= 0xFF  # corrupt a later header's name: bad checksum mid-file
    bad_header = tmp_path / "bad_header.tar"
    bad_header.write_bytes(bytes(flipped))
    batches, stats = _drain([good, truncated, garbage, empty, bad_header], tok, n_batches=15)
    assert all(b["images"].shape == (4, 16, 16, 3) for b in batches)
    assert stats["bad_shard"] >= 3  # truncated, garbage, bad header (an empty file is just an empty shard)
    assert stats["last_problems"] and any("truncated" in p for p in stats["last_problems"])


def test_only_broken_shards_is_an_error_not_a_hang(tmp_path, tok):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x01" * 4096)
    no_captions = write_tar(tmp_path / "nocap.tar", [("a.jpg", image_bytes(8, 8))])
    with pytest.raises(ClipaError, match="no readable samples"):
        _drain([garbage, no_captions], tok, n_batches=1, decode_threads=0)


@pytest.mark.parametrize("cache_mb", [0, 16])
def test_bad_images_and_captions_are_skipped_and_counted(tmp_path, tok, cache_mb):
    members = _good_members("g")
    members += sample_members("zero", "zero-byte image", b"")
    members += sample_members("junk", "not an image", b"\x00garbage bytes, not a jpeg" * 10)
    jpeg = image_bytes(64, 64, seed=3)
    members += sample_members("cut", "truncated jpeg", jpeg[: len(jpeg) // 2])
    members += sample_members("nocap", None, image_bytes(16, 16))
    members += sample_members("emptycap", "   ", image_bytes(16, 16))
    members += sample_members("noimg", "a caption without an image")
    members += sample_members("latin", "caf\xe9 cr\xe8me".encode("latin-1"), image_bytes(16, 16, seed=9))
    path = write_tar(tmp_path / "mixed.tar", members)
    batches, stats = _drain([path], tok, n_batches=12, decode_cache_mb=cache_mb)
    assert all(b["images"].dtype == np.uint8 for b in batches)
    assert stats["empty_image"] >= 1
    assert stats["bad_image"] >= 2  # junk + truncated jpeg (every epoch)
    assert stats["missing_caption"] >= 1
    assert stats["empty_caption"] >= 1
    assert stats["missing_image"] >= 1
    assert stats["caption_not_utf8"] >= 1
    json.dumps(stats)


@pytest.mark.parametrize(
    "mode,fmt,counter",
    [
        ("CMYK", "JPEG", "converted_cmyk"),
        ("P", "PNG", "converted_palette"),
        ("RGBA", "PNG", "converted_alpha"),
        ("LA", "PNG", "converted_alpha"),
        ("RGBA", "WEBP", "converted_alpha"),
        ("L", "JPEG", "converted_gray"),
        ("I;16", "PNG", "converted_highbit"),
        ("RGB", "WEBP", None),
        ("RGB", "PNG", None),
    ],
)
def test_image_modes_are_converted(mode, fmt, counter):
    data = image_bytes(40, 30, mode=mode, fmt=fmt)
    events: dict[str, int] = {}
    out = decode_train(data, 24, np.random.default_rng(0), events)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    ev = decode_eval(data, 20, events)
    assert ev.shape == (20, 20, 3)
    if counter:
        assert events[counter] == 2


def test_palette_transparency_and_one_pixel_images():
    from PIL import Image
    import io

    img = Image.new("P", (10, 10), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    events: dict[str, int] = {}
    out = decode_eval(buf.getvalue(), 8, events)
    assert (out == 255).all()  # fully transparent: composited on white
    assert events["converted_palette"] == 1 and events["converted_alpha"] == 1
    one = image_bytes(1, 1, fmt="PNG")
    events = {}
    out = decode_train(one, 32, np.random.default_rng(0), events)
    assert out.shape == (32, 32, 3) and (out == out[0, 0]).all()  # upscaled single colour
    assert events["tiny_image"] == 1


@pytest.mark.parametrize("cache_mb", [0, 16])
def test_tiny_and_odd_images_in_a_shard(tmp_path, tok, cache_mb):
    members = _good_members("g", 6)
    members += sample_members("one", "one pixel", image_bytes(1, 1, fmt="PNG"), ext="png")
    members += sample_members("cmyk", "cmyk", image_bytes(20, 20, mode="CMYK"))
    members += sample_members("pal", "palette", image_bytes(20, 20, mode="P", fmt="PNG"), ext="png")
    members += sample_members("alpha", "alpha", image_bytes(20, 20, mode="RGBA", fmt="WEBP"), ext="webp")
    path = write_tar(tmp_path / "odd.tar", members)
    batches, stats = _drain([path], tok, n_batches=5, decode_cache_mb=cache_mb)
    assert all(b["images"].shape == (4, 16, 16, 3) for b in batches)
    for k in ("tiny_image", "converted_cmyk", "converted_palette", "converted_alpha"):
        assert stats[k] >= 1, k
    assert "bad_image" not in stats


def test_bad_image_raises_bad_image():
    for data in (b"", b"GIF89a broken", b"\xff\xd8\xff\xe0" + b"\x00" * 20):
        with pytest.raises(BadImage):
            decode_train(data, 16, np.random.default_rng(0))


def test_eval_source_skips_and_counts(tmp_path):
    members = []
    for i in range(10):
        members += sample_members(f"e{i}", f"caption {i}", image_bytes(20, 20, seed=i),
                                  meta=json.dumps({"label": i % 3}).encode())
    members += sample_members("bad", "bad", b"junk" * 10, meta=b'{"label": 1}')
    members += sample_members("nolabel", "no label", image_bytes(20, 20))
    members += sample_members("cls", "cls member", image_bytes(20, 20)) + [("cls.cls", b"2")]
    write_tar(tmp_path / "ev" / "shard-0.tar", members)
    (tmp_path / "ev" / "classes.txt").write_text("a\nb\nc\n")
    src = make_eval_source(str(tmp_path / "ev"), 16, batch_size=4, decode_threads=1)
    batches = list(src)
    labels = np.concatenate([b["labels"] for b in batches]).tolist()
    assert labels == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, -1, 2]
    assert src.stats()["bad_image"] == 1
    assert src.classnames == ["a", "b", "c"]
