"""Batches for the trainer and the evaluators: the interface between the input side and the train loop.

``make_train_source(spec, stage_index, process_index, process_count)`` returns a ``TrainSource``:
``next_batch() -> {"images": uint8 [B_local, R, R, 3], "tokens": int32 [B_local, text_len]}`` with
``B_local = stage.batch_size // process_count``, ``R = stage.image_res``, captions reduced to ``stage.text_len`` by
``stage.text_reduction``; ``get_state()``/``set_state()`` (JSON-serialisable, exact resume); ``stats()``.

How determinism survives threads: the raw-sample stream (``reader.ShardStream``) is advanced only on the caller's
thread; each raw sample gets an index, and its crop and text-reduction randomness come from a generator seeded by
(seed, stage, host, index), so decode threads can finish in any order. Results are consumed in submission order.
The saved position is a stream snapshot plus the number of raw samples consumed since it, so samples that were read
ahead (prefetched) but not handed out are read again after a restore, not lost.

Option ``decode_cache_mb`` (off by default; ``CLIPA_DECODE_CACHE_MB`` sets it for runs that do not pass it): decode
each image once and crop it from memory in later epochs (``DecodeCache``), for the low-resolution stages of datasets
that fit in memory; the batches stay a function of the samples alone (same with or without hits, so resume and
determinism hold), but they are not the uncached path's pixel for pixel: every crop is resized from the one decode
scale that suits the smallest crop.

``make_eval_source(path, image_res, ...)`` reads an evaluation set once, in order (no shuffling, no crop): a folder
of class subfolders (ImageNet style), or shards whose json carries the class index (``label`` or ``cls``) or that
have a ``.cls`` member; images are resized directly to the eval resolution.
"""

from __future__ import annotations

import posixpath

import functools
import json
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import ClipaError
from trainer.data.images import BadImage, crop_from_base, decode_base, decode_eval, decode_train
from trainer.data.prompts import imagenet_classnames, load_classnames, load_templates, openai_templates
from trainer.data.reader import IMAGE_EXTS, ShardStream, is_url, list_shards, path_exists, split_shards
from trainer.data.text_reduction import reduce_one
from trainer.data.tokenizer import ClipTokenizer, find_tokenizer, load_tokenizer

STATE_VERSION = 1
DEFAULT_SHUFFLE_BUFFER = 2000
DEFAULT_CYCLE_LENGTH = 4


