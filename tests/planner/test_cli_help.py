"""Every command's --help renders (help texts go through rich markup: a stray "[/...]" in one used to crash
`clipa run --help` and `clipa tpu run --help` with a MarkupError)."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from trainer.cli import build_app


def _command_paths() -> list[list[str]]:
    def walk(cmd, path: list[str]):  # typer vendors click: groups are recognised by their commands
        yield path
        if hasattr(cmd, "commands"):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(build_app()), []))


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "clipa")
def test_help_renders(path):
    result = CliRunner().invoke(build_app(), [*path, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Usage:" in result.output
