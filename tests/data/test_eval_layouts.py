"""ImageNet-1k validation as users have it (issue 14): wnid class folders and webdataset shards with 'cls', generated
here; a wrong layout is one line naming the expected one. And tokenizer training from any shard source."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from data_helpers import image_bytes, sample_members, write_tar

from planner.cli import run_app
from planner.errors import ClipaError
from trainer.cli import build_app
from trainer.data.imagenet import EXPECTED_LAYOUT
from trainer.rehearse import check_eval_layout
from trainer.data.pipeline import make_eval_source
from trainer.data.prompts import imagenet_classnames

WNIDS = [f"n{1440764 + 7 * i:08d}" for i in range(1000)]  # 1000 distinct WordNet-id-shaped names, sorted


def _wnid_folder(root, filled=(0, 1, 999), per_class=2):
    for w in WNIDS:
        (root / w).mkdir(parents=True)
    for i in filled:
        for j in range(per_class):
            (root / WNIDS[i] / f"ILSVRC2012_val_{i:05d}{j}.JPEG").write_bytes(image_bytes(40, 32, seed=i * 10 + j))
    return root


def test_wnid_folders_read_in_standard_class_order(tmp_path):
    root = _wnid_folder(tmp_path / "val")
    src = make_eval_source(str(root), 16, batch_size=4, decode_threads=0)
    assert src.classnames == imagenet_classnames() and src.imagenet and src.layout == "folders"
    labels = np.concatenate([b["labels"] for b in src])
    assert list(labels) == [0, 0, 1, 1, 999, 999]  # sorted wnids = the standard index order
    assert "1000 classes, 6 labelled images" in check_eval_layout(str(root), 16)


def test_shards_with_cls_labels_are_imagenet_indices(tmp_path):
    members = []
    for i, label in enumerate([3, 0, 999, 17]):
        members += sample_members(f"{i:06d}", caption=None, image=image_bytes(seed=i)) + [(f"{i:06d}.cls", str(label).encode())]
    write_tar(tmp_path / "val" / "imagenet-val-0000.tar", members)
    src = make_eval_source(str(tmp_path / "val"), 16, decode_threads=0)
    assert src.classnames == imagenet_classnames() and src.layout == "shards"
    assert list(np.concatenate([b["labels"] for b in src])) == [3, 0, 999, 17]
    assert "shards, 1000 classes, 4 labelled images" in check_eval_layout(str(tmp_path / "val"), 16)


@pytest.mark.parametrize("make", ["empty", "partial_wnids", "mixed", "no_labels", "missing"])
def test_a_wrong_layout_is_one_line_naming_the_expected_one(tmp_path, make):
    root = tmp_path / "val"
    if make == "empty":
        root.mkdir()
    elif make == "partial_wnids":
        for w in WNIDS[:999]:
            (root / w).mkdir(parents=True)
    elif make == "mixed":
        for w in WNIDS[:999] + ["cats"]:
            (root / w).mkdir(parents=True)
    elif make == "no_labels":
        write_tar(root / "0.tar", sample_members("000000", image=image_bytes()))
    with pytest.raises(ClipaError) as e:
        check_eval_layout(str(root), 16)
    assert e.value.field == "eval_data" and EXPECTED_LAYOUT in e.value.message
    assert "\n" not in str(e.value)


def _synth(tmp_path):
    build_app()
    d = tmp_path / "D"
    assert run_app(["data", "synth", "--out", str(d), "--samples", "120", "--eval-samples", "40", "--shard-size",
                    "40"]) == 0
    return d


def test_tokenizer_trains_on_any_shard_source_and_says_how_much_it_read(tmp_path, capsys):
    d = _synth(tmp_path)
    capsys.readouterr()
    # a bucket-style URL (fsspec's in-memory filesystem stands in for gs:// / s3://) with a brace pattern
    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe(f"/bucket/train/shard-{i:06d}.tar", (d / "train" / f"shard-{i:06d}.tar").read_bytes())
    out = tmp_path / "tok.json"
    code = run_app(["data", "tokenizer", "--data", "memory://bucket/train/shard-{000000..000002}.tar", "--out",
                    str(out), "--limit", "100", "--json"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["captions"] == 100 and info["shards_read"] == 3 and info["shards"] == 3 and out.exists()
    code = run_app(["data", "tokenizer", "--data", str(d / "train" / "shard-{000000..000001}.tar"), "--out",
                    str(out)])
    assert code == 0
    assert "trained on 80 captions read from 2 of 2 shards" in capsys.readouterr().out
