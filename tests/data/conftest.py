"""Fixtures for the input-pipeline tests: one small synth dataset per session (a few seconds), written to tmp."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from trainer.data.synth import write_synth

    out = tmp_path_factory.mktemp("synth")
    write_synth(out, samples=240, eval_samples=64, resolution=64, seed=7, shard_size=40, vocab_size=600)
    return out


@pytest.fixture(scope="session")
def synth_tokenizer(synth_dir):
    from trainer.data.tokenizer import load_tokenizer

    return load_tokenizer(synth_dir / "tokenizer.json")
