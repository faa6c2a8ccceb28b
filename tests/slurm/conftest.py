"""Fixtures of the SLURM tests: a fresh fake SLURM (``fake_slurm.py``) per test, and one tiny generated dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_slurm, slurm_helpers

import fake_slurm  # noqa: E402


@pytest.fixture
def slurm(tmp_path):
    """(bin dir, state dir) of a fresh fake SLURM; its commands are found through PATH in the returned env."""
    bin_dir, state = tmp_path / "fake_bin", tmp_path / "fake_slurm"
    fake_slurm.install(bin_dir, state)
    return bin_dir, state


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from trainer.data.synth import write_synth

    out = tmp_path_factory.mktemp("slurm_data") / "tiny"
    write_synth(out, samples=96, eval_samples=64, resolution=16, shard_size=48, vocab_size=300)
    return out
