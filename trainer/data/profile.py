"""Measuring a local dataset folder's profile (``planner.data_profile.DataProfile``) and caching it beside the data.

What is measured, and from what (no JAX; images are only opened for their header):

- class count: the evaluation split's class names, found the way the zero-shot evaluation finds them
  (``trainer.data.pipeline.EvalSource``: ``classes.txt`` beside the split or in the folder, else class subfolders);
- native resolution: the median shorter side of up to ``IMAGE_SAMPLE`` training images, spread over the shards;
- evaluation size: the labelled images of the evaluation split (counted, not decoded);
- caption lengths: up to ``CAPTION_SAMPLE`` training captions encoded with the folder's tokenizer, in tokens
  including the start and end tokens (what a stage's ``text_len`` has to hold).

``measure_profile`` writes ``DIR/profile.json`` and returns a one-line note saying it measured; ``ensure_profile``
reuses a fresh cache; ``clipa data``'s registration hands it to the planner (``planner.data_profile.set_measurer``),
which never imports the trainer.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from planner.data_profile import DataProfile, Distribution, cached_profile, folder_fingerprint, profile_path
from planner.errors import ClipaError

IMAGE_SAMPLE = 256
CAPTION_SAMPLE = 2_000
SAMPLE_SHARDS = 8  # the sample is spread over at most this many shards (first, last and evenly between)


def distribution(values: list[float]) -> Distribution:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values")
    q = np.percentile(v, [10, 50, 90])
    return Distribution(n=int(v.size), min=float(v.min()), p10=float(q[0]), median=float(q[1]), mean=float(v.mean()),
                        p90=float(q[2]), max=float(v.max()))


def _spread(urls: list[str]) -> list[str]:
    if len(urls) <= SAMPLE_SHARDS:
        return urls
    idx = np.unique(np.linspace(0, len(urls) - 1, SAMPLE_SHARDS).round().astype(int))
    return [urls[i] for i in idx]


def _sample_train(urls: list[str]) -> tuple[list[int], list[str]]:
    """Shorter sides of up to IMAGE_SAMPLE images and up to CAPTION_SAMPLE captions, spread over the shards."""
    from PIL import Image, UnidentifiedImageError

    from trainer.data.pipeline import decode_caption, image_bytes
    from trainer.data.reader import iter_shard_samples

    shards = _spread(urls)
    per_img = -(-IMAGE_SAMPLE // len(shards))
    per_cap = -(-CAPTION_SAMPLE // len(shards))
    sides: list[int] = []
    captions: list[str] = []
    for url in shards:
        n_img = n_cap = 0
        for sample in iter_shard_samples(url, 0, None):
            data = image_bytes(sample)
            if data is not None and n_img < per_img:
                try:
                    with Image.open(io.BytesIO(data)) as im:  # reads the header only
                        sides.append(min(im.size))
                    n_img += 1
                except (UnidentifiedImageError, OSError, ValueError):
                    pass  # the pipeline skips (and counts) undecodable images too
            if "txt" in sample and n_cap < per_cap:
                text = decode_caption(sample["txt"], {})
                if text:
                    captions.append(text)
                    n_cap += 1
            if n_img >= per_img and n_cap >= per_cap:
                break
    return sides, captions


def measure_profile(folder: Path) -> tuple[DataProfile, str]:
    """Measure ``folder``'s profile, cache it as ``folder/profile.json`` and say so in one line."""
    from trainer.data.pipeline import make_eval_source
    from trainer.data.reader import list_shards
    from trainer.data.tokenizer import find_tokenizer, load_tokenizer

    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise ClipaError("data", f"{folder} is not a folder")
    fingerprint = folder_fingerprint(folder)
    urls = list_shards(str(folder))  # DIR/*.tar or DIR/train/*.tar; a ClipaError names the folder when none
    eval_dir = folder / "eval"
    if not eval_dir.is_dir():
        raise ClipaError("eval_data", f"{folder} has no eval/ folder (the held-out split the pilot's runs are "
                                      "evaluated on: shards with jpg/txt/cls, or one subfolder of images per class)")
    source = make_eval_source(str(eval_dir), image_res=32)
    if not source.classnames:
        raise ClipaError("classes", f"{eval_dir} has no class names (add {folder}/classes.txt, one name per line)")
    eval_size = source.labelled_size()
    if eval_size == 0:
        raise ClipaError("eval_data", f"{eval_dir} holds no labelled images (webdataset samples need a 'cls')")
    sides, captions = _sample_train(urls)
    if not sides:
        raise ClipaError("data", f"no readable image in the training shards of {folder}")
    imgs = distribution([float(s) for s in sides])
    sources = {"n_classes": f"class names of {eval_dir}", "eval_size": f"labelled images in {eval_dir}",
               "resolution": f"median shorter side of {imgs.n} training images"}
    caption_tokens = None
    try:
        tok_path = find_tokenizer(None, str(folder / "train") if (folder / "train").is_dir() else str(folder))
        tok = load_tokenizer(tok_path)
    except (ClipaError, OSError, ValueError) as e:
        sources["caption_tokens"] = f"not measured: {e}"
    else:
        if captions:
            caption_tokens = distribution([len(tok.encode(c)) + 2.0 for c in captions])
            sources["caption_tokens"] = f"{len(captions)} training captions, tokenizer {tok_path}"
        else:
            sources["caption_tokens"] = "not measured: the training shards have no captions (txt)"
    prof = DataProfile(folder=str(folder), fingerprint=fingerprint, n_classes=len(source.classnames),
                       resolution=int(round(imgs.median)), image_sides=imgs, eval_size=eval_size,
                       train_shards=len(urls), caption_tokens=caption_tokens, sources=sources)
    path = profile_path(folder)
    try:
        from planner.store import atomic_write_text

        atomic_write_text(path, prof.model_dump_json(indent=2) + "\n")
        where = f"cached in {path}"
    except OSError as e:
        where = f"not cached: {path} is not writable ({e.strerror or e})"
    return prof, f"{folder}: measured the dataset once ({where}): {prof.summary()}"


def ensure_profile(folder: Path) -> tuple[DataProfile, str | None]:
    """The cached profile when it is fresh (no note), else a new measurement (with its note)."""
    prof = cached_profile(folder)
    if prof is not None:
        return prof, None
    return measure_profile(folder)


def record_extras(spec) -> dict[str, int]:
    """What a run's record carries from its data's cached profile: the native resolution (``data_res``); nothing
    for data without a profile (bucket URLs, folders never profiled)."""
    from planner.data_profile import dataset_root

    root = dataset_root(spec.data) if spec.data else None
    prof = cached_profile(root, check_fresh=False) if root is not None else None
    return {"data_res": prof.resolution} if prof is not None else {}
