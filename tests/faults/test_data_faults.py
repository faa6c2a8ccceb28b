"""Scenario 2b: shards that disappear or turn corrupt in the middle of an epoch, under the real input pipeline
(``trainer.data.pipeline.make_train_source`` on a ``clipa data synth`` dataset of four 60-sample shards).

The reader promises: an unreadable or truncated shard is skipped and counted, never fatal; only a dataset with no
readable sample at all is an error, and that error must be a one-line ClipaError rather than an endless loop (each
check runs in a worker thread with a generous join limit so that a hang fails the test instead of the suite)."""

from __future__ import annotations

import threading

import pytest
from conftest import clipa_ok

from planner.errors import ClipaError
from planner.spec import spec_from_dict


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "ds"
    clipa_ok(tmp_path_factory.mktemp("h"), "data", "synth", "--out", str(out), "--samples", "240", "--resolution",
             "16", "--eval-samples", "16", "--shard-size", "60", "--json", timeout=300)
    return out


def _spec(data):
    return spec_from_dict({"model": "mu/8", "dataset": "local:tiny", "data": str(data / "train"),
                           "tokenizer": str(data / "tokenizer.json"), "hardware": "cpu-2core", "pricing": "on-demand",
                           "stages": [{"samples": 800, "batch_size": 8, "image_res": 16, "text_len": 4,
                                       "lr_base": 0.01, "init": "scratch"}]})


def _in_thread(fn, limit=120):
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "the reader hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_shards_vanish_and_corrupt_mid_epoch(sharded, tmp_path):
    from trainer.data.pipeline import make_train_source

    data = _copy(sharded, tmp_path / "ds")
    shards = sorted((data / "train").glob("*.tar"))
    assert len(shards) == 4
    src = make_train_source(_spec(data), 0)

    def run():
        for _ in range(5):  # 40 samples: mid-way through the first epoch (240 samples)
            src.next_batch()
        shards[0].unlink()  # disappears
        blob = shards[1].read_bytes()
        shards[1].write_bytes(blob[: len(blob) // 3])  # truncated mid-member
        shards[2].write_bytes(b"\0garbage" * 1000)  # overwritten with junk
        batches = [src.next_batch() for _ in range(60)]  # two more epochs' worth over what is left
        return batches

    batches = _in_thread(run)
    assert all(b["images"].shape == (8, 16, 16, 3) for b in batches)
    stats = src.get_state()
    assert stats  # still resumable: the position is a plain JSON object
    text = repr(src.stats()) if hasattr(src, "stats") else repr(stats)
    assert any(w in text for w in ("unreadable", "truncated", "error", "skipped", "corrupt")), text


def test_every_shard_gone_mid_epoch_is_a_clear_error(sharded, tmp_path):
    from trainer.data.pipeline import make_train_source

    data = _copy(sharded, tmp_path / "ds")
    src = make_train_source(_spec(data), 0)

    def run():
        for _ in range(3):
            src.next_batch()
        for p in (data / "train").glob("*.tar"):
            p.unlink()
        for _ in range(200):
            src.next_batch()

    with pytest.raises(ClipaError) as e:
        _in_thread(run)
    assert "\n" not in str(e.value) and e.value.field, str(e.value)
