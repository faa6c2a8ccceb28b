"""Webdataset tar shards -> an endless, seeded, resumable stream of raw samples for one host (or worker).

What it owns:
- finding shards: a local folder (or its ``train/`` subfolder), a single ``.tar``, a brace pattern
  (``shards/{000000..000099}.tar``), a glob, or a bucket URL (anything fsspec opens: ``gs://``, ``s3://``, ...);
- splitting them across hosts and workers (``shards[rank::count]``); with fewer shards than readers every reader reads
  every shard and keeps every ``count``-th sample instead, so no reader is ever idle or starved;
- a tar parser of our own (ustar, GNU long names, pax paths) that knows the byte offset of every sample, so the
  stream's position is a handful of integers; samples are the consecutive members sharing a ``__key__``;
- each epoch, a seeded permutation of the reader's shards; ``cycle_length`` shards open at once, read round-robin
  (as tf.data's interleave) so neighbouring samples come from different shards; epochs wrap around forever;
- a seeded shuffle buffer on top;
- ``get_state()``/``set_state()``: a JSON-serialisable position (epoch, shard order position, open shards and their
  byte offsets, the buffer as *references* (shard, byte offset, key: ~30 bytes per buffered sample), the generator
  state, counters). Restoring re-reads the buffered samples by offset, so the resumed stream is exactly the
  uninterrupted one;
- robustness: an unreadable or truncated shard, a sample with no image or no caption, a zero-byte image are skipped
  and counted (``stats``), never fatal. Only a dataset with no readable sample at all is an error.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from planner.errors import ClipaError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
STATE_VERSION = 1
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's __key__ / extension split


# --- shard lists --------------------------------------------------------------------------------------------------
def is_url(path: str) -> bool:
    """An object-store (fsspec) URL such as ``gs://...``; ``file://`` and plain paths are local."""
    return "://" in str(path) and not str(path).startswith("file://")


def path_exists(path: str) -> bool:
    """Whether a local path or a bucket object exists."""
    if not is_url(path):
        return Path(path).exists()
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def list_shards(data: str) -> list[str]:
    """Shard paths/URLs for a data spec, sorted (brace patterns keep their own order)."""
    if not data:
        raise ClipaError("data", "no training data given")
    data = str(data)
    if data.startswith("file://"):
        data = data[len("file://"):]
    if "{" in data:
        from braceexpand import braceexpand

        urls = list(braceexpand(data))
        if not is_url(data):
            missing = [u for u in urls if not os.path.exists(u)]
            if len(missing) == len(urls):
                raise ClipaError("data", f"no shard of {data} exists")
        return urls
    if is_url(data):
        import fsspec

        fs, root = fsspec.core.url_to_fs(data)
        proto = data.split("://", 1)[0]
        if data.endswith(".tar"):
            return [data]
        try:
            found = sorted(fs.glob(root.rstrip("/") + "/*.tar"))
            if not found:
                found = sorted(fs.glob(root.rstrip("/") + "/train/*.tar"))
        except Exception as e:  # network / permission problems: say which path
            raise ClipaError("data", f"cannot list {data}: {e}") from None
        if not found:
            raise ClipaError("data", f"no .tar shards under {data}")
        return [f if "://" in f else f"{proto}://{f}" for f in found]
    p = Path(data)
    if p.is_dir():
        found = sorted(str(x) for x in p.glob("*.tar"))
        if not found and (p / "train").is_dir():
            found = sorted(str(x) for x in (p / "train").glob("*.tar"))
        if not found:
            raise ClipaError("data", f"no .tar shards in {data}")
        return found
    if any(c in data for c in "*?["):
        found = sorted(globlib.glob(data))
        if not found:
            raise ClipaError("data", f"no shards match {data}")
        return found
    if p.is_file():
        return [str(p)]
    raise ClipaError("data", f"not found: {data}")


def shards_fingerprint(urls: list[str]) -> str:
    """Identifies the shard list a saved state refers to (names only: cheap for bucket data)."""
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]


def split_shards(urls: list[str], rank: int, count: int) -> list[str]:
    """This reader's share: every ``count``-th shard starting at ``rank``."""
    if not 0 <= rank < count:
        raise ValueError(f"rank {rank} is not in 0..{count - 1}")
    return urls[rank::count]


