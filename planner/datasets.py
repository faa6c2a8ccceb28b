"""Dataset names the planner and trainer understand.

Named web-scale datasets carry what the accuracy model needs to know about them (size); anything else is a local
dataset, written ``local:NAME`` (for example one made by ``clipa data synth``), which the accuracy model treats as a
new dataset until results on it exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from planner.errors import ClipaError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    unique_samples: int
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "laion-80m": DatasetInfo("laion-80m", 80_000_000, "LAION-400M subset used by the OpenCLIP scaling study"),
    "laion-400m": DatasetInfo("laion-400m", 400_000_000, "LAION-400M (Schuhmann et al. 2021)"),
    "laion-2b": DatasetInfo("laion-2b", 2_320_000_000, "LAION-2B English subset of LAION-5B"),
    "datacomp-1b": DatasetInfo("datacomp-1b", 1_400_000_000, "DataComp-1B (Gadre et al. 2023), filtered CommonPool"),
}

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ALIASES = {"laion400m": "laion-400m", "laion2b": "laion-2b", "datacomp1b": "datacomp-1b", "laion80m": "laion-80m"}


def canonical_dataset(name: str, field: str = "dataset") -> str:
    """Canonical dataset name, or a ClipaError naming ``field``."""
    if not isinstance(name, str) or not name:
        raise ClipaError(field, "dataset name is empty")
    key = name.strip().lower()
    key = _ALIASES.get(key.replace("-", "").replace("_", ""), key)
    if key in DATASETS:
        return key
    if key.startswith("local:"):
        local = name.strip()[len("local:"):]
        if not SAFE_NAME.match(local):
            raise ClipaError(field, f"local dataset name {local!r} must be letters, digits, '.', '_' or '-'")
        return f"local:{local}"
    known = ", ".join(list(DATASETS) + ["local:NAME"])
    raise ClipaError(field, f"unknown dataset {name!r} (known: {known})")


def is_local(name: str) -> bool:
    return name.startswith("local:")


IMAGENET_TASK = "imagenet-1k"


def eval_task(dataset: str) -> str:
    """What a run's top-1 on ``dataset`` measures (a run record's ``eval_task``, and the study its results belong
    to, ``planner.studies``): zero-shot ImageNet-1k for every web-scale dataset, the dataset's own held-out split
    (``zeroshot:local:NAME``) for a local one."""
    return f"zeroshot:{dataset}" if is_local(dataset) else IMAGENET_TASK
