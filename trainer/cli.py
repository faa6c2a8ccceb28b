"""The ``clipa`` console script: the planner's commands plus the trainer's, registered without importing JAX.

This is the one place commands are composed: ``planner.cli`` holds the app with its own commands, and every other
command module, the planner's (``planner.cli_model``) as well as the trainer's, is listed in ``REGISTRARS`` and has a
``register(app)`` function adding its commands. The planner's modules cannot register themselves without
``planner.cli`` importing them (an import cycle: they use its options); the trainer's must not be imported by the
planner at all. Command bodies import JAX lazily, so ``clipa plan`` starts in well under a second.
"""

from __future__ import annotations

import importlib
import sys

from planner.cli import app, run_app

# module paths with a register(app: typer.Typer) -> None function
REGISTRARS: list[str] = [
    "trainer.tpu.cli",
    "trainer.train_cli",
    "trainer.data.cli",
    "planner.cli_model",
    "trainer.run_cli",
    "trainer.pilot_cli",
    "trainer.rehearse_cli",
    "trainer.export.cli",
    "trainer.fit_check_cli",
]

_registered = False


def build_app():
    global _registered
    if not _registered:
        for mod in REGISTRARS:
            importlib.import_module(mod).register(app)
        _registered = True
    return app


def main(argv: list[str] | None = None) -> None:
    build_app()
    sys.exit(run_app(argv))


if __name__ == "__main__":
    main()