def open_binary(url: str) -> BinaryIO:
    if is_url(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb", buffering=1 << 16)


# --- tar parsing --------------------------------------------------------------------------------------------------
class TarError(Exception):
    """The shard is corrupt or truncated at some offset."""


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    field = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(field, 8) if field else 0
    except ValueError:
        raise TarError(f"not a tar header (numeric field {field[:12]!r})") from None


def _pax_path(data: bytes) -> str | None:
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        rec = data[sp + 1 : pos + length - 1]
        k, _, v = rec.partition(b"=")
        if k == b"path":
            return v.decode("utf-8", "replace")
        pos += length
    return None


def iter_tar(f: BinaryIO, offset: int = 0) -> Iterator[tuple[str, bytes, int, int, int]]:
    """Regular files of a tar from ``offset``: ``(name, data, header_offset, data_offset, next_header_offset)``.

    ``header_offset`` is where the member's headers start (including long-name/pax headers), so reading again from
    it yields the same member. Raises ``TarError`` on a bad checksum or truncation.
    """
    f.seek(offset)
    pos = offset
    long_name: str | None = None
    start = pos  # first header of the current member (extension headers included)
    while True:
        hdr = f.read(512)
        if not hdr:
            return  # end of file without end-of-archive blocks: accepted (some writers omit them)
        if len(hdr) < 512:
            raise TarError(f"truncated header at byte {pos}")
        if hdr.count(0) == 512:
            return  # end-of-archive marker
        stored = _octal(hdr[148:156])
        unsigned = sum(hdr[:148]) + 256 + sum(hdr[156:])
        if stored != unsigned:
            signed = sum(b - 256 if b > 127 else b for b in hdr[:148]) + 256 + sum(
                b - 256 if b > 127 else b for b in hdr[156:])
            if stored != signed:
                raise TarError(f"bad header checksum at byte {pos}")
        size = _octal(hdr[124:136])
        typ = hdr[156:157]
        data_off = pos + 512
        padded = (size + 511) & ~511
        if typ in (b"L", b"x", b"g"):
            ext = f.read(padded)
            if len(ext) < padded:
                raise TarError(f"truncated extended header at byte {pos}")
            if typ == b"L":
                long_name = ext[:size].split(b"\0", 1)[0].decode("utf-8", "replace")
            elif typ == b"x":
                long_name = _pax_path(ext[:size]) or long_name
            pos = data_off + padded
            continue
        if long_name is not None:
            name = long_name
        else:
            name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if hdr[257:262] == b"ustar":
                prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                if prefix:
                    name = prefix + "/" + name
        long_name = None
        nxt = data_off + padded
        if typ in (b"0", b"\0", b"7"):
            data = f.read(size)
            if len(data) < size:
                raise TarError(f"truncated data of {name} at byte {data_off}")
            if padded > size:
                f.read(padded - size)  # read rather than seek: cheaper on streamed bucket files
            yield name, data, start, data_off, nxt
        elif padded:
            f.seek(nxt)
        pos = nxt
        start = pos


def split_key(name: str) -> tuple[str, str] | None:
    m = _KEY_RE.match(name)
    if not m:
        return None
    return m.group(1), m.group(2).lower()


def iter_shard_samples(url: str, offset: int = 0, stats: dict[str, int] | None = None,
                       fileobj: BinaryIO | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one shard from a byte offset: dicts of ``{ext: bytes}`` plus ``__key__``, ``__offset__`` (where
    its first header starts: reading again from there yields this sample first) and ``__next__`` (where the next
    sample starts; None after the last one, whose end is ``__end__``).

    A corrupt or truncated shard ends early (counted in ``stats``); the sample cut by the damage is dropped.
    """
    f = fileobj
    try:
        if f is None:
            f = open_binary(url)
    except (OSError, ValueError) as e:
        _count(stats, "bad_shard")
        _note(stats, f"cannot open {url}: {e}")
        return
    cur: dict[str, Any] | None = None
    try:
        for name, data, hoff, doff, nxt in iter_tar(f, offset):
            kx = split_key(name)
            if kx is None:
                continue
            key, ext = kx
            if cur is not None and key != cur["__key__"]:
                cur["__next__"] = hoff
                yield cur
                cur = None
            if cur is None:
                cur = {"__key__": key, "__offset__": hoff}
            cur[ext] = data
            cur["__end__"] = nxt
        if cur is not None:
            cur["__next__"] = None
            yield cur
    except TarError as e:
        _count(stats, "bad_shard")
        _note(stats, f"{url}: {e}")
    except OSError as e:  # I/O errors mid-shard (network, disk): skip the rest of this shard
        _count(stats, "bad_shard")
        _note(stats, f"{url}: {e}")
    finally:
        if fileobj is None and f is not None:
            f.close()


def _count(stats: dict | None, name: str, n: int = 1) -> None:
    if stats is not None:
        stats[name] = stats.get(name, 0) + n


def _note(stats: dict | None, msg: str) -> None:
    # the last few problems, for the end-of-run report (counters say how many)
    if stats is not None:
        notes = stats.setdefault("_notes", [])
        notes.append(msg[:300])
        del notes[:-5]


def read_sample_at(url: str, offset: int, key: str, f: BinaryIO | None = None) -> dict[str, Any]:
    """The sample whose first header is at ``offset`` (used when restoring the shuffle buffer)."""
    sample = next(iter_shard_samples(url, offset, None, fileobj=f or open_binary(url)), None)
    if sample is None or sample["__key__"] != key:
        found = None if sample is None else sample["__key__"]
        raise ClipaError("data_state", f"{url} changed since the state was saved: expected sample {key!r} at byte "
                                       f"{offset}, found {found!r}")
    return sample


# --- the stream ---------------------------------------------------------------------------------------------------
class _Slot:
    """One open shard being read."""

    __slots__ = ("shard", "epoch", "offset", "it", "got")

    def __init__(self, shard: int, epoch: int, offset: int):
        self.shard, self.epoch, self.offset = shard, epoch, offset
        self.it: Iterator[dict[str, Any]] | None = None
        self.got = 0


class ShardStream:
    """Endless raw samples for one reader: seeded shard order per epoch, interleave, shuffle buffer, exact state.

    Each output is a dict ``{ext: bytes, "__key__", "__index__"}``; ``__index__`` counts this stream's outputs
    from 0 and is what per-sample randomness (crops, text reduction) is derived from.
    """

    def __init__(self, urls: list[str], seed: int | list[int], rank: int = 0, count: int = 1,
                 shuffle_buffer: int = 1000, cycle_length: int = 4):
        if not urls:
            raise ClipaError("data", "no shards")
        self.all_urls = list(urls)
        self.fingerprint = shards_fingerprint(self.all_urls)
        self.seed = [int(s) for s in (seed if isinstance(seed, (list, tuple)) else [seed])]
        self.rank, self.count = rank, count
        if len(urls) >= count:
            # shard-level split: this reader's shards, its own order each epoch
            self.shard_ids = list(range(rank, len(urls), count))
            self.sample_mod: tuple[int, int] | None = None
            self._order_salt = [rank]
        else:
            # too few shards: everyone reads everything in the same order and keeps every count-th sample
            self.shard_ids = list(range(len(urls)))
            self.sample_mod = (rank, count)
            self._order_salt = [0]
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.cycle_length = max(1, min(int(cycle_length), len(self.shard_ids)))
        self._reset()

    # --- state ---------------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.epoch = 0
        self.order_pos = 0
        self.slots: list[_Slot] = []
        self.rr = 0
        self.buffer: list[dict[str, Any]] = []
        self.rng = np.random.Generator(np.random.PCG64(self.seed + [self.rank, 0x5B0F]))
        self.n_out = 0
        self.n_seen = 0  # valid samples met in the interleaved stream (for the sample-level split)
        self.stats: dict[str, Any] = {}
        self._empty_run = 0

    def _order(self, epoch: int) -> list[int]:
        g = np.random.default_rng(self.seed + self._order_salt + [epoch, 0x0DE5])
        return [self.shard_ids[i] for i in g.permutation(len(self.shard_ids))]

    def get_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "rank": self.rank,
            "count": self.count,
            "epoch": self.epoch,
            "order_pos": self.order_pos,
            "slots": [[s.shard, s.epoch, s.offset] for s in self.slots],
            "rr": self.rr,
            # the buffer as (shard, byte offset, key): a few bytes per sample; restoring re-reads them
            "buffer": [[b["__shard__"], b["__offset__"], b["__key__"]] for b in self.buffer],
            "rng": _rng_state_to_json(self.rng),
            "n_out": self.n_out,
            "n_seen": self.n_seen,
            "stats": {k: v for k, v in self.stats.items() if not k.startswith("_")},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ClipaError("data_state", f"unsupported reader state version {state.get('version')}")
        if state.get("fingerprint") != self.fingerprint:
            raise ClipaError("data_state", "the saved reader state is for a different shard list")
        if (state.get("rank"), state.get("count")) != (self.rank, self.count):
            raise ClipaError(
                "data_state",
                f"the saved reader state is for reader {state.get('rank')} of {state.get('count')}, "
                f"not {self.rank} of {self.count}",
            )
        self.close()
        self._reset()
        self.epoch = int(state["epoch"])
        self.order_pos = int(state["order_pos"])
        self.slots = [_Slot(int(a), int(b), int(c)) for a, b, c in state["slots"]]
        self.rr = int(state["rr"])
        self.rng = _rng_from_json(state["rng"])
        self.n_out = int(state["n_out"])
        self.n_seen = int(state["n_seen"])
        self.stats = dict(state.get("stats", {}))
        self.buffer = self._reload_buffer(state["buffer"])

    def _reload_buffer(self, refs: list) -> list[dict[str, Any]]:
        by_shard: dict[int, list[int]] = {}
        for i, (shard, _offset, _key) in enumerate(refs):
            by_shard.setdefault(int(shard), []).append(i)
        out: list[dict[str, Any] | None] = [None] * len(refs)

        def load(shard: int) -> None:
            url = self.all_urls[shard]
            with open_binary(url) as f:
                for i in sorted(by_shard[shard], key=lambda i: refs[i][1]):  # in file order
                    _s, offset, key = refs[i]
                    sample = read_sample_at(url, int(offset), key, f)
                    for k in ("__next__", "__end__"):
                        sample.pop(k, None)
                    sample["__shard__"] = shard
                    out[i] = sample

        if len(by_shard) > 1 and any(is_url(self.all_urls[s]) for s in by_shard):
            with ThreadPoolExecutor(8) as ex:  # bucket reads: latency-bound
                list(ex.map(load, by_shard))
        else:
            for s in by_shard:
                load(s)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for s in self.slots:
            if s.it is not None:
                s.it.close()
                s.it = None

    # --- reading -------------------------------------------------------------------------------------------------
    def _open_next(self) -> _Slot:
        order = self._order(self.epoch)
        shard = order[self.order_pos]
        slot = _Slot(shard, self.epoch, 0)
        self.order_pos += 1
        if self.order_pos >= len(order):
            self.order_pos = 0
            self.epoch += 1
        return slot

    def _pull_valid(self) -> dict[str, Any]:
        """The next usable sample from the interleaved shards (before the sample-level split and the buffer)."""
        if not self.slots:
            self.slots = [self._open_next() for _ in range(self.cycle_length)]
            self.rr = 0
        while True:
            slot = self.slots[self.rr]
            if slot.it is None:
                slot.it = iter_shard_samples(self.all_urls[slot.shard], slot.offset, self.stats)
            sample = next(slot.it, None)
            if sample is None:
                # shard finished (or broken): the next shard in the order takes this slot; a whole cycle of shards
                # without one usable sample means there is nothing to read
                if slot.got == 0:
                    self._empty_run += 1
                    if self._empty_run > len(self.shard_ids) + self.cycle_length:
                        raise ClipaError("data", f"no readable samples in any of {len(self.shard_ids)} shard(s), "
                                                 f"e.g. {self.all_urls[self.shard_ids[0]]}")
                _count(self.stats, "shards_read")
                self.slots[self.rr] = self._open_next()
                continue
            slot.offset = sample["__next__"] if sample["__next__"] is not None else sample["__end__"]
            self.rr = (self.rr + 1) % len(self.slots)
            if not self._usable(sample):
                continue
            slot.got += 1
            self._empty_run = 0
            sample["__shard__"] = slot.shard
            return sample

    def _usable(self, sample: dict[str, Any]) -> bool:
        img = next((e for e in IMAGE_EXTS if e in sample), None)
        if img is None:
            _count(self.stats, "missing_image")
            return False
        if "txt" not in sample:
            _count(self.stats, "missing_caption")
            return False
        if not sample[img]:
            _count(self.stats, "empty_image")
            return False
        return True

    def _pull(self) -> dict[str, Any]:
        while True:
            sample = self._pull_valid()
            if self.sample_mod is None:
                break
            k = self.n_seen
            self.n_seen += 1
            if k % self.sample_mod[1] == self.sample_mod[0]:
                break
        for k in ("__next__", "__end__"):
            sample.pop(k, None)
        return sample

    def next(self) -> dict[str, Any]:
        while len(self.buffer) < self.shuffle_buffer:
            self.buffer.append(self._pull())
        j = int(self.rng.integers(len(self.buffer)))
        out = self.buffer[j]
        self.buffer[j] = self._pull()
        out = dict(out)
        out["__index__"] = self.n_out
        self.n_out += 1
        _count(self.stats, "samples")
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next()


def _rng_state_to_json(rng: np.random.Generator) -> dict:
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": str(st["state"]["state"]),
        "inc": str(st["state"]["inc"]),
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def _rng_from_json(d: dict) -> np.random.Generator:
    if d.get("bit_generator") != "PCG64":
        raise ClipaError("data_state", f"unsupported generator {d.get('bit_generator')}")
    bg = np.random.PCG64()
    bg.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(d["state"]), "inc": int(d["inc"])},
        "has_uint32": int(d["has_uint32"]),
        "uinteger": int(d["uinteger"]),
    }
    return np.random.Generator(bg)
