"""A deterministic synthetic data source (tests and benchmarks), and the data-source interface the loop relies on.

The interface (the input pipeline in ``trainer.data`` implements the real sources):

* ``source_factory(spec, stage_index, process_index, process_count) -> source``, called once per stage and process;
* ``source.next_batch() -> {"images": uint8 [B_local, R, R, 3], "tokens": int32 [B_local, text_len]}`` where
  ``B_local = stage.batch_size // process_count``, ``R = stage.image_res`` and ``text_len = stage.text_len`` (text
  reduction already applied);
* ``source.get_state() -> dict`` (JSON-serialisable): the position *after the last batch returned*; and
  ``source.set_state(dict)``, after which ``next_batch()`` continues exactly from there;
* optional attributes ``vocab_size`` and ``eot_id`` (or a ``tokenizer`` that has them), used when the caller
  does not give them; without any, the spec's tokenizer file, else the variant's vocabulary.

Here, sample ``i`` of step ``s`` of stage ``k`` has the global index ``g = s * batch + i`` and its content is a pure
function of ``(seed, k, g)``: a class ``c`` drawn from it, an image made of the class's colour pattern plus noise, and a
caption ``[c + 1, random words..., EOT]``. So a model can learn something (loss falls), every process computes its own
rows without coordination, and the state is just the step counter.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from planner.spec import RunSpec

PATTERN_CELLS = 2  # class patterns are 2x2 colour grids, upsampled to the stage's resolution (any resolution works)


class SyntheticSource:
    def __init__(self, spec: RunSpec, stage_index: int, process_index: int = 0, process_count: int = 1, *,
                 num_classes: int = 16, vocab_size: int = 256, noise: float = 24.0, delay_s: float = 0.0):
        st = spec.stages[stage_index]
        if st.batch_size % process_count:
            raise ValueError(f"batch {st.batch_size} does not split over {process_count} processes")
        if vocab_size < num_classes + 3:
            raise ValueError("vocab_size must leave room for the class words, other words and EOT")
        self.seed = spec.seed
        self.stage_index = stage_index
        self.batch = st.batch_size
        self.local = st.batch_size // process_count
        self.offset = process_index * self.local
        self.res = st.image_res
        self.text_len = st.text_len
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.eot_id = vocab_size - 1
        self.noise = noise
        self.delay_s = delay_s  # simulate a slow input pipeline (benchmarks; tests that need to catch a run mid-way)
        self.step = 0
        protos = np.random.default_rng([self.seed, 7919]).integers(
            0, 256, (num_classes, PATTERN_CELLS, PATTERN_CELLS, 3)
        )
        rep = -(-self.res // PATTERN_CELLS)
        self._patterns = np.repeat(np.repeat(protos, rep, axis=1), rep, axis=2)[:, : self.res, : self.res].astype(
            np.float32
        )

    def sample_indices(self, step: int) -> np.ndarray:
        """Global indices (within the stage) of this process's rows at ``step``."""
        return step * self.batch + self.offset + np.arange(self.local)

    def sample(self, g: int) -> tuple[np.ndarray, np.ndarray, int]:
        rng = np.random.default_rng([self.seed, self.stage_index, int(g)])
        c = int(rng.integers(self.num_classes))
        img = self._patterns[c] + rng.normal(0.0, self.noise, (self.res, self.res, 3))
        toks = rng.integers(self.num_classes + 1, self.vocab_size - 1, self.text_len)
        toks[0] = c + 1
        toks[-1] = self.eot_id
        return np.clip(img, 0, 255).astype(np.uint8), toks.astype(np.int32), c

    def next_batch(self) -> dict[str, np.ndarray]:
        if self.delay_s:
            time.sleep(self.delay_s)
        imgs = np.empty((self.local, self.res, self.res, 3), np.uint8)
        toks = np.empty((self.local, self.text_len), np.int32)
        for j, g in enumerate(self.sample_indices(self.step)):
            imgs[j], toks[j], _ = self.sample(g)
        self.step += 1
        return {"images": imgs, "tokens": toks}

    def get_state(self) -> dict[str, Any]:
        return {"kind": "synthetic", "stage": self.stage_index, "step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "synthetic" or state.get("stage") != self.stage_index:
            raise ValueError(f"not a synthetic source state for stage {self.stage_index}: {state}")
        self.step = int(state["step"])


def make_synthetic_source(spec: RunSpec, stage_index: int, process_index: int = 0, process_count: int = 1,
                          **kwargs) -> SyntheticSource:
    """The synthetic source factory (``train(..., source_factory=make_synthetic_source)``)."""
    return SyntheticSource(spec, stage_index, process_index, process_count, **kwargs)


def synthetic_factory(**kwargs):
    """A factory with non-default synthetic settings, e.g. ``synthetic_factory(delay_s=0.05)``."""

    def factory(spec, stage_index, process_index, process_count):
        return SyntheticSource(spec, stage_index, process_index, process_count, **kwargs)

    return factory
