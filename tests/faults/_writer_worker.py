"""One of the concurrent writers of test_store_concurrency: writes ``count`` results with seeds offset+0..count-1
into RUNS_DIR (planner.runs.write_result), released together by a start file so the writes overlap."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from planner.runs import RunResult, utcnow, write_result
from planner.spec import spec_from_dict

runs_dir, offset, count, go = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
base = {"model": "mu/8", "dataset": "local:tiny", "hardware": "cpu-2core", "pricing": "on-demand",
        "stages": [{"samples": 64, "batch_size": 8, "image_res": 16, "text_len": 4, "lr_base": 0.01,
                    "init": "scratch"}]}
results = []
for i in range(count):
    spec = spec_from_dict({**base, "seed": offset + i})
    now = utcnow()
    results.append(RunResult(run_id=spec.run_id, spec=spec, eval_task="zeroshot:local:tiny", started_at=now,
                             finished_at=now, wall_seconds=1.0, device_hours=0.001, cost_usd=0.0001,
                             samples_per_second=8.0, mfu=0.01, top1=float((offset + i) % 100),
                             extra={"writer": offset // count, "pad": "x" * 2000}))
while not go.exists():
    time.sleep(0.001)
for r in results:
    write_result(r, runs_dir)
print(len(results))
