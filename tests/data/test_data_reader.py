"""The shard reader and the training source: listing, splitting, determinism, epochs, and exact resume."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from data_helpers import image_bytes, sample_members, write_plain_shards, write_tar

from planner.errors import ClipaError
from planner.spec import RunSpec
from trainer.data.pipeline import TrainSource, make_train_source
from trainer.data.reader import ShardStream, iter_shard_samples, iter_tar, list_shards, split_shards


def _captions(stream: ShardStream, n: int) -> list[str]:
    return [stream.next()["txt"].decode() for _ in range(n)]


# --- listing and splitting -----------------------------------------------------------------------------------------
def test_list_shards_folder_pattern_glob_file_and_url(tmp_path):
    paths = write_plain_shards(tmp_path / "d", 3, 2)
    as_str = [str(p) for p in paths]
    assert list_shards(str(tmp_path / "d")) == as_str
    assert list_shards(str(tmp_path / "d" / "shard-{000000..000002}.tar")) == as_str
    assert list_shards(str(tmp_path / "d" / "shard-00000[01].tar")) == as_str[:2]
    assert list_shards(as_str[1]) == [as_str[1]]
    assert list_shards("file://" + str(tmp_path / "d")) == as_str
    # a dataset root with train/ (synth layout)
    write_plain_shards(tmp_path / "root" / "train", 2, 1)
    assert len(list_shards(str(tmp_path / "root"))) == 2
    # a bucket URL goes through fsspec (here its in-memory filesystem)
    import fsspec

    mem = fsspec.filesystem("memory")
    for p in paths:
        mem.pipe(f"/bucket/data/{p.name}", p.read_bytes())
    urls = list_shards("memory://bucket/data")
    assert [u.rsplit("/", 1)[1] for u in urls] == [p.name for p in paths]
    stream = ShardStream(urls, seed=0, shuffle_buffer=1, cycle_length=1)
    assert stream.next()["txt"].startswith(b"sample")
    for bad in (str(tmp_path / "nothing"), str(tmp_path / "d" / "x-{0..3}.tar"), str(tmp_path / "root" / "train" / "*.zip")):
        with pytest.raises(ClipaError):
            list_shards(bad)


def test_hosts_get_disjoint_shards_and_every_sample_once_per_epoch(tmp_path):
    urls = [str(p) for p in write_plain_shards(tmp_path, 6, 5)]
    assert split_shards(urls, 1, 3) == urls[1::3]
    seen = []
    for host in range(3):
        s = ShardStream(urls, seed=1, rank=host, count=3, shuffle_buffer=1, cycle_length=2)
        seen.append(set(_captions(s, 10)))  # 2 shards x 5 samples = one epoch per host
    assert all(len(x) == 10 for x in seen)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 30


def test_fewer_shards_than_hosts_splits_by_sample(tmp_path):
    urls = [str(p) for p in write_plain_shards(tmp_path, 1, 12)]
    a = ShardStream(urls, seed=0, rank=0, count=2, shuffle_buffer=1)
    b = ShardStream(urls, seed=0, rank=1, count=2, shuffle_buffer=1)
    ca, cb = set(_captions(a, 6)), set(_captions(b, 6))
    assert len(ca) == len(cb) == 6 and not (ca & cb)


# --- order, determinism, epochs ------------------------------------------------------------------------------------
def test_stream_is_seeded_shuffled_and_wraps_epochs(tmp_path):
    urls = [str(p) for p in write_plain_shards(tmp_path, 4, 6)]
    one = _captions(ShardStream(urls, seed=3, shuffle_buffer=8), 72)
    again = _captions(ShardStream(urls, seed=3, shuffle_buffer=8), 72)
    other = _captions(ShardStream(urls, seed=4, shuffle_buffer=8), 72)
    assert one == again
    assert one != other
    # every sample comes once per 24 before any repeats too often (buffer mixes epochs only at the seams)
    assert len(set(one[:24])) >= 20 and set(one) == {f"sample {s} {i} red square" for s in range(4) for i in range(6)}
    from collections import Counter

    assert set(Counter(one).values()) <= {2, 3, 4}  # three epochs, give or take the buffer
    # not the file order
    plain = [f"sample {s} {i} red square" for s in range(4) for i in range(6)]
    assert one[:24] != plain


def test_interleave_mixes_shards(tmp_path):
    urls = [str(p) for p in write_plain_shards(tmp_path, 4, 5)]
    caps = _captions(ShardStream(urls, seed=0, shuffle_buffer=1, cycle_length=4), 8)
    shards = [c.split()[1] for c in caps]
    assert len(set(shards[:4])) == 4  # round-robin over four open shards


def _spec(data, tokenizer=None, **stage):
    st = {"samples": 10_000, "batch_size": 8, "image_res": 32, "text_len": 8, "lr_base": 1e-3, "init": "scratch"}
    st.update(stage)
    return RunSpec(model="mu/8", dataset="local:synth", data=str(data), tokenizer=tokenizer,
                   hardware="cpu-2core", pricing="on-demand", seed=11, stages=[st])


def test_make_train_source_contract(synth_dir):
    spec = _spec(synth_dir / "train", text_reduction="syntax")
    with make_train_source(spec, 0, 0, 1, decode_threads=1) as src:
        b = src.next_batch()
        assert set(b) == {"images", "tokens"}
        assert b["images"].shape == (8, 32, 32, 3) and b["images"].dtype == np.uint8
        assert b["tokens"].shape == (8, 8) and b["tokens"].dtype == np.int32
        assert (b["tokens"][:, 0] == src.tokenizer.sot_id).all()
        json.dumps(src.get_state())  # JSON-serialisable
    # two hosts: half the batch each, different samples
    h0 = make_train_source(spec, 0, 0, 2, decode_threads=0)
    h1 = make_train_source(spec, 0, 1, 2, decode_threads=0)
    b0, b1 = h0.next_batch(), h1.next_batch()
    assert b0["images"].shape[0] == b1["images"].shape[0] == 4
    assert not np.array_equal(b0["images"], b1["images"])
    with pytest.raises(ClipaError, match="divisible"):
        make_train_source(_spec(synth_dir, batch_size=6), 0, 0, 4)
    with pytest.raises(ClipaError, match="no training data"):
        make_train_source(RunSpec(**{**spec.model_dump(), "data": None}), 0)
    with pytest.raises(ClipaError, match="stage 3"):
        make_train_source(spec, 3)


def _batches(src: TrainSource, n: int) -> list[dict]:
    return [src.next_batch() for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(x["images"], y["images"]) and np.array_equal(x["tokens"], y["tokens"])
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("reduction", ["random", "syntax"])
def test_resume_yields_exactly_the_uninterrupted_batches(synth_dir, synth_tokenizer, reduction):
    """Save after k batches (mid-epoch, with read-ahead in flight), restore in a fresh source, compare."""
    from trainer.data.reader import list_shards

    urls = list_shards(str(synth_dir))
    kw = dict(batch_size=12, image_res=24, text_len=6, text_reduction=reduction, seed=[5, 0], shuffle_buffer=30,
              cycle_length=3)
    ref_src = TrainSource(urls, synth_tokenizer, decode_threads=2, **kw)
    reference = _batches(ref_src, 30)  # 360 samples: wraps past the 240-sample epoch
    ref_src.close()
    for k in (0, 1, 7, 19):
        first = TrainSource(urls, synth_tokenizer, decode_threads=1, **kw)
        head = _batches(first, k)
        state = json.loads(json.dumps(first.get_state()))
        first.next_batch()  # keep going: the saved state must not move
        first.close()
        assert _same(head, reference[:k])
        resumed = TrainSource(urls, synth_tokenizer, decode_threads=0, **kw)
        resumed.set_state(state)
        assert json.dumps(resumed.get_state(), sort_keys=True) == json.dumps(state, sort_keys=True)
        assert _same(_batches(resumed, 30 - k), reference[k:])
        resumed.close()


def test_resume_across_a_skipped_sample_and_state_mismatch(tmp_path, synth_tokenizer):
    members = []
    for i in range(30):
        img = b"" if i % 7 == 3 else image_bytes(32, 32, seed=i)  # some zero-byte images
        members += sample_members(f"k{i:03d}", f"caption {i}", img)
        if i % 9 == 4:
            members += sample_members(f"k{i:03d}x", None, image_bytes(8, 8))  # no caption
    urls = [str(write_tar(tmp_path / "a.tar", members[: len(members) // 2])),
            str(write_tar(tmp_path / "b.tar", members[len(members) // 2 :]))]
    kw = dict(batch_size=5, image_res=16, text_len=6, seed=1, shuffle_buffer=4, cycle_length=2)
    src = TrainSource(urls, synth_tokenizer, decode_threads=0, **kw)
    ref = _batches(src, 12)
    src2 = TrainSource(urls, synth_tokenizer, decode_threads=2, **kw)
    _batches(src2, 5)
    state = src2.get_state()
    src3 = TrainSource(urls, synth_tokenizer, decode_threads=2, **kw)
    src3.set_state(state)
    assert _same(_batches(src3, 7), ref[5:])
    assert src3.stats()["empty_image"] > 0 and src3.stats()["missing_caption"] > 0
    other = TrainSource(urls, synth_tokenizer, decode_threads=0, **{**kw, "batch_size": 6})
    with pytest.raises(ClipaError, match="made for"):
        other.set_state(state)
    other_data = TrainSource(urls[:1], synth_tokenizer, decode_threads=0, **kw)
    with pytest.raises(ClipaError, match="different shard list"):
        other_data.set_state(state)


def test_decode_thread_count_does_not_change_batches(synth_dir, synth_tokenizer):
    from trainer.data.reader import list_shards

    urls = list_shards(str(synth_dir))
    kw = dict(batch_size=16, image_res=32, text_len=8, text_reduction="block", seed=2, shuffle_buffer=20)
    outs = []
    for threads in (0, 1, 3):
        with TrainSource(urls, synth_tokenizer, decode_threads=threads, **kw) as s:
            outs.append(_batches(s, 4))
    assert _same(outs[0], outs[1]) and _same(outs[0], outs[2])


# --- tar parsing ---------------------------------------------------------------------------------------------------
def test_tar_parser_handles_long_names_and_pax(tmp_path):
    long_key = "d/" + "x" * 150
    members = sample_members(long_key, "long", image_bytes(8, 8)) + sample_members("ünïcode", "pax", image_bytes(8, 8))
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = write_tar(tmp_path / f"t{fmt}.tar", members, fmt=fmt)
        samples = list(iter_shard_samples(str(path)))
        assert [s["__key__"] for s in samples] == [long_key, "ünïcode"]
        assert samples[1]["txt"] == b"pax"
        # resuming at a sample's offset yields the same samples from there on
        again = list(iter_shard_samples(str(path), samples[1]["__offset__"]))
        assert [s["__key__"] for s in again] == ["ünïcode"]
    with open(path, "rb") as f:
        names = [n for n, *_ in iter_tar(f)]
    assert names[0].startswith("d/xxx") and names[-1] == "ünïcode.txt"


def test_state_is_small_and_a_changed_shard_is_detected(tmp_path, synth_tokenizer):
    urls = [str(p) for p in write_plain_shards(tmp_path, 3, 20)]
    kw = dict(batch_size=4, image_res=16, text_len=6, seed=0, shuffle_buffer=25, cycle_length=2)
    src = TrainSource(urls, synth_tokenizer, decode_threads=0, **kw)
    for _ in range(3):
        src.next_batch()
    state = src.get_state()
    assert len(json.dumps(state)) < 200 + 40 * 25  # about 30 bytes per buffered sample
    # rewrite one shard with other content: restoring must refuse rather than silently differ
    write_plain_shards(tmp_path / "other", 3, 20, size=24)
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        (tmp_path / name).write_bytes((tmp_path / "other" / name).read_bytes()[::-1])
    fresh = TrainSource(urls, synth_tokenizer, decode_threads=0, **kw)
    with pytest.raises(ClipaError, match="changed since the state was saved"):
        fresh.set_state(state)


def test_sample_generator_is_exactly_the_keyed_philox():
    """The re-keyed per-thread generator draws what a freshly built ``Generator(Philox(key=...))`` draws, whatever
    the previous sample left in it (a half-used 32-bit buffer, an advanced counter), and in any thread."""
    from concurrent.futures import ThreadPoolExecutor

    from trainer.data.pipeline import sample_generator

    base = 0xDEADBEEF12345678

    def draws(g: np.random.Generator) -> list:
        return [g.uniform(0.4, 1.0), g.uniform(-0.3, 0.3), g.integers(0, 7, dtype=np.int32),  # 32-bit buffer
                g.permutation(9).tolist(), g.integers(0, 10**12), g.random()]

    for b in (base, 12345, 2**63 - 1, 2**63 + 12345):
        for i in (0, 1, 10**6, 2**40 + 3):
            assert draws(sample_generator(b, i)) == draws(np.random.Generator(np.random.Philox(key=[b, i])))
    ref = {i: draws(np.random.Generator(np.random.Philox(key=[base, i]))) for i in range(40)}
    assert [draws(sample_generator(base, i)) for i in range(40)] == [ref[i] for i in range(40)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda i: draws(sample_generator(base, i)), range(40)))
    assert got == [ref[i] for i in range(40)]


def test_decode_cache_never_changes_the_batches_and_resumes_exactly(synth_dir, synth_tokenizer, monkeypatch):
    """With the decode cache the batches are a function of the samples alone: the same with a cache that holds
    everything, one that fills up after a few images (mostly misses), any thread count, and after a restore."""
    from trainer.data.reader import list_shards

    urls = list_shards(str(synth_dir))
    kw = dict(batch_size=16, image_res=24, text_len=8, text_reduction="random", seed=4, shuffle_buffer=20)
    big = TrainSource(urls, synth_tokenizer, decode_threads=2, decode_cache_mb=64, **kw)
    ref = _batches(big, 40)  # 640 samples: 2.7 epochs of 240
    st = big.stats()
    assert st["decode_cache_hits"] > 300 and st["decode_cache_images"] == 240 and not st["decode_cache_full"]
    big.close()
    monkeypatch.setenv("CLIPA_DECODE_CACHE_MB", "1")  # the environment turns it on for runs that do not pass it
    small = TrainSource(urls, synth_tokenizer, decode_threads=0, **kw)  # ~80 of 240 images fit
    assert _same(_batches(small, 40), ref)
    assert small.stats()["decode_cache_full"] and small.stats()["decode_cache_misses"] > 300
    small.close()
    for k in (3, 17, 31):  # resume mid-epoch, in the second and in the third epoch
        first = TrainSource(urls, synth_tokenizer, decode_threads=1, decode_cache_mb=64, **kw)
        _batches(first, k)
        state = json.loads(json.dumps(first.get_state()))
        first.close()
        resumed = TrainSource(urls, synth_tokenizer, decode_threads=2, decode_cache_mb=64, **kw)
        resumed.set_state(state)  # the cache starts empty: misses decode what hits would have found
        assert _same(_batches(resumed, 40 - k), ref[k:])
        resumed.close()
    monkeypatch.delenv("CLIPA_DECODE_CACHE_MB")
    # a state saved with the cache is for the cached path (other pixels at some crops): refused without it
    with TrainSource(urls, synth_tokenizer, decode_threads=0, **kw) as plain:
        with pytest.raises(ClipaError, match="made for"):
            plain.set_state(state)
    # and the cached path gives the same pictures as the direct one up to the decode scale of the larger crops
    with TrainSource(urls, synth_tokenizer, decode_threads=0, **kw) as direct:
        d = _batches(direct, 3)
    for a, b in zip(d, ref[:3]):
        assert np.array_equal(a["tokens"], b["tokens"])  # same generators: same crops, same text draws
        assert np.abs(a["images"].astype(np.int16) - b["images"].astype(np.int16)).mean() < 4
