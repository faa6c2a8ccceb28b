"""Input pipeline at low resolution: what a fix would gain (image side only, images per CPU-second = per core).

The input-pipeline engineer's benchmark (``benchmarks/input_pipeline.py``) measures the reader against a plain
decode-then-resize baseline on 256 px JPEG shards. At 64 px the gain stays well under 2x because the JPEG entropy
decoding of the whole file is paid at any DCT scale. This script measures, on the same generated scenes and with the
same ``trainer.data.images`` functions, the candidate fixes:

* ``ours@256``: ``decode_train`` (draft + reducing-gap resize) from the 256 px JPEGs (the current path);
* ``plain@256``: ``decode_plain`` from the 256 px JPEGs (the baseline);
* ``ours@128``: ``decode_train`` from the same scenes stored as 128 px JPEGs (shards written at 2x the stage's
  resolution for the low-resolution stages: a data-preparation change);
* ``cache@80``: random-resized crop + resize from a cached uint8 array of the image at 80 px (decode once, keep the
  decoded pixels: a reader change for small local datasets; 80 x 80 x 3 = 19 KB per sample);
* ``tokenize``: the caption side alone (BPE tokenization to 32 tokens), which bounds the full source's rate.

Timing: process CPU time, single thread, median of ``--repeats`` interleaved runs (so other jobs on the cores do not
distort it).

    .venv/bin/python benchmarks/bench_input_extra.py [--images 300] [--out benchmarks/results/extra_input.json]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--out", default=str(bc.RESULTS / "extra_input.json"))
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from trainer.data.images import decode_plain, decode_train, sample_crop
    from trainer.data.synth import draw_sample
    from trainer.data.tokenizer import train_tokenizer

    jpg256, jpg128, arr80, captions = [], [], [], []
    for i in range(args.images):
        img, caption, _ = draw_sample(0, "train", i, 256)
        for size, store in ((256, jpg256), (128, jpg128)):
            im = img if size == 256 else img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            store.append(buf.getvalue())
        arr80.append(np.asarray(img.resize((80, 80), Image.Resampling.BILINEAR, reducing_gap=2.0), np.uint8))
        captions.append(caption)
    tok = train_tokenizer(captions, vocab_size=1024)
    res = args.res

    def crop_cached(a, rng):
        im = Image.fromarray(a)
        box = sample_crop(a.shape[1], a.shape[0], rng)
        return np.asarray(im.resize((res, res), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0), np.uint8)

    variants = {
        "ours@256": lambda rng: [decode_train(b, res, rng) for b in jpg256],
        "plain@256": lambda rng: [decode_plain(b, res, rng) for b in jpg256],
        "ours@128": lambda rng: [decode_train(b, res, rng) for b in jpg128],
        "cache@80": lambda rng: [crop_cached(a, rng) for a in arr80],
        "tokenize": lambda rng: [tok.tokenize(c, 32) for c in captions],
    }
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn(np.random.default_rng(0))  # warm-up
    for rep in range(args.repeats):
        for name, fn in variants.items():
            rng = np.random.default_rng(rep)
            t0 = time.process_time()
            fn(rng)
            runs[name].append(args.images / (time.process_time() - t0))
    out = bc.header("extra_input", args)
    out["res"] = res
    out["bytes_mean"] = {"jpg256": round(statistics.mean(map(len, jpg256))), "jpg128": round(statistics.mean(map(len,
                                                                                                               jpg128)))}
    out["per_core"] = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    out["runs"] = runs
    pc = out["per_core"]
    # the full source adds the reader (tar, shuffle) and the text side: estimate its rate per image path from the
    # measured per-image costs, with the reader overhead taken from input_pipeline.json (ours_reader vs ours_decode)
    out["image_speedup_vs_plain"] = {k: round(pc[k] / pc["plain@256"], 2) for k in ("ours@256", "ours@128",
                                                                                      "cache@80")}
    print(out["per_core"], out["image_speedup_vs_plain"], flush=True)
    bc.write_json(args.out, out)


if __name__ == "__main__":
    main()
