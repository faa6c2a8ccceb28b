"""Helpers for the input-pipeline tests: writing small webdataset shards (good and deliberately broken) and images."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(w: int = 48, h: int = 40, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0, **save) -> bytes:
    """A random-noise image of a given mode and format (noise, so any crop differs from any other)."""
    rng = np.random.default_rng(seed)
    if mode in ("RGB", "YCbCr"):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    elif mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    elif mode == "LA":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8), "LA")
    elif mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif mode == "CMYK":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "CMYK")
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").quantize(16)
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))  # mode I;16
    else:
        raise ValueError(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    """A tar with the given (name, data) members, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, caption: str | bytes | None = "a photo", image: bytes | None = None,
                   ext: str = "jpg", meta: bytes | None = None) -> list[tuple[str, bytes]]:
    out = []
    if image is not None:
        out.append((f"{key}.{ext}", image))
    if caption is not None:
        out.append((f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode()))
    if meta is not None:
        out.append((f"{key}.json", meta))
    return out


def write_plain_shards(folder: Path, n_shards: int, per_shard: int, size: int = 40) -> list[Path]:
    """Clean shards of noise JPEGs with distinct captions ("sample S I")."""
    paths = []
    for s in range(n_shards):
        members = []
        for i in range(per_shard):
            key = f"s{s:02d}_{i:04d}"
            members += sample_members(key, f"sample {s} {i} red square", image_bytes(size, size, seed=s * 1000 + i))
        paths.append(write_tar(folder / f"shard-{s:06d}.tar", members))
    return paths
