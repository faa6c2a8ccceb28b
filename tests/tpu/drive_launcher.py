"""Runs ``run_on_tpu`` in its own process (main thread, real signal handling) for the interrupt tests.

argv: ENDPOINT SPEC RUN_DIR BUCKET_DIR VMS_DIR. Workers are local processes running worker_script.py. Exits 0 on
success, 1 on failure and 130 when interrupted (after the launcher's teardown), like the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tpu_helpers import WORKER_SCRIPT, fast_options

from trainer.tpu.api import connect
from trainer.tpu.launcher import run_on_tpu
from trainer.tpu.workers import LocalExec


def main() -> int:
    endpoint, spec, run_dir, bucket, vms = sys.argv[1:6]
    options = fast_options(Path(bucket), slice=16)
    api = connect(options.project, options.zone, endpoint, timeout_s=10.0, lro_poll_initial_s=0.01,
                  lro_poll_max_s=0.05)
    try:
        outcome = run_on_tpu(spec, run_dir, options, api=api, workers=LocalExec(Path(vms)),
                             worker_entry=[str(WORKER_SCRIPT)])
    except KeyboardInterrupt:
        return 130
    return 0 if outcome.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