def default_decode_threads() -> int:
    """Decode threads per host: half the cores (the other half runs the step), at most 16; CLIPA_DECODE_THREADS wins."""
    env = os.environ.get("CLIPA_DECODE_THREADS")
    if env:
        return max(0, int(env))
    return max(1, min(16, (os.cpu_count() or 2) // 2))


_RNG = threading.local()


def sample_generator(key_base: int, index: int) -> np.random.Generator:
    """The generator of one sample: Philox keyed by ``(key_base, index)``, counter 0 (a counter-based generator, so
    independent streams per sample). Exactly ``Generator(Philox(key=[key_base, index]))``, but one Philox per thread
    is re-keyed instead of built anew: the constructor's argument handling costs ~11-19 us (several times that on a
    busy machine), re-keying ~3 us. The generator is valid until this thread's next call."""
    slot = getattr(_RNG, "slot", None)
    if slot is None:
        bg = np.random.Philox(key=[0, 0])
        slot = _RNG.slot = (bg, np.random.Generator(bg), np.zeros(4, np.uint64))
    bg, gen, zeros = slot
    key = np.array([_key0(key_base), index], np.uint64)
    bg.state = {"bit_generator": "Philox", "state": {"counter": zeros, "key": key},
                "buffer": zeros, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return gen


@functools.lru_cache(maxsize=64)
def _key0(key_base: int) -> int:
    # numpy turns the list [key_base, index] into an array first, through float64 when key_base >= 2**63 (so the low
    # bits are lost); taking the first key word from a real construction keeps the streams identical to before
    with np.errstate(all="ignore"):  # (key_base near 2**64 rounds past it: numpy's cast warns, we match its result)
        return int(np.random.Philox(key=[key_base, 0]).state["state"]["key"][0])


def decode_caption(raw: bytes, events: dict[str, int]) -> str | None:
    """UTF-8 caption; other encodings are read as cp1252/latin-1 (counted), empty ones rejected (counted)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        events["caption_not_utf8"] = events.get("caption_not_utf8", 0) + 1
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    text = text.replace("\x00", " ").strip()
    if not text:
        events["empty_caption"] = events.get("empty_caption", 0) + 1
        return None
    return text


def _known_tags(sample: dict[str, Any], text: str) -> list[tuple[str, str]] | None:
    """Part-of-speech tags the dataset ships (synth does), if they match the caption's words; else None."""
    raw = sample.get("json")
    if not raw or b'"pos"' not in raw:
        return None
    try:
        pos = json.loads(raw).get("pos")
    except (ValueError, AttributeError):
        return None
    if not isinstance(pos, list):
        return None
    from trainer.data.postag import split_words

    try:
        tagged = [(str(w), str(t)) for w, t in pos]
    except (TypeError, ValueError):
        return None
    return tagged if [w for w, _ in tagged] == split_words(text) else None


def image_bytes(sample: dict[str, Any]) -> bytes | None:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    return None


class DecodeCache:
    """Decode once, crop every epoch: each sample's image decoded at ``images.base_scale`` (the one DCT scale every
    crop at the stage resolution can use), kept as uint8 RGB, keyed by its place in the shards (shard, byte offset).

    The batches depend only on the samples and their generators, never on what is cached: a miss decodes the same
    base image a hit finds, so resume and determinism are as without the cache (a restored run starts with an empty
    cache that fills again). Images are added until ``max_bytes`` is reached, then no more (no eviction: with
    shuffled reads an evicting cache would mostly miss). Meant for the low-resolution stages on datasets that fit in
    memory (at 64 px a 256 px JPEG takes 48 KB; at 112-224 px 192 KB: the whole decoded image). Shared by the decode
    threads; a race decodes an image twice, harmlessly, and the hit/miss counters are approximate with threads.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._items: dict[tuple[int, int], tuple[np.ndarray, int, int]] = {}
        self.hits = 0
        self.misses = 0
        self.full = False

    def get(self, sample: dict[str, Any], res: int, events: dict[str, int]) -> tuple[np.ndarray, int, int]:
        key = (sample["__shard__"], sample["__offset__"])
        got = self._items.get(key)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        data = image_bytes(sample)
        if data is None or not data:
            raise BadImage("zero-byte image")
        got = decode_base(data, res, events)
        if self.bytes + got[0].nbytes <= self.max_bytes:
            self._items[key] = got
            self.bytes += got[0].nbytes
        else:
            self.full = True
        return got

    def stats(self) -> dict[str, Any]:
        return {"decode_cache_hits": self.hits, "decode_cache_misses": self.misses,
                "decode_cache_images": len(self._items), "decode_cache_mb": round(self.bytes / 2**20, 1),
                "decode_cache_full": self.full}


class TrainSource:
    """Shuffled, augmented, tokenized training batches for one host; see the module docstring."""

    def __init__(
        self,
        urls: list[str],
        tokenizer: ClipTokenizer,
        batch_size: int,
        image_res: int,
        text_len: int,
        text_reduction: str = "truncate",
        seed: int | list[int] = 0,
        process_index: int = 0,
        process_count: int = 1,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        cycle_length: int = DEFAULT_CYCLE_LENGTH,
        decode_threads: int | None = None,
        prefetch_batches: int = 2,
        fast_decode: bool = True,
        decode_cache_mb: int | None = None,
    ):
        if batch_size <= 0:
            raise ClipaError("batch_size", "must be positive")
        self.batch_size = batch_size
        self.image_res = image_res
        self.text_len = text_len
        self.text_reduction = getattr(text_reduction, "value", text_reduction)
        self.tokenizer = tokenizer
        self.seed = [int(s) for s in (seed if isinstance(seed, (list, tuple)) else [seed])]
        self.process_index = process_index
        self.fast_decode = fast_decode
        self.stream = ShardStream(urls, self.seed, process_index, process_count, shuffle_buffer, cycle_length)
        seq = np.random.SeedSequence(self.seed + [process_index, 0xA11])
        self._key_base = int(seq.generate_state(1, np.uint64)[0])
        self.decode_threads = default_decode_threads() if decode_threads is None else decode_threads
        self._pool = ThreadPoolExecutor(self.decode_threads, "clipa-decode") if self.decode_threads > 0 else None
        self.prefetch = max(1, prefetch_batches) * batch_size
        if decode_cache_mb is None:
            decode_cache_mb = int(os.environ.get("CLIPA_DECODE_CACHE_MB") or 0)
        self.decode_cache_mb = max(0, int(decode_cache_mb))
        self._cache = DecodeCache(self.decode_cache_mb << 20) if self.decode_cache_mb else None
        self._init_pipeline(self.stream.get_state(), 0, {})

    # --- pipeline bookkeeping --------------------------------------------------------------------------------------
    def _init_pipeline(self, snapshot: dict, skip: int, decode_stats: dict[str, int]) -> None:
        self._pending: deque[tuple[Future | tuple, int, int]] = deque()
        self._snaps: dict[int, dict] = {0: snapshot}
        self._snap_id = 0
        self._since = skip  # raw samples pulled since snapshot _snap_id
        self._consumed = (0, skip)
        self._decode_stats: dict[str, int] = dict(decode_stats)

    def _submit(self) -> None:
        if self._since >= self.batch_size:  # a fresh snapshot every batch-worth of raw samples
            self._snap_id += 1
            self._snaps[self._snap_id] = self.stream.get_state()
            self._since = 0
        sample = self.stream.next()
        tag = (self._snap_id, self._since)
        self._since += 1
        if self._pool is None:
            self._pending.append((self._work(sample), *tag))
        else:
            self._pending.append((self._pool.submit(self._work, sample), *tag))

    def _fill(self, need: int = 0) -> None:
        # with decode threads, keep `prefetch` samples in flight; decoding in the caller's thread gains nothing from
        # running ahead, so then only what the current batch needs is read
        target = max(need, self.prefetch if self._pool is not None else 0)
        while len(self._pending) < target:
            self._submit()

    def _work(self, sample: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, int]]:
        events: dict[str, int] = {}
        # a counter-based generator keyed by (run, host) and the sample's index: independent streams per sample
        # (re-keyed per thread, not constructed: this runs once per image)
        rng = sample_generator(self._key_base, sample["__index__"])
        text = decode_caption(sample["txt"], events)
        if text is None:
            return None, None, events
        try:
            if self._cache is None:
                img = decode_train(image_bytes(sample), self.image_res, rng, events, fast=self.fast_decode)
            else:
                img = crop_from_base(self._cache.get(sample, self.image_res, events), self.image_res, rng)
        except BadImage:
            events["bad_image"] = events.get("bad_image", 0) + 1
            return None, None, events
        tagged = _known_tags(sample, text) if self.text_reduction == "syntax" else None
        try:
            tokens = reduce_one(text, self.tokenizer, self.text_len, self.text_reduction, rng, tagged)
        except Exception as e:  # a caption the tokenizer or tagger chokes on: skip it, like a bad image
            if isinstance(e, ClipaError):
                raise
            events["bad_caption"] = events.get("bad_caption", 0) + 1
            return None, None, events
        return img, tokens, events

    # --- the interface -----------------------------------------------------------------------------------------------
    def next_batch(self) -> dict[str, np.ndarray]:
        images = np.empty((self.batch_size, self.image_res, self.image_res, 3), np.uint8)
        tokens = np.empty((self.batch_size, self.text_len), np.int32)
        n = 0
        while n < self.batch_size:
            self._fill(self.batch_size - n)
            fut, sid, k = self._pending.popleft()
            img, tok, events = fut.result() if isinstance(fut, Future) else fut
            for name, v in events.items():
                if name != "draft_decodes":
                    self._decode_stats[name] = self._decode_stats.get(name, 0) + v
            self._consumed = (sid, k + 1)
            if img is None:
                continue
            images[n] = img
            tokens[n] = tok
            n += 1
        self._decode_stats["batches"] = self._decode_stats.get("batches", 0) + 1
        self._decode_stats["samples_out"] = self._decode_stats.get("samples_out", 0) + n
        for old in [s for s in self._snaps if s < self._consumed[0]]:
            del self._snaps[old]
        self._fill()  # decode the next batch while the caller trains on this one
        return {"images": images, "tokens": tokens}

    def get_state(self) -> dict[str, Any]:
        sid, skip = self._consumed
        return {
            "version": STATE_VERSION,
            "stream": self._snaps[sid],
            "skip": skip,
            "decode_stats": dict(self._decode_stats),
            "config": self._config(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ClipaError("data_state", "not a saved input-pipeline state (or an unsupported version)")
        if state.get("config") != self._config():
            raise ClipaError("data_state", f"the saved input state was made for {state.get('config')}, "
                                           f"not {self._config()}")
        self._drain()
        self.stream.set_state(state["stream"])
        # replay the raw samples consumed after the snapshot (reading only; they are not decoded again)
        for _ in range(int(state["skip"])):
            self.stream.next()
        self._init_pipeline(state["stream"], int(state["skip"]), state.get("decode_stats", {}))

    def stats(self) -> dict[str, Any]:
        """Counters: samples read, skipped and converted, by reason (stream counts include read-ahead)."""
        out: dict[str, Any] = {k: v for k, v in self.stream.stats.items() if not k.startswith("_")}
        for k, v in self._decode_stats.items():
            out[k] = out.get(k, 0) + v
        if self._cache is not None:
            out.update(self._cache.stats())
        notes = self.stream.stats.get("_notes")
        if notes:
            out["last_problems"] = list(notes)
        return out

    def close(self) -> None:
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.stream.close()

    def __enter__(self) -> TrainSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drain(self) -> None:
        for fut, _, _ in self._pending:
            if isinstance(fut, Future):
                fut.cancel()
        for fut, _, _ in self._pending:
            if isinstance(fut, Future) and not fut.cancelled():
                fut.exception()  # wait; errors are irrelevant, the samples are dropped
        self._pending.clear()

    def _config(self) -> dict[str, Any]:
        out = {"batch_size": self.batch_size, "image_res": self.image_res, "text_len": self.text_len,
               "text_reduction": self.text_reduction, "seed": self.seed}
        if self._cache is not None:  # (absent when off, so states saved before the cache existed still load)
            out["decode_cache"] = True  # the cached path crops from one fixed decode scale: other pixels
        return out


def make_train_source(spec, stage_index: int, process_index: int = 0, process_count: int = 1,
                      **options: Any) -> TrainSource:
    """The training source for one stage of a run spec, for host ``process_index`` of ``process_count``.

    Options (keyword): shuffle_buffer, cycle_length, decode_threads, prefetch_batches, fast_decode,
    decode_cache_mb (0: off; default: ``CLIPA_DECODE_CACHE_MB`` or 0; see ``DecodeCache``).
    """
    if not 0 <= stage_index < len(spec.stages):
        raise ClipaError("stage", f"stage {stage_index} does not exist (the spec has {len(spec.stages)})")
    if not 0 <= process_index < process_count:
        raise ClipaError("process_index", f"{process_index} is not in 0..{process_count - 1}")
    stage = spec.stages[stage_index]
    if stage.batch_size % process_count:
        raise ClipaError(f"stages[{stage_index}].batch_size",
                         f"{stage.batch_size} is not divisible by the {process_count} hosts")
    if not spec.data:
        raise ClipaError("data", "the spec names no training data (set 'data' to a shard folder, pattern or URL)")
    urls = list_shards(spec.data)
    tokenizer = load_tokenizer(find_tokenizer(spec.tokenizer, spec.data))
    return TrainSource(
        urls,
        tokenizer,
        batch_size=stage.batch_size // process_count,
        image_res=stage.image_res,
        text_len=stage.text_len,
        text_reduction=stage.text_reduction,
        seed=[spec.seed, stage_index],
        process_index=process_index,
        process_count=process_count,
        **options,
    )


# --- evaluation sources -------------------------------------------------------------------------------------------
_IMG_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"}


def _sample_label(sample: dict[str, Any]) -> int | None:
    if "cls" in sample:
        try:
            return int(sample["cls"].decode().strip())
        except ValueError:
            return None
    raw = sample.get("json")
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            return None
        for k in ("label", "cls", "class_index", "target"):
            if isinstance(meta.get(k), int):
                return int(meta[k])
    return None


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else str(Path(folder) / name)


class EvalSource:
    """An evaluation set, read in order once per iteration: batches of ``{"images", "labels", "texts"}``.

    ``labels`` is -1 where a sample has no class label; ``texts`` is its caption ("" if none).
    ``classnames``/``templates`` are those found beside the data (``classes.txt``, ``templates.txt``), the ImageNet
    ones for a 1000-class folder of WordNet ids, or None; ``attributes`` names the words of a class name
    (``attributes.txt``), or None. Problems are counted in ``stats()``.
    """

    def __init__(self, path: str, image_res: int, batch_size: int = 256, limit: int | None = None,
                 process_index: int = 0, process_count: int = 1, decode_threads: int | None = None):
        self.path = str(path)
        self.image_res = image_res
        self.batch_size = batch_size
        self.limit = limit
        self.process_index, self.process_count = process_index, process_count
        self.decode_threads = default_decode_threads() if decode_threads is None else decode_threads
        self._stats: dict[str, Any] = {}
        self.classnames: list[str] | None = None
        self.templates: list[str] | None = None
        # what each word of a class name is ("colour", "shape"), from ``attributes.txt`` beside the data: the
        # evaluation then scores each word on its own too (trainer.data.zeroshot.attribute_accuracy)
        self.attributes: list[str] | None = None
        self._files: list[tuple[str, int]] | None = None
        self._shards: list[str] | None = None
        self.layout = "shards"  # or "folders" (trainer.data.imagenet: the layouts and their rules)
        self.imagenet = False  # class names are ImageNet-1k's
        p = Path(self.path)
        if p.is_dir() and not any(p.glob("*.tar")) and (p / "eval").is_dir():
            p = p / "eval"  # a synth dataset root
            self.path = str(p)
        if p.is_dir() and not any(p.glob("*.tar")):
            self._init_folder(p)
        else:
            shards = list_shards(self.path)
            # hosts evaluate disjoint shards; with fewer shards than hosts every host evaluates all of them
            self._shards = split_shards(shards, process_index, process_count) if len(shards) >= process_count \
                else shards
            if is_url(self.path):
                # a bucket folder of shards (or a shard / brace / glob pattern in one): its metadata sits beside
                is_folder = not (self.path.endswith(".tar") or any(ch in self.path for ch in "{*?["))
                folder = self.path.rstrip("/") if is_folder else posixpath.dirname(self.path)
                self._find_metadata(folder)
            else:
                self._find_metadata(str(p if p.is_dir() else p.parent))
            if self.classnames is None:  # shards with 'cls' and no classes.txt: ImageNet-1k indices
                from trainer.data.prompts import imagenet_classnames, openai_templates

                self.classnames, self.imagenet = imagenet_classnames(), True
                self.templates = self.templates or openai_templates()

    @property
    def has_captions(self) -> bool:
        """Whether the set has captions (shards with ``.txt``), so image-text retrieval can be measured."""
        if not self._shards:
            return False
        from trainer.data.reader import iter_shard_samples

        first = next(iter_shard_samples(self._shards[0], 0, None), None)
        return bool(first and first.get("txt", b"").strip())

    def labelled_size(self) -> int:
        """How many labelled images the set holds (this process's share), counted without decoding any
        (``trainer.data.profile`` records it as the evaluation size)."""
        if self._files is not None:
            return len(self._files)
        from trainer.data.reader import iter_shard_samples

        return sum(1 for url in self._shards or [] for s in iter_shard_samples(url, 0, None)
                   if image_bytes(s) is not None and _sample_label(s) is not None)

    def _find_metadata(self, folder: str) -> None:
        """``classes.txt`` / ``templates.txt`` in ``folder`` or its parent (local paths or bucket URLs)."""
        parent = posixpath.dirname(folder.rstrip("/")) if is_url(folder) else str(Path(folder).parent)
        for d in (folder, parent):
            if self.classnames is None and path_exists(_join(d, "classes.txt")):
                self.classnames = load_classnames(_join(d, "classes.txt"))
            if self.templates is None and path_exists(_join(d, "templates.txt")):
                self.templates = load_templates(_join(d, "templates.txt"))
            if self.attributes is None and path_exists(_join(d, "attributes.txt")):
                self.attributes = load_classnames(_join(d, "attributes.txt"))

    def _init_folder(self, root: Path) -> None:
        from trainer.data.imagenet import check_class_folders

        self.layout = "folders"
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        wnids = check_class_folders(root, classes)
        files = []
        for i, c in enumerate(classes):
            for f in sorted((root / c).iterdir()):
                if f.suffix.lower() in _IMG_SUFFIXES:
                    files.append((str(f), i))
        self._files = files[self.process_index :: self.process_count]
        self._find_metadata(str(root))
        if self.classnames is None:
            if wnids:
                # ImageNet's folders are WordNet ids; their sorted order is the standard class index order
                self.classnames, self.imagenet = imagenet_classnames(), True
                self.templates = self.templates or openai_templates()
            else:
                self.classnames = [c.replace("_", " ") for c in classes]

    def _items(self) -> Iterator[tuple[bytes | None, int, str]]:
        n = 0
        if self._files is not None:
            for path, label in self._files:
                if self.limit is not None and n >= self.limit:
                    return
                try:
                    data = Path(path).read_bytes()
                except OSError:
                    self._bump("unreadable_file")
                    continue
                n += 1
                yield data, label, ""
            return
        from trainer.data.reader import iter_shard_samples

        for url in self._shards or []:
            for sample in iter_shard_samples(url, 0, self._stats):
                if self.limit is not None and n >= self.limit:
                    return
                data = image_bytes(sample)
                if data is None:
                    self._bump("missing_image")
                    continue
                text = decode_caption(sample["txt"], self._stats) if "txt" in sample else None
                n += 1
                yield data, _sample_label(sample), text or ""

    def _bump(self, name: str) -> None:
        self._stats[name] = self._stats.get(name, 0) + 1

    def _decode(self, data: bytes) -> tuple[np.ndarray | None, dict[str, int]]:
        events: dict[str, int] = {}
        try:
            return decode_eval(data, self.image_res, events), events
        except BadImage:
            events["bad_image"] = 1
            return None, events

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pool = ThreadPoolExecutor(self.decode_threads) if self.decode_threads > 0 else None
        try:
            buf: list[tuple[Any, int, str]] = []
            for data, label, text in self._items():
                job = pool.submit(self._decode, data) if pool else self._decode(data)
                buf.append((job, -1 if label is None else label, text))
                if len(buf) >= self.batch_size:
                    batch = self._collect(buf)
                    buf = []
                    if batch is not None:
                        yield batch
            if buf:
                batch = self._collect(buf)
                if batch is not None:
                    yield batch
        finally:
            if pool:
                pool.shutdown(wait=True)

    def _collect(self, buf: list) -> dict[str, Any] | None:
        imgs, labels, texts = [], [], []
        for job, label, text in buf:
            img, events = job.result() if isinstance(job, Future) else job
            for k, v in events.items():
                if k != "draft_decodes":
                    self._stats[k] = self._stats.get(k, 0) + v
            if img is None:
                continue
            imgs.append(img)
            labels.append(label)
            texts.append(text)
        self._stats["samples"] = self._stats.get("samples", 0) + len(imgs)
        if not imgs:
            return None
        return {"images": np.stack(imgs), "labels": np.asarray(labels, np.int64), "texts": texts}

    def stats(self) -> dict[str, Any]:
        return {k: v for k, v in self._stats.items() if not k.startswith("_")}


def make_eval_source(path: str, image_res: int, batch_size: int = 256, limit: int | None = None,
                     process_index: int = 0, process_count: int = 1, decode_threads: int | None = None) -> EvalSource:
    return EvalSource(path, image_res, batch_size, limit, process_index, process_count, decode_threads)
