"""Binding data to a plan: where a run's training shards, evaluation set and tokenizer are, and whether it can run.

Locations come, in this order, from the command line (``--data``, ``--eval-data``, ``--tokenizer`` of ``clipa plan``
and ``clipa run``), from the dataset catalog (``datasets.yaml`` in the project root, the user's to edit: one entry
per dataset name with its ``data``, ``eval_data`` and ``tokenizer``), and for a ``clipa data synth`` folder given as
``--data DIR`` from its ``train/``, ``eval/`` and ``tokenizer.json``. Locations are not part of the run id
(``RunSpec.content``), so binding or re-binding data never changes which run a spec is.

``missing_bindings`` says what a spec still lacks to be executed, each with the option that supplies it; a plan
without data is still a plan (``clipa plan`` prints what is missing and exits 0). Importable without JAX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from planner import paths
from planner.datasets import canonical_dataset
from planner.errors import ClipaError, from_validation_error

CATALOG_FILE = "datasets.yaml"
BINDING_FIELDS = ("data", "eval_data", "tokenizer")
OPTION_OF = {"data": "--data", "eval_data": "--eval-data", "tokenizer": "--tokenizer"}


class Binding(BaseModel):
    """Where one dataset's files are. Any field may be absent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None = None  # training shards: folder, brace pattern, gs:// or s3:// URL
    eval_data: str | None = None  # ImageNet-1k val: wnid folders, or shards with a 'cls' label per sample
    tokenizer: str | None = None  # tokenizer.json (clipa data tokenizer)

    @field_validator("data", "eval_data", "tokenizer")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("an empty location; leave the field out instead")
        return v.strip() if v is not None else None

    def over(self, base: Binding) -> Binding:
        """This binding's fields where set, else ``base``'s."""
        return Binding(**{k: getattr(self, k) or getattr(base, k) for k in BINDING_FIELDS})

    def fields(self) -> dict[str, str]:
        return {k: v for k in BINDING_FIELDS if (v := getattr(self, k)) is not None}


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: dict[str, Binding] = {}


def catalog_path() -> Path:
    return paths.project_root() / CATALOG_FILE


def load_catalog(path: Path | None = None) -> dict[str, Binding]:
    """The dataset catalog ({canonical dataset name: Binding}); empty when the file does not exist."""
    path = path or catalog_path()
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClipaError("datasets", f"{path} is not readable YAML: {first}") from None
    if not isinstance(raw, dict):
        raise ClipaError("datasets", f"{path} must be a mapping with a 'datasets' section")
    try:
        cat = Catalog.model_validate(raw)
    except ValidationError as e:
        err = from_validation_error(e)
        raise ClipaError(f"{path.name}: {err.field}" if err.field else path.name, err.message) from None
    out = {}
    for name, binding in cat.datasets.items():
        out[canonical_dataset(name, field=f"{path.name}: datasets.{name}")] = binding
    return out


def _absolute(location: str) -> str:
    """URLs and brace patterns as given; local paths absolute, so a spec works from any directory."""
    if "://" in location:
        return location
    return str(Path(location).expanduser().absolute())


def _synth_root(location: str) -> Path | None:
    """A ``clipa data synth`` folder given as the data location (it holds train/ and dataset.json)."""
    if "://" in location or "{" in location:
        return None
    p = Path(location).expanduser()
    return p if (p / "train").is_dir() and (p / "dataset.json").exists() else None


