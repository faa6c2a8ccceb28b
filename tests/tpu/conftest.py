"""Fixtures for the TPU launcher tests: the fake Cloud TPU API on 127.0.0.1 and a client connected to it.

Everything runs on this machine: the real ``TpuClient`` talks to ``trainer.tpu.fake_server`` over a real insecure
gRPC channel, and workers are local subprocesses (``LocalExec``) running ``worker_script.py`` or the real trainer.
"""

from __future__ import annotations

import pytest
from tpu_helpers import PROJECT, ZONE

from trainer.tpu.fake_server import FakeConfig, FakeTpuServer


@pytest.fixture
def fake_config() -> FakeConfig:
    return FakeConfig()


@pytest.fixture
def fake(fake_config):
    with FakeTpuServer(fake_config) as server:
        yield server


@pytest.fixture
def tpu_api(fake):
    from trainer.tpu.api import connect

    return connect(PROJECT, ZONE, fake.address, timeout_s=10.0, lro_poll_initial_s=0.01, lro_poll_max_s=0.05)
