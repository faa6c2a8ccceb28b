"""A local dataset's profile: what the pilot, the local study and the plan take from the data itself.

``DataProfile`` (pydantic, ``extra="forbid"``) holds the class count of the evaluation set (its class names), the
native image resolution (from a sample of training images), the evaluation split's size and the distribution of
caption lengths in tokens. It is measured once by ``trainer.data.profile`` and cached beside the data as
``DIR/PROFILE_FILE``, keyed by a fingerprint of the folder's files (names, sizes, modification times), so a changed
folder is measured again.

The planner never imports the trainer, so it only *reads* profiles here. ``profile_for`` measures a missing or stale
one through a measurer the trainer registers (``set_measurer``, done when the ``clipa`` console script registers
``clipa data``); without one (the planner used as a library) a folder without a profile is an error naming the
command that makes it, never the generated set's defaults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.errors import ClipaError

PROFILE_FILE = "profile.json"
PROFILE_SCHEMA_VERSION = 1
# the files whose change makes a cached profile stale (shards are found in train/ and eval/)
_META_FILES = ("classes.txt", "templates.txt", "tokenizer.json", "dataset.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Strict):
    """Summary of a sample of values (image sides in pixels, caption lengths in tokens)."""

    n: int = Field(ge=0)
    min: float
    p10: float
    median: float
    mean: float
    p90: float
    max: float


class DataProfile(_Strict):
    """What a local dataset folder holds, as measured; every field says where it came from in ``sources``."""

    schema_version: Literal[1] = PROFILE_SCHEMA_VERSION
    folder: str
    fingerprint: str
    n_classes: int = Field(ge=1, description="class names of the evaluation set (chance = 100 / n_classes %)")
    resolution: int = Field(ge=1, description="native image side: the median shorter side of the sampled images")
    image_sides: Distribution = Field(description="shorter side (px) of the sampled training images")
    eval_size: int = Field(ge=0, description="labelled images in the evaluation split")
    train_shards: int = Field(ge=0)
    caption_tokens: Distribution | None = Field(
        default=None, description="caption length in tokens incl. start/end (what a stage's text_len must hold); "
                                  "None without a tokenizer")
    sources: dict[str, str] = Field(default_factory=dict, description="field -> where it was read or measured")

    def summary(self) -> str:
        """One line: what the pilot will use."""
        cap = (f"captions {self.caption_tokens.median:g} tokens median (p90 {self.caption_tokens.p90:g}, "
               f"max {self.caption_tokens.max:g})" if self.caption_tokens else "caption lengths unknown (no tokenizer)")
        return (f"{self.n_classes} classes (chance {100.0 / self.n_classes:.2f}%), native {self.resolution} px, "
                f"eval {self.eval_size} images, {cap}")


Measurer = Callable[[Path], tuple[DataProfile, str | None]]
_measurer: Measurer | None = None


def set_measurer(fn: Measurer | None) -> None:
    """Register the function that measures (and caches) a folder's profile: (profile, note or None)."""
    global _measurer
    _measurer = fn


def profile_path(folder: Path) -> Path:
    return Path(folder) / PROFILE_FILE


def folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of the folder's shards (train/, eval/) and metadata files."""
    folder = Path(folder)
    h = hashlib.sha256()
    paths = [folder / n for n in _META_FILES]
    for split in ("train", "eval"):
        d = folder / split
        if d.is_dir():
            paths += sorted(d.glob("*.tar"))
            # an image-folder evaluation split (class subfolders): the folder names and file counts
            paths += sorted(p for p in d.iterdir() if p.is_dir())
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        size = sum(1 for _ in p.iterdir()) if p.is_dir() else st.st_size
        h.update(f"{p.relative_to(folder)}:{size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached_profile(folder: Path, check_fresh: bool = True) -> DataProfile | None:
    """The cached profile of ``folder`` (None when there is none, it is unreadable, or the folder changed since)."""
    path = profile_path(folder)
    try:
        prof = DataProfile.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError):
        return None
    if check_fresh and prof.fingerprint != folder_fingerprint(folder):
        return None
    return prof


def dataset_root(path: str | Path) -> Path | None:
    """The dataset folder a spec's data or eval_data path belongs to (DIR for DIR, DIR/train, DIR/eval); None for
    bucket URLs and patterns."""
    s = str(path)
    if "://" in s or any(c in s for c in "{*?["):
        return None
    p = Path(s)
    if p.suffix == ".tar":
        p = p.parent
    return p.parent if p.name in ("train", "eval") else p


def profile_for(data_dir: Path) -> tuple[DataProfile, str | None]:
    """The profile of a local dataset folder, and a one-line note when it had to be measured now.

    Cached and fresh: returned as it is. Otherwise measured through the registered measurer (which caches it);
    without a measurer, a ClipaError naming the command that measures it."""
    data_dir = Path(data_dir).absolute()
    prof = cached_profile(data_dir)
    if prof is not None:
        return prof, None
    if _measurer is None:
        raise ClipaError("data", f"{data_dir} has no measured profile ({PROFILE_FILE}); measure it with: "
                                 f"clipa data check {data_dir}")
    return _measurer(data_dir)


def profile_dict(prof: DataProfile) -> dict:
    return json.loads(prof.model_dump_json())
