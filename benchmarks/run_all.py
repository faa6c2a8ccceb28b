"""Run every benchmark side by side (one process tree) and write ``benchmarks/REPORT.md`` + ``results/report.json``.

    .venv/bin/python benchmarks/run_all.py            # full run (~25-30 min on the 2-core CPU machine)
    .venv/bin/python benchmarks/run_all.py --quick    # every figure in reduced form (~5 min)
    .venv/bin/python benchmarks/run_all.py --report-only [--quick]   # re-render from the result files
    .venv/bin/python benchmarks/run_all.py --only peak,planner        # some steps, then the report

Each step is a fresh interpreter (``benchmarks/bench_*.py``, the input-pipeline engineer's
``benchmarks/input_pipeline.py``, and ``benchmarks/gpu_train_step.py --smoke``) run one after another, never in
parallel (they would contend for the same 2 cores). Every step writes its raw JSON to ``benchmarks/results/``
(``quick_*.json`` for a quick run, so a quick run does not overwrite the full run's raw data); the report is then
built from those files only (``bench_report.py``). Timing policy (``bench_common``): medians of several samples; a
sample is *contended* when other processes used more than 0.25 of a core meanwhile; contended figures are
re-measured (up to a time budget per figure) and, when no clean sample came, flagged in the report, which then also
gives the CPU-time-based estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402

PY = sys.executable
RESULTS = bc.RESULTS

# ---- the plan -------------------------------------------------------------------------------------------------------
# Train-step grid: CLIPA-style stages pair the resolution with the text length (224/32, 112/16, 64/8).
GRID = [(224, 32), (112, 16), (64, 8)]
LOCAL_VOCAB = 1024  # the local closed loop's tokenizer (trainer.data.synth); larger towers use the variant's 32k


def tiny_grid(quick: bool) -> list[dict]:
    """mu/8 and mini/8 on the main grid, plus the cpu-2core MFU calibration grid (mu/mini/xs at 16-64 px)."""
    cfgs = []
    models = ("mu/8", "mini/8", "xs/8")
    calib = [(16, 8), (32, 16), (64, 32), (32, 8), (64, 8)] if not quick else [(16, 8), (32, 16), (64, 32)]
    for m in models if not quick else ("mu/8", "mini/8"):
        for res, text in calib:
            cfgs.append({"model": m, "res": res, "text": text, "batch": 128, "vocab": LOCAL_VOCAB, "group": "calib"})
    if not quick:
        for m in ("mu/8", "mini/8"):
            for res, text in GRID[:2]:  # 64/8 is in the calibration grid already
                cfgs.append({"model": m, "res": res, "text": text, "batch": 64, "vocab": LOCAL_VOCAB, "group": "grid"})
        # per-step overhead: the same shape at the local loop's smallest and largest batch
        for b in (32, 256):
            cfgs.append({"model": "mini/8", "res": 32, "text": 16, "batch": b, "vocab": LOCAL_VOCAB, "group": "batch"})
    # order by model so one state is threaded per model
    return sorted(cfgs, key=lambda c: ("mu/8", "mini/8", "xs/8").index(c["model"]))


def ti_grid() -> list[dict]:
    return [{"model": "Ti/16", "res": r, "text": t, "batch": b, "group": "grid"}
            for (r, t), b in zip(GRID, (32, 64, 128))]


def b16_grid() -> list[dict]:
    # B/16 at 224: batch 32 is XLA's ~9.7 GB estimate (args 1.6 GB + temporaries ~0.25 GB/sample); remat as fallback
    return [
        {"model": "B/16", "res": 64, "text": 8, "batch": 128, "group": "grid"},
        {"model": "B/16", "res": 112, "text": 16, "batch": 64, "group": "grid"},
        {"model": "B/16", "res": 224, "text": 32, "batch": 32, "group": "grid",
         "fallback": [{"remat": "dots"}, {"remat": "full"}, {"batch": 16}]},
    ]


def token_reduction(quick: bool) -> list[dict]:
    """Interleaved: full resolution, lower resolutions and every masking strategy, same batch, same text length."""
    if quick:
        m, b, t, full, lows = "mini/8", 128, 16, 64, (32, 16)
        masks = [("random", 0.5), ("grid", 0.75)]
    else:
        m, b, t, full, lows = "S/16", 32, 32, 224, (112, 64)
        masks = [("random", 0.3), ("random", 0.5), ("random", 0.75), ("grid", 0.5), ("grid", 0.75),
                 ("block", 0.5), ("block", 0.75)]
    vocab = LOCAL_VOCAB if quick else None
    cfgs = [{"model": m, "res": full, "text": t, "batch": b, "vocab": vocab, "group": "tr"}]
    cfgs += [{"model": m, "res": r, "text": t, "batch": b, "vocab": vocab, "group": "tr"} for r in lows]
    cfgs += [{"model": m, "res": full, "text": t, "batch": b, "mask": k, "ratio": q, "vocab": vocab, "group": "tr"}
             for k, q in masks]
    if not quick:  # the S/16 main-grid stages (text shortened with the resolution), same batch
        cfgs += [{"model": m, "res": r, "text": tt, "batch": b, "group": "grid"} for r, tt in GRID[1:]]
    return cfgs


def steps(quick: bool) -> list[dict]:
    p = "quick_" if quick else ""
    r = lambda name: str(RESULTS / f"{p}{name}.json")  # noqa: E731
    ts = [PY, str(HERE / "bench_train_step.py")]
    out = [
        {"name": "peak", "cmd": [PY, str(HERE / "bench_peak.py"), "--out", r("peak")]
         + (["--quick", "--sizes", "2048"] if quick else []), "timeout": 600},
    ]
    if not quick:
        for label, flag in (("onednn", "--xla_cpu_use_onednn=true"), ("xnnpack", "--xla_cpu_use_xnnpack=true")):
            out.append({"name": f"peak_{label}", "cmd": [PY, str(HERE / "bench_peak.py"), "--quick", "--label", label,
                                                         "--out", r(f"peak_{label}")],
                        "env": {"XLA_FLAGS": flag}, "timeout": 300})
    out.append({"name": "train_tiny", "cmd": ts + ["--configs", json.dumps(tiny_grid(quick)), "--repeats",
                                                    "3" if quick else "5", "--sample-s", "0.5" if quick else "1.0",
                                                    "--time-budget-s", "12" if quick else "30", "--label",
                                                    "train_tiny", "--out", r("train_tiny")],
                "timeout": 900 if quick else 1500})
    out.append({"name": "token_reduction", "cmd": ts + ["--mode", "interleaved", "--configs",
                                                         json.dumps(token_reduction(quick)), "--repeats", "3",
                                                         "--sample-s", "0.5" if quick else "2.0",
                                                         "--time-budget-s", "25" if quick else "240",
                                                         "--label", "token_reduction", "--out", r("token_reduction")],
                "timeout": 900 if quick else 1800})
    if not quick:
        out.append({"name": "train_Ti", "cmd": ts + ["--configs", json.dumps(ti_grid()), "--repeats", "3",
                                                      "--sample-s", "2.0", "--time-budget-s", "40", "--label",
                                                      "train_Ti", "--out", r("train_Ti")], "timeout": 900})
        out.append({"name": "train_B", "cmd": ts + ["--configs", json.dumps(b16_grid()), "--repeats", "3",
                                                     "--sample-s", "5.0", "--time-budget-s", "150",
                                                     "--memory-limit-gb", "15", "--label", "train_B",
                                                     "--out", r("train_B")], "timeout": 1800})
        out.append({"name": "profile_B224", "cmd": [PY, str(HERE / "bench_profile.py"), "--config", json.dumps(
            {"model": "B/16", "res": 224, "text": 32, "batch": 8}), "--steps", "1", "--label", "B/16@224/t32/b8",
            "--out", r("profile_B224")], "timeout": 900})
        out.append({"name": "profile_S64", "cmd": [PY, str(HERE / "bench_profile.py"), "--config", json.dumps(
            {"model": "S/16", "res": 64, "text": 8, "batch": 32}), "--steps", "2", "--label", "S/16@64/t8/b32",
            "--out", r("profile_S64")], "timeout": 900})
    out.append({"name": "stage_change", "cmd": [PY, str(HERE / "bench_stage_change.py"), "--out", r("stage_change")]
                + (["--stages", "3"] if quick else []), "timeout": 900})
    out.append({"name": "input_pipeline", "cmd": [PY, str(HERE / "input_pipeline.py"), "--json", "--images",
                                                   "150" if quick else "600", "--repeats", "3" if quick else "5",
                                                   "--out", "{tmp}/input_pipeline.md"],
                "timeout": 900, "parse": "input_pipeline", "result": r("input_pipeline")})
    out.append({"name": "planner", "cmd": [PY, str(HERE / "bench_planner.py"), "--repeats", "3" if quick else "5",
                                            "--out", r("planner")], "timeout": 600})
    out.append({"name": "gpu_smoke", "cmd": [PY, str(HERE / "gpu_train_step.py"), "--smoke", "--out",
                                              r("gpu_train_step_smoke")]
                + (["--configs", json.dumps([["mu/8", 16, 8, 16]])] if quick else []), "timeout": 600})
    return out


def parse_input_pipeline(stdout: str) -> dict:
    """The input-pipeline script prints JSON lines per row, then (with --json) the whole result, indented."""
    lines = stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i] == "{":
            return json.loads("\n".join(lines[i:]))
    rows = [json.loads(x) for x in lines if x.startswith("{") and x.endswith("}") and '"res"' in x]
    return {"rows": rows, "note": "parsed from the per-row lines"}


MERGEABLE = ("bench_train_step.py", "bench_peak.py")


def run_step(step: dict, tmp: Path, log: list, merge: bool = False) -> dict:
    cmd = [c.replace("{tmp}", str(tmp)) for c in step["cmd"]]
    if merge and any(cmd[1].endswith(m) for m in MERGEABLE):
        cmd.append("--merge")
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = str(bc.ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(step.get("env", {}))
    print(f"\n=== {step['name']}: {' '.join(cmd)[:300]}", flush=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, cwd=bc.ROOT, env=env, capture_output=True, text=True, timeout=step["timeout"])
        rc, so, se = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, so, se = "timeout", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), ""
    wall = time.perf_counter() - t0
    for line in so.splitlines():
        if not line.startswith((" ", "{", "}", "]", "[")) or step.get("parse") is None:
            if len(line) < 400:
                print("   " + line, flush=True)
    entry = {"name": step["name"], "rc": rc, "wall_s": round(wall, 1), "load_average_start": round(load0, 2),
             "cmd": cmd}
    if rc != 0:
        entry["stderr_tail"] = "\n".join(l for l in se.splitlines() if "Warning" not in l)[-3000:]
        print(f"   !! {step['name']} failed ({rc}): {entry['stderr_tail'][-800:]}", flush=True)
    if step.get("parse") == "input_pipeline" and rc == 0:
        data = parse_input_pipeline(so)
        data["benchmark"] = "input_pipeline"
        data["script"] = "benchmarks/input_pipeline.py (the input-pipeline engineer's)"
        bc.write_json(step["result"], data)
    log.append(entry)
    print(f"   ({step['name']}: {wall:.0f} s, rc {rc})", flush=True)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--only", help="comma-separated step names (see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--no-merge", action="store_true",
                    help="with --only: replace the earlier samples instead of pooling them with the re-run's")
    args = ap.parse_args()
    plan = steps(args.quick)
    if args.list:
        for s in plan:
            print(s["name"])
        return
    import tempfile

    prefix = "quick_" if args.quick else ""
    runlog_path = RESULTS / f"{prefix}runlog.json"
    if not args.report_only:
        os.environ.setdefault("BENCH_QUIET_WAIT_TOTAL_S", "20" if args.quick else "90")
        wanted = set(args.only.split(",")) if args.only else None
        old = json.loads(runlog_path.read_text()) if (wanted and runlog_path.exists()) else {"steps": []}
        log: list = [s for s in old.get("steps", []) if wanted and s["name"] not in wanted]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for step in plan:
                if wanted and step["name"] not in wanted:
                    continue
                run_step(step, Path(tmp), log, merge=bool(wanted) and not args.no_merge)
        bc.write_json(runlog_path, {"mode": "quick" if args.quick else "full", "machine": bc.machine(),
                                    "versions": bc.versions(), "steps": log,
                                    "wall_s": round(time.perf_counter() - t0, 1)})
        print(f"\nall steps: {time.perf_counter() - t0:.0f} s", flush=True)
    import bench_report

    bench_report.build(quick=args.quick)


if __name__ == "__main__":
    main()
