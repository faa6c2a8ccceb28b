"""Image decoding for training and evaluation: encoded bytes -> uint8 HWC RGB at the stage's resolution.

Training uses a random-resized crop (area 0.4-1.0 of the image, aspect 3/4-4/3, CLIPA's ``inception_crop``), then
a bilinear, antialiased resize to the stage resolution; evaluation resizes the whole image directly to the eval
resolution (CLIPA-v2: "directly resize works better"). Normalisation happens on the device, in the model.

The fast path for low resolutions, which is where CLIPA spends most of its samples:
1. reduced-size decode: libjpeg decodes at 1/2, 1/4 or 1/8 scale (DCT scaling), choosing the smallest scale that
   still leaves the crop at least as large as the output, so a 64 px crop of a 512 px photo decodes about 16x fewer
   pixels;
2. colour JPEGs are decoded by libjpeg-turbo through ``simplejpeg`` straight into a numpy buffer: the same library
   and settings as Pillow's own JPEG decoder (accurate DCT, fancy upsampling, the same scale rule), so the pixels are
   identical (tested), at ~30% less CPU per decode (Pillow adds Python-side header parsing and a per-row unpack).
   Grey, CMYK/YCCK and non-JPEG images, and anything libjpeg-turbo refuses (truncated, corrupt), take Pillow's path,
   which counts the conversions and turns undecodable bytes into ``BadImage``;
3. the crop box is passed to ``resize(box=...)`` instead of cropping first (no intermediate copy);
4. ``reducing_gap``: Pillow first shrinks by an integer factor with a fast box filter, then resamples the last
   factor below 2 bilinearly (quality within noise of a full bilinear resize at these factors).

Odd inputs are converted, not rejected, and each conversion is counted in ``events``: CMYK and YCCK JPEGs, palette
images, images with alpha (composited on white), greyscale and 16-bit images; a tiny image (e.g. 1x1) is upscaled.
Anything Pillow cannot decode (zero bytes, truncated, not an image) raises ``BadImage``.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

try:
    import simplejpeg as _turbo
except ImportError:  # pragma: no cover - a platform without its wheel: Pillow decodes everything (same pixels)
    _turbo = None

CROP_SCALE = (0.4, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
REDUCING_GAP = 2.0
TINY = 8  # images with a side below this many pixels are counted as tiny (they still work)

# Real web data has some huge images; decoding them is what ``draft`` is for, so don't warn about them.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImage(Exception):
    """The bytes are not a decodable image."""


def sample_crop(width: int, height: int, rng: np.random.Generator,
                scale: tuple[float, float] = CROP_SCALE,
                ratio: tuple[float, float] = CROP_RATIO) -> tuple[float, float, float, float]:
    """A random-resized-crop box ``(x0, y0, x1, y1)`` (torchvision's RandomResizedCrop / inception crop rule)."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_r[0], log_r[1]))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            return (x0, y0, x0 + w, y0 + h)
    # fallback: the largest centred box with an allowed aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        w, h = height * ratio[1], height
    else:
        w, h = width, height
    x0, y0 = (width - w) / 2, (height - h) / 2
    return (x0, y0, x0 + w, y0 + h)


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("zero-byte image")
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from None


def _draft(img: Image.Image, box: tuple[float, float, float, float], res: int,
           events: dict[str, int] | None) -> tuple[float, float, float, float]:
    """Ask libjpeg for a reduced-size decode that keeps the crop >= ``res``; returns the box in the new pixels."""
    if img.format != "JPEG":
        return box
    w0, h0 = img.size
    side = min(box[2] - box[0], box[3] - box[1])
    if side < 2 * res:  # no 1/2-scale decode possible without going below the output size
        return box
    # draft picks the largest DCT scale s in (1, 2, 4, 8) with ceil(size / s) >= the requested size
    want = (max(1, math.ceil(w0 * res / side)), max(1, math.ceil(h0 * res / side)))
    mode = "RGB" if img.mode in ("RGB", "YCbCr") else None  # CMYK/L keep their mode; converted after
    img.draft(mode, want)
    w1, h1 = img.size
    if (w1, h1) == (w0, h0):
        return box
    if events is not None:
        events["draft_decodes"] = events.get("draft_decodes", 0) + 1
    sx, sy = w1 / w0, h1 / h0
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _bump(events: dict[str, int] | None, name: str) -> None:
    if events is not None:
        events[name] = events.get(name, 0) + 1


def _to_rgb(img: Image.Image, events: dict[str, int] | None) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        _bump(events, "converted_palette")
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        _bump(events, "converted_alpha")
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "CMYK":
        _bump(events, "converted_cmyk")
        return img.convert("RGB")
    if mode in ("L", "1"):
        _bump(events, "converted_gray")
        return img.convert("RGB")
    if mode.startswith("I") or mode == "F":  # 16/32-bit greyscale: scale to 8 bits
        _bump(events, "converted_highbit")
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    _bump(events, "converted_other")
    return img.convert("RGB")


def _finish(img: Image.Image, res: int, box: tuple[float, float, float, float] | None,
            events: dict[str, int] | None) -> np.ndarray:
    try:
        img.load()
        img = _to_rgb(img, events)
        if min(img.size) < TINY:
            _bump(events, "tiny_image")
        out = img.resize((res, res), Image.Resampling.BILINEAR, box=box, reducing_gap=REDUCING_GAP)
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (res, res, 3):  # pragma: no cover - guarded by _to_rgb
        raise BadImage(f"unexpected decoded shape {arr.shape}")
    return arr


def _turbo_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a colour (YCbCr) JPEG that the libjpeg-turbo path takes; None: use Pillow's path."""
    if _turbo is None or data[:3] != b"\xff\xd8\xff":
        return None
    try:
        h, w, colorspace, _sub = _turbo.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    if colorspace != "YCbCr" or min(w, h) < 16:  # (below 16 px a smaller n/8 factor could tie in rounded size)
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > 2 * limit:  # Pillow's decompression-bomb rule (BadImage) applies
        return None
    return w, h


def _turbo_finish(data: bytes, w: int, h: int, res: int, box: tuple[float, float, float, float],
                  events: dict[str, int] | None) -> np.ndarray | None:
    """Decode with libjpeg-turbo at the scale ``_draft`` would pick, then crop+resize as ``_finish``; None if the
    decoder refuses the bytes (the caller falls back to Pillow, which decides whether they are a ``BadImage``)."""
    side = min(box[2] - box[0], box[3] - box[1])
    scale = 1
    if side >= 2 * res:  # exactly ``_draft``'s choice (Pillow's draft rule): 1/2, 1/4 or 1/8, crop stays >= res
        q = min(w // max(1, math.ceil(w * res / side)), h // max(1, math.ceil(h * res / side)))
        scale = 8 if q >= 8 else 4 if q >= 4 else 2 if q >= 2 else 1
    try:
        # min sizes = the DCT-scaled size (ceil(size / scale)): libjpeg-turbo then picks exactly 1/scale
        arr = _turbo.decode_jpeg(data, "RGB", min_height=-(-h // scale) if scale > 1 else 0,
                                 min_width=-(-w // scale) if scale > 1 else 0)
    except (ValueError, RuntimeError, MemoryError):
        return None
    h1, w1 = arr.shape[:2]
    if (w1, h1) != (w, h):
        _bump(events, "draft_decodes")
        sx, sy = w1 / w, h1 / h
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    if min(w1, h1) < TINY:
        _bump(events, "tiny_image")
    # an RGB image (one unpacking copy): Pillow resamples 3 bands; resizing a zero-copy RGBX view resamples 4, which
    # costs more than the copy at 112-224 px (same pixels either way)
    img = Image.frombuffer("RGB", (w1, h1), arr, "raw", "RGB", 0, 1)
    out = img.resize((res, res), Image.Resampling.BILINEAR, box=box, reducing_gap=REDUCING_GAP)
    # packed by Pillow's raw encoder (~8 us at 64 px; np.asarray + a copy of the RGB view costs ~40 us)
    return np.frombuffer(out.tobytes("raw", "RGB"), np.uint8).reshape(res, res, 3)


def decode_train(data: bytes, res: int, rng: np.random.Generator, events: dict[str, int] | None = None,
                 fast: bool = True) -> np.ndarray:
    """Encoded image -> random-resized crop at ``res`` x ``res``, uint8 HWC RGB. ``fast=False`` disables draft (and
    the libjpeg-turbo path: a full-size Pillow decode)."""
    size = _turbo_size(data) if fast else None
    if size is not None:
        box = sample_crop(*size, rng)
        out = _turbo_finish(data, *size, res, box, events)
        if out is not None:
            return out
        img = _open(data)  # refused by libjpeg-turbo: Pillow decides (the crop drawn above is kept)
        if img.size != size:  # pragma: no cover - a header both libraries read differently
            box = sample_crop(*img.size, rng)
        return _finish(img, res, _draft(img, box, res, events), events)
    img = _open(data)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImage("empty image")
    box = sample_crop(w, h, rng)
    if fast:
        box = _draft(img, box, res, events)
    return _finish(img, res, box, events)


def decode_eval(data: bytes, res: int, events: dict[str, int] | None = None, fast: bool = True) -> np.ndarray:
    """Encoded image -> the whole image resized directly to ``res`` x ``res`` (no crop), uint8 HWC RGB."""
    size = _turbo_size(data) if fast else None
    if size is not None:
        out = _turbo_finish(data, *size, res, (0.0, 0.0, float(size[0]), float(size[1])), events)
        if out is not None:
            return out
    img = _open(data)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImage("empty image")
    box = (0.0, 0.0, float(w), float(h))
    if fast:
        box = _draft(img, box, res, events)
    return _finish(img, res, box, events)


# --- the decode cache (decode once, crop every epoch) -----------------------------------------------------------
def base_scale(w: int, h: int, res: int) -> int:
    """The DCT scale (1, 2, 4, 8) at which *every* random-resized crop of a ``w`` x ``h`` image still has a side of
    at least ``res``: ``_draft``'s rule applied to the smallest crop ``sample_crop`` can draw."""
    side = min(math.sqrt(CROP_SCALE[0] * w * h * min(CROP_RATIO[0], 1 / CROP_RATIO[1])), w, h)
    if side < 2 * res:
        return 1
    q = min(w // max(1, math.ceil(w * res / side)), h // max(1, math.ceil(h * res / side)))
    return 8 if q >= 8 else 4 if q >= 4 else 2 if q >= 2 else 1


def decode_base(data: bytes, res: int, events: dict[str, int] | None = None) -> tuple[np.ndarray, int, int]:
    """The image decoded once for the cache: ``(RGB uint8 [h', w', 3], w, h)`` at ``base_scale`` (w, h: the
    original size, in which crops are drawn). Odd modes are converted (and counted) here, once per sample."""
    size = _turbo_size(data)
    if size is not None:
        w, h = size
        scale = base_scale(w, h, res)
        try:
            arr = _turbo.decode_jpeg(data, "RGB", min_height=-(-h // scale) if scale > 1 else 0,
                                     min_width=-(-w // scale) if scale > 1 else 0)
            return arr, w, h
        except (ValueError, RuntimeError, MemoryError):
            pass  # Pillow decides below
    img = _open(data)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImage("empty image")
    side = min(math.sqrt(CROP_SCALE[0] * w * h * min(CROP_RATIO[0], 1 / CROP_RATIO[1])), w, h)
    _draft(img, (0.0, 0.0, side, side), res, None)  # the same scale as base_scale, for JPEGs
    try:
        img.load()
        img = _to_rgb(img, events)
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    if min(img.size) < TINY:
        _bump(events, "tiny_image")
    return np.asarray(img).copy(), w, h


def crop_from_base(base: tuple[np.ndarray, int, int], res: int, rng: np.random.Generator) -> np.ndarray:
    """A random-resized crop (drawn as ``decode_train`` draws it, in the original size) from a ``decode_base``
    result, resized as ``_turbo_finish`` does: uint8 HWC RGB ``res`` x ``res``."""
    arr, w, h = base
    box = sample_crop(w, h, rng)
    h1, w1 = arr.shape[:2]
    sx, sy = w1 / w, h1 / h
    img = Image.frombuffer("RGB", (w1, h1), arr, "raw", "RGB", 0, 1)  # (3-band resampling: see _turbo_finish)
    out = img.resize((res, res), Image.Resampling.BILINEAR, box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy),
                     reducing_gap=REDUCING_GAP)
    return np.frombuffer(out.tobytes("raw", "RGB"), np.uint8).reshape(res, res, 3)


def decode_plain(data: bytes, res: int, rng: np.random.Generator) -> np.ndarray:
    """The baseline the benchmark compares against: full decode, convert, crop, then one bilinear resize."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    box = sample_crop(*img.size, rng)
    img = img.crop(tuple(int(round(v)) for v in box))
    return np.asarray(img.resize((res, res), Image.Resampling.BILINEAR), dtype=np.uint8)
