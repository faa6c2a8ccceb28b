"""Subprocess driver for the resume tests: ``python _train_worker.py SPEC RUN_DIR DELAY_S``.

Trains SPEC in RUN_DIR on synthetic batches, each delayed by DELAY_S seconds (so that a test can interrupt the run
at a step of its choosing); exits with 128 + the signal number after SIGTERM/SIGINT, like ``clipa train``.
"""

from __future__ import annotations

import json
import sys

from planner.spec import load_spec
from trainer.loop import TrainingInterrupted, train
from trainer.synthetic import synthetic_factory


def main() -> int:
    spec = load_spec(sys.argv[1])
    try:
        result = train(spec, sys.argv[2], synthetic_factory(delay_s=float(sys.argv[3])), progress=False)
    except TrainingInterrupted as e:
        print(json.dumps({"interrupted": e.global_step}), flush=True)
        return 128 + e.signum
    print(json.dumps({"global_step": result.global_step, "final_loss": result.final_loss}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
