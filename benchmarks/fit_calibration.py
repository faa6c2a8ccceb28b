"""Compiled per-device memory of the real train step on a grid of TPU shapes: the data the analytic model is checked on.

Each grid point is one stage (model, resolution, text length, global batch, micro-batch, remat) compiled for a v5e
topology with ``trainer.fit_check.compile_stage`` (libtpu, no TPU needed). The result per point: peak, argument,
temp bytes per device, compiled FLOPs against ``planner.flops``, compile seconds. Points run one after another in
this one process (libtpu's lock allows one process) and the JSON is rewritten after each, so a stopped run keeps
what it measured. ``benchmarks/fit_report.py`` (and a fast test) compare these with ``planner.memory``.

    .venv/bin/python benchmarks/fit_calibration.py [--only B/16] [--resume] [--out benchmarks/results/fit_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

# (model, image_res, text_len, global batch, micro_batch, remat, topology chips, sharding)
GRID = [
    ("S/16", 112, 16, 1024, None, "none", 4, "data"),
    ("S/16", 224, 32, 256, None, "none", 4, "data"),
    ("S/16", 224, 32, 512, None, "none", 4, "data"),
    ("B/16", 224, 32, 256, None, "none", 4, "data"),
    ("B/16", 112, 16, 1024, None, "none", 4, "data"),
    ("B/16", 160, 32, 512, None, "none", 4, "data"),
    ("B/16", 224, 32, 256, None, "full", 4, "data"),
    ("B/16", 224, 32, 512, 256, "none", 4, "data"),
    # session 2026-12-04: dots remat (uncalibrated until then), and the regime a $10k spot plan on v5e-256 chooses
    # (bigG/14, FSDP, dots, micro-batches), where the first constants put two stages under 16 GB that the compiler
    # puts over it
    ("B/16", 224, 32, 256, None, "dots", 4, "data"),
    ("B/16", 112, 16, 1024, None, "dots", 4, "data"),
    ("S/16", 224, 32, 512, None, "dots", 4, "data"),
    ("H/14", 84, 8, 4096, None, "dots", 16, "fsdp"),
    ("bigG/14", 56, 8, 65536, 16384, "dots", 256, "fsdp"),
    ("bigG/14", 224, 32, 32768, 2048, "dots", 256, "fsdp"),
    ("bigG/14", 56, 8, 65536, 8192, "none", 256, "fsdp"),
]


def _key(p: dict) -> tuple:
    return (p["model"], p["image_res"], p["text_len"], p["batch_size"], p["micro_batch"], p["remat"], p["chips"],
            p.get("sharding", "data"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="only this model")
    ap.add_argument("--out", default=str(ROOT / "results" / "fit_calibration.json"))
    ap.add_argument("--resume", action="store_true", help="keep the points already in --out, compile the others")
    args = ap.parse_args()

    import jax
    import libtpu

    from planner.flops import stage_flops
    from planner.hardware import get_hardware
    from planner.spec import spec_from_dict
    from trainer.fit_check import compile_stage

    hw = get_hardware("tpu-v5e")
    out = {"benchmark": "fit_calibration", "host": platform.node(), "jax": jax.__version__,
           "libtpu": getattr(libtpu, "__version__", "?"), "hardware": hw.name, "hbm_gb": hw.memory_gb,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "points": []}
    done: set[tuple] = set()
    if args.resume and Path(args.out).exists():  # keep what earlier runs measured; compile only the new points
        prev = json.loads(Path(args.out).read_text())
        out["points"] = prev["points"]
        out["started"] = prev.get("started", out["started"])
        done = {_key(p) for p in out["points"]}
    for model, res, text, batch, micro, remat, chips, sharding in GRID:
        if (args.only and model != args.only) or (model, res, text, batch, micro, remat, chips, sharding) in done:
            continue
        stage = {"samples": 10_000_000, "batch_size": batch, "image_res": res, "text_len": text, "lr_base": 1e-5,
                 "init": "scratch", "micro_batch": micro, "remat": remat}
        spec = spec_from_dict({"model": model, "dataset": "datacomp-1b", "hardware": hw.name, "pricing": "spot",
                               "stages": [stage], "train": {"sharding": sharding}})
        r = compile_stage(spec, 0, hw, chips, use_cache=False)
        planner_flops = stage_flops(model, spec.stages[0]).train_per_sample * batch
        row = {"model": model, "image_res": res, "text_len": text, "batch_size": batch, **r.model_dump(mode="json"),
               "planner_flops_per_step": planner_flops,
               "compiled_over_planner_flops": (r.flops_per_device * chips / planner_flops) if r.flops_per_device else None}
        out["points"].append(row)
        print(json.dumps({k: row[k] for k in ("model", "image_res", "text_len", "batch_size", "micro_batch", "remat",
                                                "peak_bytes", "compile_s", "compiled_over_planner_flops")}), flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
