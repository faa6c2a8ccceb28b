"""Input-pipeline throughput: our reader vs a plain decode-then-resize baseline, images/s per core.

Writes generated shards of 256 px JPEGs (the synth scenes, drawn at 256), then for each output resolution (224, 112,
64) measures, single-threaded (so the number is per core):
- ``ours_reader`` vs ``plain_reader``: shards -> uint8 images at the output size, no text (the headline comparison);
- ``ours``: the full training source (tar parsing, shuffle buffer, caption decode + tokenization, random-resized
  crop with the reduced-size decode fast path) with decode in the calling thread;
- ``ours_decode``: only our decode + crop + resize on in-memory JPEG bytes;
- ``plain``: the baseline most loaders use, on the same shards: ``tarfile`` iteration, ``PIL.Image.open().convert(
  "RGB")`` (full-size decode), crop, one bilinear resize (no draft, no reducing gap), plus the same tokenization;
- ``plain_decode``: only the baseline's decode + crop + resize on in-memory bytes;
- ``ours_2threads``: the full source with 2 decode threads (total images/s on this machine's 2 cores, wall clock),
  next to ``ours_wall`` (one thread, wall clock) and ``ours_2threads_cpu`` (2 threads, per CPU-second);
- ``cached_first`` / ``cached``: the full source with the decode cache (``decode_cache_mb``): its first epoch, and a
  later window once the images are cached (``cached_hits``: the share of that window served from the cache).
Each number is the median of ``--repeats`` interleaved runs; ``*_paired`` speed-ups are the median of the per-repeat
ratios. Results go to ``benchmarks/input_pipeline.md`` (and --json).

    .venv/bin/python benchmarks/input_pipeline.py [--images 600] [--repeats 5] [--res 224,112,64]
        [--out benchmarks/input_pipeline.md] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

# Single-threaded variants are timed in process CPU seconds: "images per second per core" that other jobs on
# the same cores cannot distort (wall time on a shared 2-core machine swings by 2x). The 2-thread variant is wall time.
CLOCK = time.process_time

import numpy as np


def write_shards(folder: Path, n: int, per_shard: int = 200) -> list[str]:
    from trainer.data.synth import draw_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, n, per_shard)):
        path = folder / f"bench-{s:04d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(n, start + per_shard)):
                img, caption, _ = draw_sample(0, "train", i, 256)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                for ext, data in (("jpg", buf.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def run_ours(urls, tok, res, n, threads) -> tuple[float, float]:
    """The full training source: ``(images per CPU-second of the process, images per wall-second)``."""
    from trainer.data.pipeline import TrainSource

    batch = 50
    c0, w0 = CLOCK(), time.perf_counter()
    with TrainSource(urls, tok, batch, res, 32, "truncate", seed=0, shuffle_buffer=100, decode_threads=threads,
                     prefetch_batches=2) as src:
        for _ in range(n // batch):
            src.next_batch()
    done = (n // batch) * batch
    return done / (CLOCK() - c0), done / (time.perf_counter() - w0)


def run_ours_cached(urls, tok, res, n) -> tuple[float, float, float]:
    """The full source with the decode cache: ``(first-epoch rate, cached rate, cache-hit share of the cached
    window)``, per CPU-second. The first ``n`` outputs are timed (all misses but the few samples seen twice), then
    ``n`` more fill the cache (untimed), then ``n`` are timed again."""
    from trainer.data.pipeline import TrainSource

    batch = 50
    k = n // batch
    with TrainSource(urls, tok, batch, res, 32, "truncate", seed=0, shuffle_buffer=100, decode_threads=0,
                     prefetch_batches=2, decode_cache_mb=4096) as src:
        t0 = CLOCK()
        for _ in range(k):
            src.next_batch()
        first = k * batch / (CLOCK() - t0)
        for _ in range(k):
            src.next_batch()
        h0, m0 = src._cache.hits, src._cache.misses
        t0 = CLOCK()
        for _ in range(k):
            src.next_batch()
        cached = k * batch / (CLOCK() - t0)
        hits = (src._cache.hits - h0) / max(1, src._cache.hits - h0 + src._cache.misses - m0)
    return first, cached, hits


def plain_tokenize(tok, text: str, n: int) -> np.ndarray:
    """What a plain loader does: the ``tokenizers`` library's encode per caption, truncated into [SOT] ... [EOT]
    (our ``ClipTokenizer.encode`` adds a word cache on top; the baseline keeps the library call)."""
    ids = tok._tok.encode(text, add_special_tokens=False).ids[: n - 2]
    row = np.zeros(n, np.int32)
    row[0] = tok.sot_id
    row[1 : 1 + len(ids)] = ids
    row[1 + len(ids)] = tok.eot_id
    return row


def run_plain(urls, tok, res, n) -> float:
    """``tok=None``: images only."""
    from trainer.data.images import decode_plain

    rng = np.random.default_rng(0)
    done = 0
    t0 = CLOCK()
    while done < n:
        for url in urls:
            with tarfile.open(url) as tar:
                pending = {}
                for m in tar:
                    key, ext = m.name.split(".", 1)
                    pending.setdefault(key, {})[ext] = tar.extractfile(m).read()
                    if len(pending[key]) == 2:
                        s = pending.pop(key)
                        decode_plain(s["jpg"], res, rng)
                        if tok is not None:
                            plain_tokenize(tok, s["txt"].decode(), 32)
                        done += 1
                        if done >= n:
                            return n / (CLOCK() - t0)
    return n / (CLOCK() - t0)


def run_ours_reader(urls, res, n) -> float:
    """Our reader without the text side: shard stream (tar parsing, shuffle buffer) + per-sample seeded crop decode."""
    from trainer.data.images import decode_train
    from trainer.data.pipeline import sample_generator
    from trainer.data.reader import ShardStream

    stream = ShardStream(urls, seed=0, shuffle_buffer=100)
    t0 = CLOCK()
    for _ in range(n):
        sample = stream.next()
        decode_train(sample["jpg"], res, sample_generator(12345, sample["__index__"]))  # as TrainSource does
    rate = n / (CLOCK() - t0)
    stream.close()
    return rate


def run_decode_only(blobs, res, fast: bool) -> float:
    from trainer.data.images import decode_plain, decode_train

    rng = np.random.default_rng(0)
    t0 = CLOCK()
    for b in blobs:
        if fast:
            decode_train(b, res, rng)
        else:
            decode_plain(b, res, rng)
    return len(blobs) / (CLOCK() - t0)


def jpeg_scale_costs(blobs, repeats: int) -> dict[str, float]:
    """Microseconds (CPU) to decode one source JPEG at full size and with libjpeg's 1/2 and 1/4 DCT scaling, with
    Pillow's decoder and with libjpeg-turbo through simplejpeg (what our reader uses; identical pixels): the part that
    does not shrink with the scale (entropy decoding) bounds what a reduced-size decode can gain."""
    from PIL import Image

    try:
        import simplejpeg
    except ImportError:  # pragma: no cover
        simplejpeg = None

    def pil(b, scale):
        im = Image.open(io.BytesIO(b))
        if scale > 1:
            im.draft("RGB", (im.size[0] // scale, im.size[1] // scale))
        im.load()

    def turbo(b, scale):
        simplejpeg.decode_jpeg(b, "RGBX", min_height=256 // scale if scale > 1 else 0,
                               min_width=256 // scale if scale > 1 else 0)

    variants = [(f"{name}", pil, scale) for name, scale in (("full", 1), ("half", 2), ("quarter", 4))]
    if simplejpeg is not None:
        variants += [(f"turbo_{name}", turbo, scale) for name, scale in (("full", 1), ("half", 2), ("quarter", 4))]
    runs: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(repeats):  # interleaved, like the throughput runs
        for name, fn, scale in variants:
            t0 = CLOCK()
            for b in blobs:
                fn(b, scale)
            runs[name].append((CLOCK() - t0) / len(blobs) * 1e6)
    return {name: round(statistics.median(r), 1) for name, r in runs.items()}


def machine() -> dict:
    from PIL import __version__ as pil_version
    from PIL import features

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pillow": pil_version,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "numpy": np.__version__,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--res", default="224,112,64", help="output resolutions, comma-separated")
    args = ap.parse_args()

    from trainer.data.tokenizer import train_tokenizer

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), args.images)
        with tarfile.open(urls[0]) as tar:
            blobs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")][:200]
        captions = []
        for url in urls[:1]:
            with tarfile.open(url) as tar:
                captions = [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
        tok = train_tokenizer(captions, vocab_size=1024)
        rows = []
        for res in [int(x) for x in args.res.split(",")]:
            row: dict = {"res": res}
            variants = {
                "ours_reader": lambda: run_ours_reader(urls, res, args.images),
                "plain_reader": lambda: run_plain(urls, None, res, args.images),
                "ours": lambda: run_ours(urls, tok, res, args.images, 0),  # (CPU rate, wall rate)
                "plain": lambda: run_plain(urls, tok, res, args.images),
                "ours_decode": lambda: run_decode_only(blobs, res, True),
                "plain_decode": lambda: run_decode_only(blobs, res, False),
                "ours_2threads": lambda: run_ours(urls, tok, res, args.images, 2),
                "cached": lambda: run_ours_cached(urls, tok, res, args.images),
            }
            for fn in variants.values():
                fn()  # warm-up (file cache, lazy imports)
            runs: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
                for name, fn in variants.items():
                    runs[name].append(fn())
            # the full source was timed on both clocks: per CPU-second (per core) and per wall-second
            one, two = runs.pop("ours"), runs.pop("ours_2threads")
            runs["ours"] = [r[0] for r in one]
            runs["ours_wall"] = [r[1] for r in one]
            runs["ours_2threads"] = [r[1] for r in two]  # wall: total on the machine, as before
            runs["ours_2threads_cpu"] = [r[0] for r in two]
            cached = runs.pop("cached")
            runs["cached_first"] = [r[0] for r in cached]
            runs["cached"] = [r[1] for r in cached]
            runs["cached_hits"] = [r[2] for r in cached]
            for name, rs in runs.items():
                row[name] = round(statistics.median(rs), 3 if name == "cached_hits" else 1)
                row[name + "_runs"] = [round(r, 3 if name == "cached_hits" else 1) for r in rs]
            # median of the per-repeat ratios (each pair ran back to back): less exposed to load swings
            for key, a, b in (("reader_speedup_paired", "ours_reader", "plain_reader"), ("speedup_paired", "ours",
                                                                                          "plain")):
                row[key] = round(statistics.median(x / y for x, y in zip(runs[a], runs[b])), 2)
            row["reader_speedup"] = round(row["ours_reader"] / row["plain_reader"], 2)
            row["speedup"] = round(row["ours"] / row["plain"], 2)
            row["decode_speedup"] = round(row["ours_decode"] / row["plain_decode"], 2)
            row["cached_speedup"] = round(row["cached"] / row["plain"], 2)
            row["cached_speedup_paired"] = round(statistics.median(x / y for x, y in zip(runs["cached"],
                                                                                         runs["plain"])), 2)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_runs")}), flush=True)
        scales = jpeg_scale_costs(blobs, args.repeats)
        print(json.dumps({"jpeg_decode_us": scales}), flush=True)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result = {"machine": info, "images": args.images, "repeats": args.repeats, "source_px": 256, "rows": rows,
              "jpeg_decode_us": scales, "jpeg_bytes": round(statistics.mean(len(b) for b in blobs))}
    if args.json:
        print(json.dumps(result, indent=2))
    Path(args.out).write_text(render(result))


BEFORE = ("Before the changes of 2026-11-28 (same script, machine and shards, code at commit a02a0ae): this file's "
          "previous version (busier machine) had reader speed-ups 0.99x / 1.14x / 1.46x and full source 0.79x / "
          "1.01x / 1.32x at 224 / 112 / 64 px; a re-run at 17:29 UTC that day, under lighter load, 1.01x / 1.09x / "
          "1.78x and 1.06x / 1.15x / 1.44x (full source 587 / 899 / 1075 images per core-second against plain 553 / "
          "779 / 748).")


def render(r: dict) -> str:
    m = r["machine"]
    j = r["jpeg_decode_us"]
    lines = [
        "# Input pipeline throughput",
        "",
        "Generated by `benchmarks/input_pipeline.py` (do not edit by hand). Source: "
        f"{r['images']} generated {r['source_px']} px JPEGs (quality 90) in tar shards; output: random-resized crop "
        "(area 0.4-1) to the resolution below, plus caption tokenization to 32 tokens. Images per second, "
        f"**single thread, per CPU-second of the process** (= per core, and much less distorted by other jobs than "
        f"wall time) unless noted; median of {r['repeats']} interleaved runs after a warm-up; *paired* = median of "
        "the per-repeat ratios (each pair ran back to back).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Pillow {m['pillow']} "
        f"(libjpeg-turbo: {m['libjpeg_turbo']}), numpy {m['numpy']}. Load average before/after: "
        f"{m['load_average_before']} / {m['load_average_after']} (other work shares these cores: wall-clock numbers "
        "are noisy, and even CPU time per image swings by up to 2x with the neighbours' load, which is why ours and "
        "the baseline run interleaved and only ratios should be compared across runs).",
        "",
        "| output px | ours: reader | plain: reader | **reader speed-up** (paired) | ours: full source | "
        "plain + tokenize | **full speed-up** (paired) | ours: decode only | plain: decode only | decode speed-up | "
        "decode cache: first epoch | **decode cache: cached epochs** (hits) | cached vs plain (paired) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['res']} | {row['ours_reader']:.0f} | {row['plain_reader']:.0f} | "
            f"**{row['reader_speedup']:.2f}x** ({row['reader_speedup_paired']:.2f}x) | "
            f"{row['ours']:.0f} | {row['plain']:.0f} | **{row['speedup']:.2f}x** ({row['speedup_paired']:.2f}x) | "
            f"{row['ours_decode']:.0f} | {row['plain_decode']:.0f} | {row['decode_speedup']:.2f}x | "
            f"{row['cached_first']:.0f} | **{row['cached']:.0f}** ({100 * row['cached_hits']:.0f}%) | "
            f"{row['cached_speedup']:.2f}x ({row['cached_speedup_paired']:.2f}x) |"
        )
    lines += [
        "",
        "Threads (full source; wall clock = total on the machine while the neighbours run):",
        "",
        "| output px | 1 thread, per CPU-second | 1 thread, wall | 2 threads, wall (total) | "
        "2 threads, per CPU-second |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['res']} | {row['ours']:.0f} | {row['ours_wall']:.0f} | {row['ours_2threads']:.0f} | "
                     f"{row['ours_2threads_cpu']:.0f} |")
    r64 = next((x for x in r["rows"] if x["res"] == 64), None)
    verdict = []
    if r64:
        def status(a: float, b: float) -> str:
            return ("met (median and paired)" if min(a, b) >= 2.0 else
                    "borderline (one of median / paired reaches 2x)" if max(a, b) >= 2.0 else "missed")

        verdict = [
            "",
            "**Target at 64 px (>= 2x the plain baseline, per core; the benchmark report judges the full source):** "
            f"full source {r64['speedup']:.2f}x (paired {r64['speedup_paired']:.2f}x): "
            f"{status(r64['speedup'], r64['speedup_paired'])}; the reader alone {r64['reader_speedup']:.2f}x (paired "
            f"{r64['reader_speedup_paired']:.2f}x): {status(r64['reader_speedup'], r64['reader_speedup_paired'])}. "
            "Other runs of this script while the changes were made (the same code less the last small changes, "
            "varying load) gave the reader 2.0-2.1x and the full source 1.8-2.1x (paired 1.8-1.9x): the ratio "
            "moves with the neighbours' load, by more than the margin over 2x. "
            f"With the decode cache, from the second epoch: {r64['cached']:.0f} images per core-second, "
            f"{r64['cached_speedup']:.2f}x the plain baseline (first epoch {r64['cached_first']:.0f}).",
        ]
    lines += verdict + [
        "",
        BEFORE,
        "",
        "What the columns run:",
        "",
        "- *ours: reader*: our tar parser and shuffle buffer, the per-sample generator (Philox re-keyed per thread), "
        "random-resized crop; colour JPEGs decoded by libjpeg-turbo through `simplejpeg` at 1/2, 1/4 or 1/8 DCT "
        "scale when the crop is at least twice the output (else full size), `resize(box=..., reducing_gap=2)`. "
        "Pixel for pixel what Pillow's `draft()` path gave (tested): only the decoder's overhead changed.",
        "- *plain: reader*: `tarfile` iteration, `Image.open().convert(\"RGB\")` (Pillow, full-size decode), crop, "
        "one bilinear `resize`.",
        "- *ours: full source*: `TrainSource` (decode in the calling thread): the reader plus caption decode and "
        "tokenization (with the word cache of `ClipTokenizer.encode`: identical ids); *plain + tokenize*: the plain "
        "reader plus the `tokenizers` library's own encode per caption, truncated (what a plain loader does).",
        "- *decode only*: the image part alone on in-memory JPEG bytes (no tar, no text).",
        "- *decode cache*: `TrainSource(decode_cache_mb=...)`: each image decoded once at the scale every crop can "
        "use, later epochs crop from memory. First epoch = the first pass over the data; cached = a later window "
        "(hits: its share served from memory). Off by default; its pixels differ slightly from the uncached path "
        "where the uncached path would decode a large crop at a smaller scale.",
        "",
        "Where the time goes (JPEG decode of one source image, CPU us, median, interleaved): "
        f"Pillow {j['full']:.0f} full / {j['half']:.0f} at 1/2 / {j['quarter']:.0f} at 1/4; "
        + (f"libjpeg-turbo via simplejpeg {j['turbo_full']:.0f} / {j['turbo_half']:.0f} / "
           f"{j['turbo_quarter']:.0f}. " if "turbo_full" in j else "")
        + "The entropy (Huffman) decoding of the whole file is paid at every scale, so a reduced-size decode saves "
        "only the inverse DCT, upsampling and colour conversion. Profile of the full source at 64 px before the "
        "changes (cProfile + per-call timers, quiet moment): Pillow decode at 1/2 ~430-520 us, resize ~90-120 us, "
        "caption tokenization ~80-90 us (the `tokenizers` call: normalise, pre-tokenise, build an `Encoding`; its "
        "`encode_batch` costs the same per caption when single-threaded), per-sample `Philox` construction ~11-19 us "
        "(~50 us on the busy machine: Python-level argument handling, not the generator), tar parsing + shuffle "
        "buffer ~40 us, crop draw ~10 us, Pillow-to-numpy ~10 us. After: simplejpeg decode ~330-350 us, resize "
        "unchanged, tokenization ~10 us, generator ~3 us. The decode is now ~60% of a "
        "sample and the resize ~20%: what is left to cut is in libjpeg-turbo and Pillow's resampler.",
        "",
        "Options measured and not taken: decoding at 1/4 for every 64 px crop (upsampling the smaller crops) saves "
        "~40 us of decode (~7-30% of the image side, depending on load) but blurs: 31.0 dB PSNR against a Lanczos "
        "resize from the full decode, against 36.5 dB for the current path (and 36.0 dB for the plain baseline), "
        "and 0.54 of the reference's high-frequency energy instead of 0.71. libjpeg-turbo's n/8 scales (3/8 for "
        "most 64 px crops) give the same quality (36.5 dB) but only 3-8% on the image side, and would change the "
        "pixels; 5/8-7/8 decode slower than full size (no SIMD).",
        "",
        "Two threads: " + "; ".join(
            f"{row['res']} px: wall {row['ours_2threads']:.0f} with two threads against {row['ours_wall']:.0f} with "
            f"one, and {row['ours_2threads_cpu'] / row['ours']:.2f}x the one-thread rate per CPU-second"
            for row in r["rows"]) + ". The old table's '2 threads (total) slower than one thread' compared a "
        "wall-clock rate (2 threads) with a CPU-time rate (1 thread) on a machine whose cores the neighbours were "
        "using; the thread pool itself adds no consistent per-image cost (the per-CPU-second ratios scatter around "
        "1). What two threads gain in wall time is whatever share of the second core the neighbours leave free.",
        "",
        "At 112 and 224 px no reduced-size decode is possible (the crops are 162-256 px), so the only gain is the "
        "decoder's (~300-400 us of the 1.5-2 ms an image takes there) and Pillow's bilinear resize, the same in both "
        "paths, dominates (~650-900 us at 224 px on the busy machine); the 224 px ratios scatter around 1.0-1.2x "
        "between runs (the decode-only column even below 1 in one of them).",
        "",
        "Raw runs (images/s):",
        "",
    ]
    for row in r["rows"]:
        runs = {k[:-5]: v for k, v in row.items() if k.endswith("_runs")}
        lines.append(f"- {row['res']} px: " + "; ".join(f"{k} {v}" for k, v in runs.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
