"""The generated captioned image dataset (``clipa data synth``): procedurally drawn scenes, compositional captions.

Each image holds one large *main* object and up to 3 small distractor objects on a background that may be cluttered
and noisy. An object has a shape (8), a colour (8), a texture (plain, striped, dotted, checkered), a size and a
position. Each scene draws a difficulty, uniform from 0 to 1, and gets each hard element (clutter, noise, a textured
main object, up to 3 distractors, a smaller main object) in proportion to it: from a lone plain object on a clean
background to the full scene. Why (issue 19): with every scene at full difficulty (version 1) the tiny towers learned
colour within 100K samples and no shape until about 1M (shape top-1 17-21%, chance 12.5, in zero-shot scores and in a
linear probe of the image features alike), so top-1 sat flat between two steps that no short pilot could see; easy
scenes start shape learning early and hard ones keep it going (docs/closed_loop.md). The caption names
every object (in random order, so the main object is often not first), with varied phrasing, synonyms and filler
words. Zero-shot classes are the main object's "colour shape" (64 classes, ``classes.txt``); ``classes_fine.txt``
adds its texture (256 classes).

Why it is hard in the ways that matter for CLIPA experiments:
- *resolution*: textures have a period of about 1/16 of the image side and ring/circle/hexagon differ in small
  details, so they fade when training or evaluating at a fraction of the generated resolution;
- *caption length*: the class words of the main object sit after an intro and often after other objects, so
  truncating to a few tokens often drops them (syntax reduction keeps nouns first, then adjectives);
- *model size*: several objects per image and caption need attribute binding (which colour goes with which shape)
  and the distractors share colours or shapes with the main object;
- *samples seen*: 64 classes x 4 textures x positions x distractors is far from memorisable in a few minutes.

Learning curve of version 2 (200K train samples at 32 px, seed 17, 4,000 eval images; mini/8, ``N@32/32 + 8K@32/32``,
batch 64, one run each): top-1 21.4 / 28.1 / 37.9% at 100K / 300K / 1M samples, shape alone 22.2 / 28.6 / 38.2%
(colour 95-99%). Version 1 on the same recipe (400K-sample set): 15.8 / 16.1 / 23.5% at 320K / 449K / 1.24M (shape
18.1 / 17.8 / 24.6%).

Version 1 was checked once end to end with ``clipa train`` + ``clipa eval`` (20k train samples at 64 px, mini/8 at
32 px, batch 64, 40k samples seen, about 2.5 CPU-minutes each, one seed, so differences of a point or two are noise):
zero-shot top-1 / top-5 on the 2k eval split was 12.7% / 58.9% with 32-token captions, 10.9% / 52.4% truncated to 8
tokens and 9.6% / 37.7% with 8-token syntax reduction (chance 1.6% / 7.8%). Syntax reduction hurts here because the
captions hold many nouns (shapes, positions, "background") and it drops the colour adjectives the classes need. Not
checked: the resolution, model-size and longer-training axes.

Layout written: ``OUT/train/shard-NNNNNN.tar`` and ``OUT/eval/shard-NNNNNN.tar`` (webdataset: ``KEY.jpg``,
``KEY.txt``, ``KEY.json``), ``OUT/classes.txt``, ``OUT/classes_fine.txt``, ``OUT/templates.txt``,
``OUT/attributes.txt`` (what each word of a class name is: colour, shape; texture first for the fine classes),
``OUT/tokenizer.json`` (BPE trained on the train captions) and ``OUT/dataset.json``. Every sample is drawn from its
own generator seeded by (seed, split, index), so the output is byte-for-byte deterministic for a seed (tar headers
carry a fixed mtime) and the two splits never share a sample. Each json carries the caption's part-of-speech tags
(the generator knows them), which the syntax text reduction uses instead of the tagger.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import tarfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from planner.errors import ClipaError

SHAPES = ["circle", "ring", "square", "diamond", "triangle", "star", "cross", "hexagon"]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 215, 35),
    "green": (35, 165, 55),
    "cyan": (35, 200, 215),
    "blue": (35, 65, 215),
    "purple": (135, 45, 185),
    "pink": (245, 125, 185),
}
TEXTURES = ["plain", "striped", "dotted", "checkered"]
_COLOUR_NAMES = list(COLOURS)
SPLITS = {"train": 0, "eval": 1}
# what a zero-shot class is: the main object's "colour shape" (64) or "texture colour shape" (256; textures need
# resolution and more capacity to separate)
CLASS_SETS = ("coarse", "fine")
VERSION = 2  # 2: scenes of spread difficulty (1: every scene at full difficulty)

# Caption vocabulary, with Penn tags (the generator knows each word's part of speech).
_SHAPE_SYNONYMS = {"ring": ["hoop"], "diamond": ["rhombus"], "cross": ["plus"], "square": ["block"]}
_COLOUR_SYNONYMS = {"purple": ["violet"], "cyan": ["turquoise"]}
_BIG = ["large", "big", "huge"]
_SMALL = ["small", "tiny", "little"]
_TEXTURE_ADJ = {"striped": ["striped", "stripy"], "dotted": ["dotted", "spotted"], "checkered": ["checkered"]}
_TEXTURE_WITH = {"striped": ["stripes"], "dotted": ["dots", "spots"], "checkered": ["checks", "squares"]}
_INTROS: list[list[tuple[str, str]]] = [
    [],
    [("a", "DT"), ("picture", "NN"), ("showing", "VBG")],
    [("an", "DT"), ("image", "NN"), ("of", "IN")],
    [("this", "DT"), ("drawing", "NN"), ("contains", "VBZ")],
    [("we", "PRP"), ("can", "MD"), ("see", "VB")],
    [("somewhere", "RB"), ("in", "IN"), ("this", "DT"), ("noisy", "JJ"), ("scene", "NN"), ("there", "EX"),
     ("is", "VBZ")],
    [("look", "VB"), ("closely", "RB"), ("at", "IN")],
    [("a", "DT"), ("quick", "JJ"), ("sketch", "NN"), ("with", "IN")],
    [("here", "RB"), ("are", "VBP")],
    [("the", "DT"), ("camera", "NN"), ("captured", "VBD")],
]
_RELATIONS = [
    [("next", "JJ"), ("to", "TO")],
    [("near", "IN")],
    [("beside", "IN")],
    [("and", "CC")],
    [("along", "IN"), ("with", "IN")],
    [("together", "RB"), ("with", "IN")],
]
_BG_WORDS = ["clutter", "noise", "scribbles", "lines", "speckles"]
_BG_COLOURS = ["gray", "beige", "brown", "white", "dark", "pale"]
_TEMPLATES = [
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture showing a {}.",
    "a large {}.",
    "a big {} on a cluttered background.",
    "there is a {} in the image.",
    "an image of a {} among other shapes.",
    "a {}.",
]


def classnames() -> list[str]:
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def classnames_fine() -> list[str]:
    return [f"{t} {c} {s}" for t in TEXTURES for c in COLOURS for s in SHAPES]


# --- drawing ------------------------------------------------------------------------------------------------------
def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]] | None:
    def ring_pts(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(phase + 2 * math.pi * k / n), cy + radius * math.sin(phase + 2 * math.pi * k / n))
                for k in range(n)]

    if shape == "square":
        return ring_pts(4, r, rot + math.pi / 4)
    if shape == "diamond":  # a rhombus standing on a vertex, a little elongated so it is not a rotated square
        pts = []
        for k, rad in enumerate((r, 0.72 * r, r, 0.72 * r)):
            a = rot + math.pi / 2 * k
            pts.append((cx + rad * math.sin(a), cy - rad * math.cos(a)))
        return pts
    if shape == "triangle":
        return ring_pts(3, r, rot - math.pi / 2)
    if shape == "hexagon":
        return ring_pts(6, r, rot)
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.42 * r
            a = rot - math.pi / 2 + math.pi * k / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.34 * r
        base = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
                (-w, -w)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    return None  # circle and ring are ellipses


def _object_mask(w: int, h: int, shape: str, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if shape in ("circle", "ring"):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "ring":
            ri = 0.55 * r
            d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    else:
        d.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=255)
    return m


_ANGLES = (0.0, math.pi / 2, math.pi / 4, -math.pi / 4)


@lru_cache(maxsize=64)
def _pattern(texture: str, period: float, angle: int, size: int) -> Image.Image:
    """A ``2 size`` square "L" pattern (255 where the texture colour goes); objects crop it at a random offset."""
    n = 2 * size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if texture == "striped":
        a = _ANGLES[angle]
        u = (xx * math.cos(a) + yy * math.sin(a)) / period
        on = (u - np.floor(u)) < 0.5
    elif texture == "dotted":
        u, v = xx / period, yy / period
        du, dv = u - np.round(u), v - np.round(v)
        on = (du * du + dv * dv) < 0.16
    elif texture == "checkered":
        on = ((np.floor(xx / (0.75 * period)) + np.floor(yy / (0.75 * period))) % 2) == 0
    else:
        raise ValueError(texture)
    return Image.fromarray(on.astype(np.uint8) * 255, "L")


@lru_cache(maxsize=8)
def _noise_tile(size: int) -> Image.Image:
    """A fixed RGB tile of Gaussian noise around 128 (sigma 6); each sample adds a randomly placed crop of it
    (cheaper than drawing fresh noise per sample, and just as deterministic)."""
    g = np.random.default_rng(12345).normal(128, 6, (2 * size, 2 * size, 3))
    return Image.fromarray(np.clip(g, 0, 255).astype(np.uint8), "RGB")


_BG_BASE = {
    "gray": (128, 128, 128), "beige": (205, 190, 160), "brown": (110, 85, 60), "white": (225, 225, 220),
    "dark": (55, 55, 60), "pale": (175, 185, 195),
}


def _background(size: int, rnd: random.Random) -> tuple[Image.Image, str]:
    """A muted colour with smooth low-frequency variation (a random 3x3 field, upsampled) and its colour word."""
    word = rnd.choice(_BG_COLOURS)
    base = [c + rnd.gauss(0, 12) for c in _BG_BASE[word]]
    amp = rnd.uniform(8, 30)
    field = bytes(max(0, min(255, int(base[ch] + rnd.uniform(-amp, amp)))) for _ in range(9) for ch in range(3))
    # bilinear to a quarter size then nearest: 5x cheaper than one bilinear upsample, and the 4-pixel steps of a
    # smooth field are invisible after the supersampled canvas is reduced
    small = Image.frombytes("RGB", (3, 3), field).resize((size // 4, size // 4), Image.Resampling.BILINEAR)
    return small.resize((size, size), Image.Resampling.NEAREST), word


def _clutter(draw: ImageDraw.ImageDraw, size: int, rnd: random.Random, scale: int) -> None:
    """Thin strokes, dots and specks in random (also saturated) colours: smaller than any object."""
    palette = list(COLOURS.values()) + [(240, 240, 240), (20, 20, 20), (120, 120, 120)]
    for _ in range(rnd.randint(6, 15)):
        f = rnd.uniform(0.6, 1.0)
        col = tuple(min(255, int(v * f + 40)) for v in rnd.choice(palette))
        kind = rnd.randrange(3)
        x, y = rnd.uniform(0, size), rnd.uniform(0, size)
        if kind == 0:
            ln = rnd.uniform(0.05, 0.2) * size
            a = rnd.uniform(0, 2 * math.pi)
            draw.line((x, y, x + ln * math.cos(a), y + ln * math.sin(a)), fill=col, width=max(1, scale))
        elif kind == 1:
            rr = rnd.uniform(0.5, 1.2) * scale
            draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=col)
        else:
            rr = rnd.uniform(0.01, 0.03) * size
            draw.rectangle((x - rr, y - rr, x + rr, y + rr), outline=col, width=max(1, scale // 2))


def _position_words(cx: float, cy: float, size: int) -> list[tuple[str, str]]:
    fx, fy = cx / size, cy / size
    horiz = "left" if fx < 0.38 else "right" if fx > 0.62 else None
    vert = "top" if fy < 0.38 else "bottom" if fy > 0.62 else None
    if horiz is None and vert is None:
        return [("in", "IN"), ("the", "DT"), ("center", "NN")]
    if horiz and vert:
        return [("at", "IN"), ("the", "DT"), (vert, "JJ"), (horiz, "NN")]
    if vert:
        return [("at", "IN"), ("the", "DT"), (vert, "NN")]
    return [("on", "IN"), ("the", "DT"), (horiz, "NN")]


def _object_phrase(obj: dict, rnd: random.Random, with_position: bool) -> list[tuple[str, str]]:
    size_word = rnd.choice(_BIG if obj["main"] else _SMALL)
    colour = obj["colour"]
    if colour in _COLOUR_SYNONYMS and rnd.random() < 0.25:
        colour = rnd.choice(_COLOUR_SYNONYMS[colour])
    shape = obj["shape"]
    if shape in _SHAPE_SYNONYMS and rnd.random() < 0.25:
        shape = rnd.choice(_SHAPE_SYNONYMS[shape])
    tex = obj["texture"]
    words: list[tuple[str, str]] = [("a", "DT")]
    if rnd.random() < 0.85:
        words.append((size_word, "JJ"))
    postfix: list[tuple[str, str]] = []
    if tex != "plain":
        if rnd.random() < 0.6:
            words.append((rnd.choice(_TEXTURE_ADJ[tex]), "JJ"))
        else:
            postfix = [("with", "IN"), (rnd.choice(_TEXTURE_WITH[tex]), "NNS")]
    elif rnd.random() < 0.2:
        words.append((rnd.choice(["plain", "solid"]), "JJ"))
    words += [(colour, "JJ"), (shape, "NN")]
    words += postfix
    if with_position:
        words += _position_words(obj["cx"], obj["cy"], obj["canvas"])
    return words


def _caption(objects: list[dict], bg_word: str, rnd: random.Random) -> list[tuple[str, str]]:
    order = list(range(len(objects)))
    rnd.shuffle(order)  # the main object is mentioned first only 1 time in len(objects)
    words: list[tuple[str, str]] = list(rnd.choice(_INTROS))
    with_pos = rnd.random() < 0.6
    for k, oi in enumerate(order):
        if k > 0:
            if k == len(order) - 1 and rnd.random() < 0.5:
                words.append(("and", "CC"))
            elif rnd.random() < 0.5:
                words.append((",", ","))
            else:
                words += rnd.choice(_RELATIONS)
        words += _object_phrase(objects[oi], rnd, with_pos)
    r = rnd.random()
    if r < 0.35:
        words += [("on", "IN"), ("a", "DT"), (bg_word, "JJ"), ("background", "NN")]
    elif r < 0.6:
        words += [("with", "IN"), ("some", "DT"), (rnd.choice(_BG_WORDS), "NNS")]
    words.append((".", "."))
    return words


def _join(words: list[tuple[str, str]]) -> str:
    out = ""
    for w, _ in words:
        if not out:
            out = w
        elif w in (",", "."):
            out += w
        else:
            out += " " + w
    return out


def _random_object(rnd: random.Random, main: bool) -> dict:
    return {"shape": rnd.choice(SHAPES), "colour": rnd.choice(_COLOUR_NAMES), "texture": rnd.choice(TEXTURES),
            "main": main}


def draw_sample(seed: int, split: str, index: int, resolution: int) -> tuple[Image.Image, str, dict]:
    """One scene: (RGB image, caption, metadata). Depends only on (seed, split, index, resolution); the scene and
    caption are the same at every resolution."""
    # Python's generator seeded with a string is stable across runs and platforms (sha512 of the seed string)
    rnd = random.Random(f"clipa-synth/{seed}/{split}/{index}")
    ss = 2 if resolution <= 160 else 1  # supersample small canvases, then downsample with a box filter
    size = resolution * ss
    canvas, bg_word = _background(size, rnd)
    # the scene's difficulty, uniform: at 0 a lone, large, plain object on a clean background; at 1 the full scene
    # (clutter, noise, textures, up to 3 distractors). Each hard element appears with that probability.
    difficulty = rnd.random()
    if rnd.random() < difficulty:
        _clutter(ImageDraw.Draw(canvas), size, rnd, ss)

    main = _random_object(rnd, True)
    if rnd.random() >= difficulty:
        main["texture"] = "plain"
    objects = [main]
    for _ in range(rnd.randint(0, round(3 * difficulty))):
        # distractors share the main object's colour or shape half the time, never both (the class stays unique)
        while True:
            d = _random_object(rnd, False)
            r = rnd.random()
            if r < 0.25:
                d["colour"] = main["colour"]
            elif r < 0.5:
                d["shape"] = main["shape"]
            if (d["shape"], d["colour"]) != (main["shape"], main["colour"]):
                break
        objects.append(d)

    placed: list[tuple[float, float, float]] = []
    for obj in objects:
        r = (rnd.uniform(0.2, 0.3) + 0.1 * (1 - difficulty)) * size if obj["main"] else rnd.uniform(0.08, 0.13) * size
        for _attempt in range(20):  # avoid heavy overlap; some occlusion is allowed
            cx, cy = rnd.uniform(r, size - r), rnd.uniform(r, size - r)
            if all(math.hypot(cx - px, cy - py) > 0.8 * (r + pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        rot = rnd.uniform(0, 2 * math.pi) if obj["shape"] in ("triangle", "star", "hexagon") else rnd.uniform(-0.26, 0.26)
        obj.update(cx=cx, cy=cy, r=r, canvas=size, rot=rot)

    # texture period ~1/16 of the image side: visible at the generated resolution, gone at a quarter of it
    period = max(3.0, resolution / 16) * ss
    draw_order = list(range(len(objects)))
    rnd.shuffle(draw_order)
    for oi in draw_order:
        obj = objects[oi]
        x0, y0 = max(0, int(obj["cx"] - obj["r"]) - 1), max(0, int(obj["cy"] - obj["r"]) - 1)
        x1, y1 = min(size, int(obj["cx"] + obj["r"]) + 2), min(size, int(obj["cy"] + obj["r"]) + 2)
        mask = _object_mask(x1 - x0, y1 - y0, obj["shape"], obj["cx"] - x0, obj["cy"] - y0, obj["r"], obj["rot"])
        f = rnd.uniform(0.85, 1.1)
        col = tuple(max(0, min(255, int(c * f + rnd.gauss(0, 8)))) for c in COLOURS[obj["colour"]])
        canvas.paste(col, (x0, y0, x1, y1), mask)
        if obj["texture"] != "plain":
            pat = _pattern(obj["texture"], period, rnd.randrange(4), size)
            ox, oy = rnd.randrange(size), rnd.randrange(size)
            tmask = ImageChops.multiply(mask, pat.crop((ox, oy, ox + x1 - x0, oy + y1 - y0)))
            # the texture colour is a darker or lighter version of the object colour, so the colour stays readable
            if rnd.random() < 0.5:
                tcol = tuple(int(c * 0.35) for c in col)
            else:
                tcol = tuple(min(255, int(c * 0.4 + 150)) for c in col)
            canvas.paste(tcol, (x0, y0, x1, y1), tmask)
    out = canvas.reduce(ss) if ss > 1 else canvas

    words = _caption(objects, bg_word, rnd)
    caption = _join(words)
    nx, ny = rnd.randrange(resolution), rnd.randrange(resolution)
    noise = _noise_tile(resolution).crop((nx, ny, nx + resolution, ny + resolution))
    if rnd.random() < difficulty:
        out = ImageChops.add(out, noise, 1.0, -128)

    colours = _COLOUR_NAMES
    meta = {
        "split": split,
        "index": index,
        "label": colours.index(main["colour"]) * len(SHAPES) + SHAPES.index(main["shape"]),
        "label_fine": (TEXTURES.index(main["texture"]) * len(COLOURS) * len(SHAPES)
                       + colours.index(main["colour"]) * len(SHAPES) + SHAPES.index(main["shape"])),
        "class": f"{main['colour']} {main['shape']}",
        "objects": [
            {
                "shape": o["shape"], "colour": o["colour"], "texture": o["texture"], "main": o["main"],
                "cx": round(o["cx"] / size, 4), "cy": round(o["cy"] / size, 4), "r": round(o["r"] / size, 4),
            }
            for o in objects
        ],
        "background": bg_word,
        "difficulty": round(difficulty, 4),
        "pos": [[w, t] for w, t in words],
    }
    return out, caption, meta


# --- writing ------------------------------------------------------------------------------------------------------
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical output for a seed
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard(args: tuple) -> tuple[str, list[str]]:
    path, seed, split, start, stop, resolution, quality, fine = args
    captions = []
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(start, stop):
            img, caption, meta = draw_sample(seed, split, i, resolution)
            if fine:  # the zero-shot label is the fine class; the coarse one stays in the record
                meta["label"], meta["label_coarse"] = meta["label_fine"], meta["label"]
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            key = f"{split}{i:08d}"
            _add(tar, f"{key}.jpg", buf.getvalue())
            _add(tar, f"{key}.txt", caption.encode("utf-8"))
            _add(tar, f"{key}.json", json.dumps(meta, separators=(",", ":")).encode("utf-8"))
            captions.append(caption)
    os.replace(tmp, path)
    return path, captions


def write_synth(
    out: str | Path,
    samples: int = 20_000,
    resolution: int = 64,
    seed: int = 0,
    eval_samples: int = 2_000,
    shard_size: int = 1_000,
    vocab_size: int = 1_024,
    workers: int = 1,
    quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
    classes: str = "coarse",
) -> dict:
    """Write the dataset (train + eval shards, classes, templates, tokenizer, dataset.json); returns dataset.json."""
    from trainer.data.tokenizer import train_tokenizer

    if samples <= 0 or eval_samples < 0:
        raise ClipaError("samples", "need at least one training sample and a non-negative eval count")
    if not 16 <= resolution <= 1024:
        raise ClipaError("resolution", f"{resolution} is outside 16..1024")
    if shard_size <= 0:
        raise ClipaError("shard_size", "must be positive")
    if classes not in CLASS_SETS:
        raise ClipaError("classes", f"{classes!r} is not one of {', '.join(CLASS_SETS)}")
    fine = classes == "fine"
    out = Path(out)
    jobs = []
    for split, n in (("train", samples), ("eval", eval_samples)):
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("shard-*.tar"):
            old.unlink()
        for k, start in enumerate(range(0, n, shard_size)):
            jobs.append((str(d / f"shard-{k:06d}.tar"), seed, split, start, min(n, start + shard_size), resolution,
                         quality, fine))
    train_captions: list[str] = []
    done = 0
    total = samples + eval_samples
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = pool.imap(_write_shard, jobs)
            for job, (_path, caps) in zip(jobs, results, strict=True):
                if job[2] == "train":
                    train_captions += caps
                done += job[4] - job[3]
                if progress:
                    progress(done, total)
    else:
        for job in jobs:
            _path, caps = _write_shard(job)
            if job[2] == "train":
                train_captions += caps
            done += job[4] - job[3]
            if progress:
                progress(done, total)

    (out / "classes.txt").write_text("\n".join(classnames_fine() if fine else classnames()) + "\n")
    (out / "classes_fine.txt").write_text("\n".join(classnames_fine()) + "\n")
    (out / "templates.txt").write_text("\n".join(_TEMPLATES) + "\n")
    # the words of a class name, in order: the evaluation scores each on its own too
    (out / "attributes.txt").write_text("\n".join((["texture"] if fine else []) + ["colour", "shape"]) + "\n")
    tok = train_tokenizer(train_captions, vocab_size=vocab_size)
    tok.save(out / "tokenizer.json")
    info = {
        "name": "synth",
        "version": VERSION,
        "seed": seed,
        "resolution": resolution,
        "train_samples": samples,
        "eval_samples": eval_samples,
        "shard_size": shard_size,
        "classes": len(classnames_fine() if fine else classnames()),
        "class_set": classes,
        "classes_fine": len(classnames_fine()),
        "shapes": SHAPES,
        "colours": list(COLOURS),
        "textures": TEXTURES,
        "vocab_size": tok.vocab_size,
        "train": "train",
        "eval": "eval",
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
