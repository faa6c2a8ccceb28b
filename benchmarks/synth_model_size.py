"""Does a larger tower help on the generated data? mu/8, mini/8 and xs/8 trained side by side at one sample count.

Usage (from the repository root, a few CPU-minutes at the defaults):

    python benchmarks/synth_model_size.py --data /tmp/synth --samples 30000 [--classes fine] [--out result.json]

Generates the dataset when ``--data`` has none (``trainer.data.synth.write_synth``), then trains and evaluates each
model with the closed loop's ``execute_run`` (same batch, resolution, text length and samples for all: the data's
resolution, full 32-token captions, batch 64), in a throwaway ``CLIPA_HOME`` so nothing enters the project's
results. Prints one line per model (top-1, top-5, device-seconds) and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=30_000)
    ap.add_argument("--train-samples", type=int, default=30_000, help="dataset size when it is generated")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--classes", default="coarse", help="coarse (colour shape) or fine (texture colour shape)")
    ap.add_argument("--models", default="mu/8,mini/8,xs/8")
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="clipa-size-"))
    os.environ["CLIPA_HOME"] = str(home)
    from planner.pilot import PilotRun, _spec
    from planner.search import space_for
    from planner.hardware import get_hardware
    from trainer.closed_loop import execute_run
    from trainer.data.synth import write_synth

    if not (a.data / "dataset.json").exists():
        t0 = time.perf_counter()
        write_synth(a.data, samples=a.train_samples, resolution=a.resolution, eval_samples=2000,
                    classes=a.classes)
        print(f"generated {a.data} in {time.perf_counter() - t0:.1f} s", flush=True)
    res = json.loads((a.data / "dataset.json").read_text())["resolution"]
    hw = get_hardware("cpu-2core")
    space = space_for(hw, res)
    rows = []
    for model in a.models.split(","):
        run = PilotRun(model, res, a.text_len, a.samples, 0, 0.0, 0.0)
        spec = _spec(space, run, "local:synth", a.data, hw.name, "on-demand")
        t0 = time.perf_counter()
        r = execute_run(spec, home / "runs" / spec.run_id, progress=False).result
        rows.append({"model": model, "schedule": spec.schedule, "top1": r.top1, "top5": r.extra.get("top5"),
                     "device_s": r.device_hours * 3600, "wall_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    if a.out:
        a.out.write_text(json.dumps({"data": str(a.data), "classes": a.classes, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