def resolve_binding(dataset: str, data: str | None = None, eval_data: str | None = None,
                    tokenizer: str | None = None, catalog: dict[str, Binding] | None = None,
                    discover_tokenizer: bool = True) -> Binding:
    """The locations a spec for ``dataset`` gets: the options given, else the catalog's, else (for local data with a
    tokenizer.json beside it, unless ``discover_tokenizer`` is off) the discovered tokenizer. Local paths become
    absolute. Overrides of an existing plan (``clipa run/rehearse PLAN --data ...``) pass ``catalog={}`` and no
    discovery, so only what the user typed replaces what the plan wrote."""
    given = Binding(data=data, eval_data=eval_data, tokenizer=tokenizer)
    if given.data and (root := _synth_root(given.data)) is not None:  # `--data DIR` of a synth dataset
        split = Binding(eval_data=str(root / "eval") if (root / "eval").is_dir() else None,
                        tokenizer=str(root / "tokenizer.json") if (root / "tokenizer.json").exists() else None)
        given = Binding(data=str(root / "train"), eval_data=eval_data, tokenizer=tokenizer).over(split)
    cat = load_catalog() if catalog is None else catalog
    bound = given.over(cat.get(canonical_dataset(dataset), Binding()))
    if discover_tokenizer and bound.data and not bound.tokenizer and "://" not in bound.data:
        for folder in _beside(Path(bound.data).expanduser()):
            if (folder / "tokenizer.json").exists():
                bound = bound.over(Binding(tokenizer=str(folder / "tokenizer.json")))
                break
    return Binding(**{k: _absolute(v) for k, v in bound.fields().items()})


def _beside(p: Path) -> list[Path]:
    folder = p if p.is_dir() else p.parent
    return [folder, folder.parent]


def dataset_folder(binding: Binding) -> Path | None:
    """The local dataset folder (one with a ``train/`` folder: ``clipa data synth`` or a user's) that the bound
    training data lies in, or None (bucket data, or shards outside such a folder). Its measured profile
    (``planner.data_profile``) bounds the plan's resolutions."""
    if not binding.data or "://" in binding.data:
        return None
    for folder in _beside(Path(binding.data.split("{", 1)[0])):
        if (folder / "train").is_dir():
            return folder
    return None


def _local_missing(location: str) -> bool:
    if "://" in location:
        return False
    if "{" in location:  # a brace pattern: its folder must exist
        return not Path(location.split("{", 1)[0]).parent.exists()
    return not Path(location).exists()


def missing_bindings(spec: Any) -> list[dict[str, str]]:
    """What ``spec`` lacks to be executed: [{field, option, problem}], empty when it can run as it is."""
    out = []
    hints = {
        "data": "the training shards (a folder, a brace pattern like /data/{00000..00099}.tar, or a gs:// / s3:// URL)",
        "eval_data": "the evaluation set (ImageNet-1k val as wnid class folders, or webdataset shards with 'cls')",
        "tokenizer": "a tokenizer.json (train one on the data: clipa data tokenizer --data URL --out tokenizer.json)",
    }
    for field in BINDING_FIELDS:
        value = getattr(spec, field)
        if field == "tokenizer" and value is None and spec.data and "://" not in spec.data:
            # the trainer's default: a tokenizer.json beside (or above) local training data
            value = next((str(f / "tokenizer.json") for f in _beside(Path(spec.data))
                          if (f / "tokenizer.json").exists()), None)
        if value is None:
            out.append({"field": field, "option": OPTION_OF[field], "problem": f"no {field}: give {hints[field]}"})
        elif _local_missing(value):
            out.append({"field": field, "option": OPTION_OF[field], "problem": f"{value} does not exist"})
    return out


def bind_spec(spec: Any, binding: Binding) -> Any:
    """``spec`` with the binding's locations in place of its own (the run id does not change)."""
    from planner.spec import spec_from_dict

    if not binding.fields():
        return spec
    return spec_from_dict({**spec.model_dump(mode="json"), **binding.fields()})


def supply_command(target: str, missing: list[dict[str, str]], backend_options: list[str] = ()) -> str:
    """The command that executes ``target`` with what is missing supplied, on the backend ``backend_options`` name
    (``planner.hardware.run_backend_options``)."""
    args = [f"{m['option']} {m['option'].lstrip('-').upper().replace('-', '_')}" for m in missing]
    return " ".join(["clipa run", target, *args, *backend_options])
