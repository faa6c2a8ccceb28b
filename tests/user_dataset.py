"""A small dataset laid out as a user would bring one (not written by ``clipa data synth``): webdataset shards of
``jpg``/``txt``/``cls`` in ``train/`` and ``eval/``, ``classes.txt`` and ``templates.txt`` at the top, and no
``dataset.json``; the tokenizer is trained by the caller with ``clipa data tokenizer``.

Each class is a colour and a shape drawn on a noisy background with PIL, captioned in a few words ("a red disc on
grey"), so the images carry their class and the captions are much shorter than 32 tokens."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "purple": (150, 50, 170)}
SHAPES = ("disc", "square")
BACKGROUNDS = {"grey": (128, 128, 128), "black": (20, 20, 20), "white": (235, 235, 235)}


def class_names() -> list[str]:
    return [f"{c} {s}" for s in SHAPES for c in COLOURS]  # 10 classes


def _image(cls: int, res: int, rnd: random.Random) -> tuple[bytes, str]:
    colour, shape = class_names()[cls].split()
    bg = rnd.choice(sorted(BACKGROUNDS))
    img = Image.new("RGB", (res, res), BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)
    r = rnd.uniform(0.25, 0.4) * res
    cx, cy = rnd.uniform(r, res - r), rnd.uniform(r, res - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    (d.ellipse if shape == "disc" else d.rectangle)(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue(), f"a {colour} {shape} on {bg}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_user_dataset(out: Path, train: int = 400, eval_n: int = 100, res: int = 32, shard_size: int = 200,
                       seed: int = 0) -> Path:
    rnd = random.Random(seed)
    n_classes = len(class_names())
    for split, n in (("train", train), ("eval", eval_n)):
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, n, shard_size)):
            with tarfile.open(d / f"{split}-{k:04d}.tar", "w") as tar:
                for i in range(start, min(n, start + shard_size)):
                    cls = rnd.randrange(n_classes)
                    jpg, caption = _image(cls, res, rnd)
                    key = f"{split}{i:06d}"
                    _add(tar, f"{key}.jpg", jpg)
                    _add(tar, f"{key}.txt", caption.encode())
                    _add(tar, f"{key}.cls", str(cls).encode())
    (out / "classes.txt").write_text("\n".join(class_names()) + "\n")
    (out / "templates.txt").write_text("a photo of a {}.\na {}.\n")
    return out
