"""The generated dataset: determinism, captions that name what was drawn, disjoint splits, consistent labels."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from trainer.data.postag import split_words
from trainer.data.reader import iter_shard_samples, list_shards
from trainer.data.synth import (
    _COLOUR_SYNONYMS,
    _SHAPE_SYNONYMS,
    _TEXTURE_ADJ,
    _TEXTURE_WITH,
    COLOURS,
    SHAPES,
    classnames,
    classnames_fine,
    draw_sample,
    write_synth,
)


def _samples(folder):
    for url in list_shards(str(folder)):
        yield from iter_shard_samples(url)


def test_layout_and_metadata(synth_dir):
    info = json.loads((synth_dir / "dataset.json").read_text())
    assert info["train_samples"] == 240 and info["eval_samples"] == 64 and info["resolution"] == 64
    assert len(list((synth_dir / "train").glob("*.tar"))) == 6
    assert (synth_dir / "classes.txt").read_text().splitlines() == classnames()
    assert len(classnames()) == 64 and len(classnames_fine()) == 256
    templates = (synth_dir / "templates.txt").read_text().splitlines()
    assert templates and all(t.count("{}") == 1 for t in templates)
    assert (synth_dir / "tokenizer.json").exists()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = write_synth(tmp_path / "a", samples=30, eval_samples=10, shard_size=16, seed=3)
    b = write_synth(tmp_path / "b", samples=30, eval_samples=10, shard_size=16, seed=3)
    write_synth(tmp_path / "c", samples=30, eval_samples=10, shard_size=16, seed=4)
    assert a == b
    for rel in ("train/shard-000000.tar", "train/shard-000001.tar", "eval/shard-000000.tar", "tokenizer.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/train/shard-000000.tar").read_bytes() != (tmp_path / "c/train/shard-000000.tar").read_bytes()
    # a scene is the same at every resolution (only the pixels' scale changes)
    _, cap64, meta64 = draw_sample(3, "train", 5, 64)
    img128, cap128, meta128 = draw_sample(3, "train", 5, 128)
    assert cap64 == cap128 and meta64["objects"] == meta128["objects"] and img128.size == (128, 128)


def _mentions(caption: str, word: str, synonyms: dict[str, list[str]]) -> bool:
    words = set(split_words(caption.lower()))
    return word in words or any(s in words for s in synonyms.get(word, []))


def test_captions_name_every_object_drawn(synth_dir):
    n = 0
    for s in _samples(synth_dir):
        caption = s["txt"].decode()
        meta = json.loads(s["json"])
        assert [w for w, _ in meta["pos"]] == split_words(caption)  # shipped tags align with the caption's words
        assert 1 <= len(meta["objects"]) <= 4 and sum(o["main"] for o in meta["objects"]) == 1
        for o in meta["objects"]:
            assert _mentions(caption, o["shape"], _SHAPE_SYNONYMS), (caption, o)
            assert _mentions(caption, o["colour"], _COLOUR_SYNONYMS), (caption, o)
            if o["texture"] != "plain":
                tex_words = _TEXTURE_ADJ[o["texture"]] + _TEXTURE_WITH[o["texture"]]
                assert any(w in split_words(caption) for w in tex_words), (caption, o)
        n += 1
    assert n == 240


def test_labels_match_the_main_object_and_the_image(synth_dir):
    names = classnames()
    fine = classnames_fine()
    checked = 0
    for s in _samples(synth_dir / "eval"):
        meta = json.loads(s["json"])
        main = next(o for o in meta["objects"] if o["main"])
        assert names[meta["label"]] == f"{main['colour']} {main['shape']}" == meta["class"]
        assert fine[meta["label_fine"]] == f"{main['texture']} {main['colour']} {main['shape']}"
        # distractors never share both shape and colour with the main object (the label is unambiguous)
        assert all((o["shape"], o["colour"]) != (main["shape"], main["colour"]) for o in meta["objects"] if not o["main"])
        if main["texture"] == "plain" and main["shape"] in ("circle", "square", "hexagon", "diamond"):
            from PIL import Image
            import io

            img = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"), np.int32)
            cx, cy = int(main["cx"] * 64), int(main["cy"] * 64)
            patch = img[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
            if all(np.hypot(o["cx"] - main["cx"], o["cy"] - main["cy"]) > o["r"] + 0.03
                   for o in meta["objects"] if not o["main"]):  # not hidden under a distractor
                assert np.abs(patch - np.array(COLOURS[main["colour"]])).max() < 70, (patch, main)
                checked += 1
    assert checked >= 2


def test_scene_difficulty_is_spread_from_a_lone_object_to_the_full_scene():
    # easy scenes start shape learning early, hard ones keep it going (version 1, every scene hard, left the tiny
    # towers without shape features for ~1M samples): difficulty is uniform, and a scene has at most 3 x difficulty
    # distractors and a larger main object the easier it is
    metas = [draw_sample(0, "eval", i, 32)[2] for i in range(400)]
    hard = np.array([m["difficulty"] for m in metas])
    assert 0.4 < hard.mean() < 0.6 and hard.min() < 0.05 and hard.max() > 0.95
    n_distractors = np.array([len(m["objects"]) - 1 for m in metas])
    assert np.all(n_distractors <= np.round(3 * hard)) and set(n_distractors) == {0, 1, 2, 3}
    radius = np.array([next(o["r"] for o in m["objects"] if o["main"]) for m in metas])
    assert radius[hard < 0.2].mean() > radius[hard > 0.8].mean() + 0.05
    plain = np.array([next(o["texture"] for o in m["objects"] if o["main"]) == "plain" for m in metas])
    assert plain[hard < 0.2].mean() > 0.9 and plain[hard > 0.8].mean() < 0.5


def test_eval_split_is_disjoint_from_train(synth_dir):
    def digests(folder):
        return {hashlib.sha256(s["jpg"]).hexdigest() for s in _samples(folder)}, {s["__key__"] for s in _samples(folder)}

    train_img, train_keys = digests(synth_dir / "train")
    eval_img, eval_keys = digests(synth_dir / "eval")
    assert len(eval_img) == 64 and len(train_img) == 240
    assert not (train_img & eval_img) and not (train_keys & eval_keys)


def test_classes_are_balanced_and_captions_put_class_words_late():
    labels, positions = [], []
    for i in range(800):
        _, caption, meta = draw_sample(0, "train", i, 32)
        labels.append(meta["label"])
        words = split_words(caption)
        main = next(o for o in meta["objects"] if o["main"])
        shape_words = {main["shape"], *_SHAPE_SYNONYMS.get(main["shape"], [])}
        positions.append(min(k for k, w in enumerate(words) if w in shape_words))
    counts = np.bincount(labels, minlength=64)
    assert counts.min() >= 3 and counts.max() <= 30  # all 64 classes occur, roughly uniformly
    # the main object's shape word is often beyond what a short truncation keeps
    assert np.mean(np.array(positions) >= 6) > 0.5


@pytest.mark.parametrize("res", [16, 256])
def test_other_resolutions(res):
    img, caption, _ = draw_sample(1, "eval", 0, res)
    assert img.size == (res, res) and img.mode == "RGB" and caption.endswith(".")
    assert set(SHAPES) and set(COLOURS)


def test_fine_class_set_labels_texture_colour_shape(tmp_path):
    # --classes fine: zero-shot classes are "texture colour shape" (256); the images and captions are the coarse
    # set's, only the label (and classes.txt) change
    info = write_synth(tmp_path / "f", samples=20, eval_samples=20, shard_size=20, seed=3, classes="fine")
    assert info["classes"] == 256 and info["class_set"] == "fine"
    names = (tmp_path / "f" / "classes.txt").read_text().splitlines()
    assert names == classnames_fine()
    for s in _samples(tmp_path / "f" / "eval"):
        meta = json.loads(s["json"])
        main = next(o for o in meta["objects"] if o["main"])
        assert names[meta["label"]] == f"{main['texture']} {main['colour']} {main['shape']}"
        assert classnames()[meta["label_coarse"]] == meta["class"]
    with pytest.raises(Exception, match="classes"):
        write_synth(tmp_path / "g", samples=2, eval_samples=2, classes="medium")
