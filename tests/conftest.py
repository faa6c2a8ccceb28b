"""Shared test setup: every test writes under its own CLIPA_HOME, never into the repository's results/ or plans/."""

from __future__ import annotations

import signal

import pytest

# A suite started in the background by a non-interactive shell (`bash .ci/run &`) inherits SIGINT ignored, and a
# child process keeps an ignored signal across exec: the Ctrl-C tests' launchers would then never see their SIGINT
# (three failed that way in a backgrounded rehearsal). A Python handler here is reset to the default in children.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "clipa_home"
    home.mkdir()
    monkeypatch.setenv("CLIPA_HOME", str(home))
    return home


# Hypothesis: CI explores the same inputs on every run (a submission must not pass or fail by luck) and never
# fails on timing, since CI machines are shared; locally the default profile explores new inputs each run.
from hypothesis import settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if __import__("os").environ.get("CI"):
    _hyp_settings.load_profile("ci")
