"""Fixtures for the TPU launcher tests: the fake Cloud TPU API on 127.0.0.1 and a client connected to it.

Everything runs on this machine: the real ``TpuClient`` talks to the fake server (``fake_server.py`` here) over a
real insecure gRPC channel, and workers are local subprocesses (``LocalExec``) running ``worker_script.py`` or the
real trainer. Commands reach them the way a user would point them elsewhere: ``fake`` sets ``CLIPA_TPU_ENDPOINT``,
``local_workers`` sets ``CLIPA_TPU_LOCAL_WORKERS``.
"""

from __future__ import annotations

import pytest
from tpu_helpers import PROJECT, ZONE

from fake_server import FakeConfig, FakeTpuServer

from trainer.tpu.api import ENDPOINT_ENV
from trainer.tpu.launcher import LOCAL_WORKERS_ENV


@pytest.fixture
def fake_config() -> FakeConfig:
    return FakeConfig()


@pytest.fixture
def fake(fake_config, monkeypatch):
    with FakeTpuServer(fake_config) as server:
        monkeypatch.setenv(ENDPOINT_ENV, server.address)
        yield server


@pytest.fixture
def local_workers(tmp_path, monkeypatch):
    """The folder the commands' TPU workers run in as local processes (one sub-folder per node and worker)."""
    monkeypatch.setenv(LOCAL_WORKERS_ENV, str(tmp_path / "vms"))
    return tmp_path / "vms"


@pytest.fixture
def tpu_api(fake):
    from trainer.tpu.api import connect

    return connect(PROJECT, ZONE, fake.address, timeout_s=10.0, lro_poll_initial_s=0.01, lro_poll_max_s=0.05)
