"""Fail when an installed distribution is missing from the lock file or installed at another version.

pip's constraints pin only what is listed: a dependency added to pyproject.toml without `bash .ci/lock` would be
installed at whatever the registry serves that day. This check makes that a CI failure that names the package.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock_path: str) -> int:
    locked = {}
    for line in open(lock_path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            locked[canon(name)] = version.strip()
    problems = []
    for dist in metadata.distributions():
        name = canon(dist.metadata["Name"])
        if name in ("clipa", "pip", "setuptools", "wheel"):
            continue
        if name not in locked:
            problems.append(f"{name} {dist.version} is installed but not in {lock_path} (run: bash .ci/lock)")
        elif locked[name] != dist.version:
            problems.append(f"{name} is {dist.version}, {lock_path} says {locked[name]}")
    for p in sorted(problems):
        print(p, file=sys.stderr)
    if not problems:
        print(f"{lock_path}: all {len(locked)} locked distributions installed at their locked versions")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
