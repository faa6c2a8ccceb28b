"""Planner: cold ``clipa plan --budget 10000`` wall time, fit time, candidates priced and predicted per second.

* Cold CLI: the installed ``clipa`` console script in a fresh interpreter (subprocess), median of ``--repeats`` clean
  runs, with the accuracy fit cached and with ``--refit`` (interleaved, so both see the same machine). Runs use a
  private ``CLIPA_HOME`` (a temporary folder whose ``results/runs`` links to the repository's), so no plan or fit is
  written into the repository; a first ``--refit`` run creates the cached fit there.
* Phases (one fresh interpreter, in-process timers): import of the CLI, loading the cached fit, fitting, enumerating
  and pricing the candidates (``planner.search.enumerate_candidates``), predicting the affordable ones (the fit's
  ``predict_frame``), and the whole ``make_plan``.
* Import profile: ``python -X importtime`` of the CLI's import, the ten most expensive modules.

    .venv/bin/python benchmarks/bench_planner.py [--repeats 5] [--out benchmarks/results/planner.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

BUDGET = "10000"


def clipa_exe() -> list[str]:
    exe = Path(sys.executable).parent / "clipa"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "trainer.cli"]


def child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CLIPA_HOME"] = str(home)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def make_home(tmp: Path) -> Path:
    home = tmp / "home"
    (home / "results").mkdir(parents=True)
    runs = bc.ROOT / "results" / "runs"
    if runs.exists():
        os.symlink(runs, home / "results" / "runs")
    return home


def timed_cli(args: list[str], env: dict) -> dict:
    """One subprocess run: wall, its CPU time (children rusage), other processes' load."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with bc.Meter() as m:
        proc = subprocess.run(clipa_exe() + args, env=env, cwd=bc.ROOT, capture_output=True, text=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"clipa {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    # the child's CPU is not ours: correct the contention estimate (Meter counts it as "others")
    others = max(0.0, m.others - child_cpu / m.wall) if m.wall else m.others
    return {"child_cpu": round(child_cpu, 3), "others_corrected": round(others, 3), "stdout_tail": proc.stdout[-300:]}


PHASES_CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import trainer.cli  # the console script's module (registers every command)
t_import = time.perf_counter() - t0
out = {"import_cli_s": t_import}
from planner.accuracy import fit_accuracy, fitting_data, load_or_fit, predict_frame
from planner.hardware import get_hardware, default_pricing
from planner.search import enumerate_candidates, space_for, candidate_features
out["import_planner_s"] = time.perf_counter() - t0 - t_import
t = time.perf_counter(); fit = load_or_fit(); out["load_cached_fit_s"] = time.perf_counter() - t
t = time.perf_counter(); data = fitting_data(); out["fitting_data_s"] = time.perf_counter() - t
t = time.perf_counter(); fit_accuracy(data); out["fit_s"] = time.perf_counter() - t
hw = get_hardware("a100-80gb"); pricing = default_pricing(hw.name); space = space_for(hw)
t = time.perf_counter(); cands = enumerate_candidates(space, hw.name, pricing); out["enumerate_s"] = time.perf_counter() - t
out["candidates"] = int(len(cands))
aff = cands[cands["cost_usd"] <= float(sys.argv[1])]
out["affordable"] = int(len(aff))
t = time.perf_counter(); feats = candidate_features(aff, space, "datacomp-1b"); out["features_s"] = time.perf_counter() - t
t = time.perf_counter(); predict_frame(fit, feats); out["predict_s"] = time.perf_counter() - t
from planner.plan import make_plan
import tempfile, pathlib
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    res = make_plan(float(sys.argv[1]), lambda f: predict_frame(fit, f), fit.version, out=pathlib.Path(d) / "p")
    out["make_plan_s"] = time.perf_counter() - t
out["candidates_considered"] = res.body["candidates_considered"]
print(json.dumps(out))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(bc.RESULTS / "planner.json"))
    args = ap.parse_args()

    out = bc.header("planner", args)
    with tempfile.TemporaryDirectory() as tmp:
        home = make_home(Path(tmp))
        env = child_env(home)
        warm = timed_cli(["plan", "--budget", BUDGET, "--refit"], env)  # creates the cached fit, warms the page cache
        out["warmup"] = warm
        plan_args = ["plan", "--budget", BUDGET]
        res = bc.interleaved({
            "cached": lambda: timed_cli(plan_args, env),
            "refit": lambda: timed_cli(plan_args + ["--refit"], env),
        }, repeats=args.repeats, max_rounds=3 * args.repeats, time_budget_s=240)
        # contention: judge by the corrected "others" (the child's own CPU is not contention)
        for name, r in res.items():
            for s in r["samples"]:
                s["others_raw"] = s["others"]
                s["others"] = s["others_corrected"]
            out[name] = bc.summarize(r["samples"], args.repeats)
            out[name]["child_cpu_median"] = sorted(s["child_cpu"] for s in r["samples"])[len(r["samples"]) // 2]
            print(f"clipa plan --budget {BUDGET} ({name}): median {out[name]['median_s']:.2f} s "
                  f"(clean {out[name]['clean']}/{out[name]['tries']}, child CPU {out[name]['child_cpu_median']:.2f} s)",
                  flush=True)
        fits = list((home / "results" / "fits").glob("*.json"))
        out["fit_files"] = [f.name for f in fits]

        phases = []
        for _ in range(3):
            bc.wait_quiet(20)
            with bc.Meter() as m:
                p = subprocess.run([sys.executable, "-c", PHASES_CHILD, BUDGET], env=env, cwd=bc.ROOT,
                                   capture_output=True, text=True)
            if p.returncode != 0:
                out["phases_error"] = p.stderr[-2000:]
                break
            ph = json.loads(p.stdout.strip().splitlines()[-1])
            ph["others"] = round(m.others, 3)
            phases.append(ph)
        if phases:
            med = {}
            for k in phases[0]:
                vals = sorted(ph[k] for ph in phases)
                med[k] = vals[len(vals) // 2]
            med["priced_per_s"] = med["candidates"] / med["enumerate_s"]
            med["predicted_per_s"] = med["affordable"] / (med["features_s"] + med["predict_s"])
            out["phases"] = med
            out["phases_runs"] = phases
            print("phases:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in med.items()}))

        p = subprocess.run([sys.executable, "-X", "importtime", "-c", "import trainer.cli"], env=env, cwd=bc.ROOT,
                           capture_output=True, text=True)
        rows = []
        for line in p.stderr.splitlines():
            if line.startswith("import time:") and "|" in line and "self" not in line:
                parts = [x.strip() for x in line[len("import time:"):].split("|")]
                try:
                    rows.append((int(parts[1]), parts[2].strip()))
                except (ValueError, IndexError):
                    pass
        rows.sort(reverse=True)
        out["import_profile_top"] = [{"module": m, "cumulative_ms": round(us / 1000, 1)} for us, m in rows[:12]]
        shutil.rmtree(home, ignore_errors=True)
    bc.write_json(args.out, out)


if __name__ == "__main__":
    main()
