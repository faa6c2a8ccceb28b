"""How long ``clipa rehearse`` takes on the $10k plan (DataComp-1B, g/14 or bigG/14, three stages) bound to a
generated dataset: wall and CPU seconds, per check. The issue's target is under 5 minutes on the 2-core machine.

    .venv/bin/python benchmarks/bench_rehearse.py [--out benchmarks/results/rehearse.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIPA = [sys.executable, "-c", "from trainer.cli import main; main()"]


def _clipa(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(CLIPA + args, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rehearse.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        env = {**os.environ, "CLIPA_HOME": str(t / "home")}
        (t / "home").mkdir()
        _clipa(["data", "synth", "--out", str(t / "D"), "--samples", "600", "--eval-samples", "300",
                "--shard-size", "200"], env)
        _clipa(["plan", "--budget", "10000", "--data", str(t / "D" / "train"), "--eval-data", str(t / "D" / "eval"),
                "--tokenizer", str(t / "D" / "tokenizer.json"), "--out", str(t / "P")], env)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        body = json.loads(_clipa(["rehearse", str(t / "P"), "--json"], env))
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpus": os.cpu_count(),
           "load_avg_1m": round(os.getloadavg()[0], 2), "runs": body["runs"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("wall_s", "cpu_s", "cpus", "load_avg_1m")}))


if __name__ == "__main__":
    main()
