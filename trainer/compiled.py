"""The process's cache of compiled (jitted) programs: the train step, state creation, parameter initialisation and
the evaluation embeddings, each built once per configuration.

Several runs in one process (tests, sweeps, a resume in the same process, a benchmark) then compile each shape once.
Keys hold only hashable, frozen descriptions (model configs, stages, train options, meshes) and say what the program
is as their first element. ``clear()`` forgets every program (benchmarks that measure compile time).
"""

from __future__ import annotations

from collections.abc import Callable

_PROGRAMS: dict[tuple, Callable] = {}


def cached(key: tuple, build: Callable[[], Callable]) -> Callable:
    """The program for ``key``, built by ``build()`` the first time it is asked for."""
    fn = _PROGRAMS.get(key)
    if fn is None:
        fn = _PROGRAMS[key] = build()
    return fn


def clear() -> None:
    _PROGRAMS.clear()
