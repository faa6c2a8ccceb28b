"""ImageNet-1k validation as users have it: the two layouts clipa reads, and the check that names the expected one.

(a) A folder of class subfolders named by WordNet id (``val/n01440764/*.JPEG``, the layout of the official tarball
    after the usual valprep script): 1000 folders, class order = sorted wnids = the standard class index order, so the
    class names are OpenAI CLIP's curated ImageNet names in that order (``trainer/assets/imagenet_classes.txt``).
(b) Webdataset shards with an integer class label per sample (``cls``, or ``json`` with ``label``/``cls``), the
    layout CLIP_benchmark and img2dataset users produce; without a ``classes.txt`` beside them the labels are taken as
    ImageNet-1k indices.

Reading is ``trainer.data.pipeline.EvalSource``; this module owns the layout rules and their one-line errors.
"""

from __future__ import annotations

import re
from pathlib import Path

from planner.errors import ClipaError

WNID_RE = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000
EXPECTED_LAYOUT = ("expected ImageNet-1k val as class subfolders named by WordNet id (val/n01440764/*.JPEG, 1000 of "
                   "them) or webdataset shards (*.tar) with an integer class label per sample ('cls')")


def is_wnid(name: str) -> bool:
    return bool(WNID_RE.match(name))


def check_class_folders(root: Path, classes: list[str]) -> bool:
    """Whether ``classes`` (sorted subfolder names) are ImageNet's wnids; a ClipaError for a partial wnid layout."""
    if not classes:
        raise ClipaError("eval_data", f"{root} has neither shards nor class subfolders: {EXPECTED_LAYOUT}")
    wnids = [c for c in classes if is_wnid(c)]
    if not wnids:
        return False  # a generic class-folder set (names from the folders or a classes.txt)
    if len(wnids) != len(classes) or len(wnids) != IMAGENET_CLASSES:
        other = [c for c in classes if not is_wnid(c)][:2]
        raise ClipaError("eval_data", f"{root} has {len(wnids)} WordNet-id folders"
                                      + (f" and others ({', '.join(other)})" if other else "")
                                      + f": {EXPECTED_LAYOUT}")
    return True
