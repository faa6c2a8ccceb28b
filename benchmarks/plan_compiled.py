"""Issue 15's real-size check: ``clipa plan --budget 10000 --hardware tpu-v5e --pricing spot --slice 256 --deadline
14d --json`` with libtpu installed, from an empty compile cache, so every stage of the chosen plan is compiled for
v5e:16x16 on this machine (and re-chosen where the compiler puts it over HBM).

Writes ``benchmarks/results/plan_v5e_256.json``: the command, its wall seconds, the chosen plan's per-stage settings
and compiled peaks, the plan's notes. ``benchmarks/fit_report.py --write`` puts it into ``FIT_CHECK.md``.

    .venv/bin/python benchmarks/plan_compiled.py      # needs the test extra (libtpu); ~10 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ARGS = ["plan", "--budget", "10000", "--hardware", "tpu-v5e", "--pricing", "spot", "--slice", "256", "--deadline",
        "14d", "--json"]


def main() -> None:
    import libtpu  # noqa: F401  (the point of the check: the compiled path)

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CLIPA_HOME": f"{tmp}/home", "CLIPA_FIT_CACHE": f"{tmp}/cache"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "from trainer.cli import main; main()", *ARGS],
                              cwd=ROOT.parent, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"clipa plan exited {proc.returncode}: {proc.stderr[-2000:]}")
    body = json.loads(proc.stdout)
    c = body["chosen"]
    out = {"command": "clipa " + " ".join(ARGS), "seconds": round(seconds, 1),
           "ran": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "chosen": {k: c[k] for k in ("model", "schedule", "cost_usd", "compute_usd", "wall_clock_hours", "chips",
                                         "sharding", "predicted_top1", "interval")},
           "stages": [{k: s.get(k) for k in ("per_device_batch", "micro_batch", "remat", "peak_memory_gb",
                                             "analytic_peak_memory_gb", "memory_limit_gb", "memory_source", "fits",
                                             "compile_s")} for s in c["stages"]],
           "notes": body.get("notes", []),
           "stderr": [ln for ln in proc.stderr.splitlines() if ln.startswith(("compiling", "error", "note"))]}
    path = ROOT / "results" / "plan_v5e_256.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
