"""Where the project's data folders are: ``budgets/``, ``results/``, ``plans/``.

By default the folders beside the installed packages (the repository, for an editable install); ``CLIPA_HOME``
points them elsewhere (tests use it to keep their writes out of the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    home = os.environ.get("CLIPA_HOME")
    return Path(home).resolve() if home else PACKAGE_ROOT


def budgets_dir() -> Path:
    """Catalog data ships with the code; CLIPA_HOME may override it only if it has its own copy."""
    own = project_root() / "budgets" / "hardware.yaml"
    return own.parent if own.exists() else PACKAGE_ROOT / "budgets"


def results_dir() -> Path:
    return project_root() / "results"


def published_dir() -> Path:
    own = project_root() / "results" / "published"
    return own if own.exists() else PACKAGE_ROOT / "results" / "published"


def runs_dir() -> Path:
    return results_dir() / "runs"


def fits_dir() -> Path:
    return results_dir() / "fits"


def plans_dir() -> Path:
    return project_root() / "plans"
