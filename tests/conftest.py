"""Shared test setup: every test writes under its own CLIPA_HOME, never into the repository's results/ or plans/."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "clipa_home"
    home.mkdir()
    monkeypatch.setenv("CLIPA_HOME", str(home))
    return home
