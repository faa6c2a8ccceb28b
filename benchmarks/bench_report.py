"""Build ``benchmarks/REPORT.md`` and ``benchmarks/results/report.json`` from the raw result files of a run.

Called by ``run_all.py`` (also ``run_all.py --report-only``). Only reads ``benchmarks/results/[quick_]*.json``.

Estimators: a figure's time is the median wall time of its *clean* samples (other processes used < 0.25 core) when it
has at least two; otherwise it is the median of process CPU time / cores ("cpu" estimator, marked with a dagger in the
tables), which other jobs on the cores distort much less than wall time (it still rises a little under contention,
from threads that spin while their partner is descheduled). MFU uses the same estimator for the step and for the
matmul peak, so a contended figure is not compared with a clean peak.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import bench_common as bc

RESULTS = bc.RESULTS
REPORT = bc.ROOT / "benchmarks" / "REPORT.md"
NCORES = 2
MIN_CLEAN = 2

TARGETS = {
    "mfu_b16_224": 0.55,
    "tr_eff_112": 0.85,
    "tr_eff_64": 0.70,
    "input_64_vs_plain": 2.0,
    "plan_cold_s": 2.0,
}


def load(name: str, prefix: str) -> dict | None:
    p = RESULTS / f"{prefix}{name}.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------------------------------


def best_seconds(timing: dict, per_sample_units: float = 1.0) -> dict:
    """Seconds per unit (step) from a timing summary: clean wall median, else CPU-time estimate. A sample that records
    its own ``steps`` (pooled re-runs may differ) is normalised by it, else by ``per_sample_units``."""
    samples = timing.get("samples", [])

    def per(s, key):
        return s[key] / s.get("steps", per_sample_units)

    clean = [s for s in samples if s["others"] < bc.CLEAN_OTHERS]
    out = {
        "clean": len(clean), "tries": len(samples),
        "cpu_wall": med([s["cpu_wall"] for s in (clean or samples)]),
        "others": med([s["others"] for s in (clean or samples)]),
        "cpu_s": med([per(s, "cpu") / NCORES for s in samples]),
        "wall_all_s": med([per(s, "wall") for s in samples]),
    }
    if len(clean) >= min(MIN_CLEAN, len(samples)) and clean:
        out.update(s=med([per(s, "wall") for s in clean]), estimator="wall")
    else:
        out.update(s=out["cpu_s"], estimator="cpu")
    return out


def peak_figures(peak: dict | None) -> dict:
    """float32 / bfloat16 peak GFLOP/s by estimator (wall when clean, cpu always)."""
    res: dict[str, Any] = {"rows": []}
    if not peak:
        return res
    for r in peak.get("rows", []):
        flops = 2 * r["n"] ** 3 * r["calls_per_sample"]
        b = best_seconds(r)
        row = {"dtype": r["dtype"], "n": r["n"], "gflops": flops / b["s"] / 1e9, "estimator": b["estimator"],
               "gflops_cpu": flops / b["cpu_s"] / 1e9 if b["cpu_s"] else None,
               "gflops_wall_clean": flops / b["s"] / 1e9 if b["estimator"] == "wall" else None,
               "cpu_wall": b["cpu_wall"], "others": b["others"], "clean": b["clean"], "tries": b["tries"]}
        res["rows"].append(row)
    for dt in ("float32", "bfloat16"):
        rows = [x for x in res["rows"] if x["dtype"] == dt]
        if rows:
            wall = [x["gflops_wall_clean"] for x in rows if x["gflops_wall_clean"]]
            res[dt] = {"wall": max(wall) if wall else None, "cpu": max(x["gflops_cpu"] for x in rows if x["gflops_cpu"])}
            res[dt]["best"] = res[dt]["wall"] or res[dt]["cpu"]
    return res


def step_figures(row: dict, peak: dict) -> dict:
    b = best_seconds(row["timing"], row["steps_per_sample"])
    step = b["s"]
    out = {k: row.get(k) for k in ("model", "res", "text", "batch", "mask", "ratio", "remat", "label", "vocab",
                                   "image_width", "flops_per_sample", "tokens_per_sample", "planner_s_per_sample",
                                   "planner_mfu", "group")}
    out.update({
        "step_s": step, "estimator": b["estimator"], "step_s_cpu": b["cpu_s"], "step_s_wall_all": b["wall_all_s"],
        "samples_per_s": row["batch"] / step, "achieved_gflops": row["flops_per_sample"] * row["batch"] / step / 1e9,
        "cpu_wall": b["cpu_wall"], "others": b["others"], "clean": b["clean"], "tries": b["tries"],
        "compile_s": (row.get("compile") or {}).get("compile_wall_s"),
        "xla_compile_s": (row.get("compile") or {}).get("compile_s"),
        "compiles": (row.get("compile") or {}).get("compiles"),
        "recompiles_while_timing": row.get("recompiles_while_timing"),
        "init_s": row.get("init_s"),
        "mem_estimate_gb": (row.get("memory") or {}).get("peak_estimate_gb"),
        "peak_rss_gb": row.get("peak_rss_gb"),
    })
    f32 = peak.get("float32") or {}
    pk = f32.get("wall") if b["estimator"] == "wall" and f32.get("wall") else f32.get("cpu")
    if b["estimator"] == "wall" and not f32.get("wall"):
        # clean step, contended peak: compare CPU estimates on both sides
        pk = f32.get("cpu")
        step_cpu = b["cpu_s"]
        out["mfu"] = row["flops_per_sample"] * row["batch"] / step_cpu / (pk * 1e9) if pk and step_cpu else None
        out["mfu_estimator"] = "cpu"
    else:
        out["mfu"] = out["achieved_gflops"] / pk if pk else None
        out["mfu_estimator"] = b["estimator"]
    out["measured_s_per_sample"] = step / row["batch"]
    probes = [p["gflops"] for p in row.get("peak_probes", []) if p["others"] < bc.CLEAN_OTHERS]
    out["peak_probe_gflops"] = med(probes)
    out["mfu_vs_probe"] = (out["achieved_gflops"] / out["peak_probe_gflops"]
                           if probes and b["estimator"] == "wall" else None)
    return out


def train_rows(prefix: str, peak: dict) -> list[dict]:
    rows = []
    for name in ("train_tiny", "train_Ti", "token_reduction", "train_B"):
        d = load(name, prefix)
        if not d:
            continue
        for r in d.get("rows", []):
            if "skipped" in r or "timing" not in r:
                rows.append({"label": r.get("label"), "skipped": r.get("skipped", "no timing"), "source": name})
                continue
            f = step_figures(r, peak)
            f["source"] = name
            f["group"] = next((c.get("group") for c in _configs(d) if _same(c, r)), None)
            rows.append(f)
    return rows


def _configs(d: dict) -> list[dict]:
    try:
        raw = d["args"]["configs"]
        return json.loads(raw)
    except (KeyError, TypeError, json.JSONDecodeError):
        return []


def _same(c: dict, r: dict) -> bool:
    return (c["model"], c["res"], c["text"], c.get("mask", "none"), float(c.get("ratio", 0.0))) == (
        r["model"], r["res"], r["text"], r.get("mask", "none"), float(r.get("ratio", 0.0))) and c["batch"] == r[
        "batch"] or (c["model"], c["res"], c["text"], c.get("mask", "none")) == (
        r["model"], r["res"], r["text"], r.get("mask", "none")) and c.get("fallback")


# --------------------------------------------------------------------------------------------------------------------
# token reduction
# --------------------------------------------------------------------------------------------------------------------


def token_reduction(prefix: str) -> dict | None:
    d = load("token_reduction", prefix)
    if not d or not d.get("rows"):
        return None
    rows = [r for r in d["rows"] if "timing" in r]
    if not rows:
        return None
    full_res = max(r["res"] for r in rows)
    base = next(r for r in rows if r["res"] == full_res and r.get("mask", "none") == "none")
    text0 = base["text"]
    out = {"model": base["model"], "batch": base["batch"], "full_res": full_res, "text": text0, "rows": []}
    bb = best_seconds(base["timing"], base["steps_per_sample"])
    for r in rows:
        if r is base:
            continue
        b = best_seconds(r["timing"], r["steps_per_sample"])
        # speed-up in samples/s (equal batches); both estimators, the headline one consistent across the pair
        est = "wall" if (b["estimator"] == "wall" and bb["estimator"] == "wall") else "cpu"
        t_base = bb["s"] if est == "wall" else bb["cpu_s"]
        t_x = b["s"] if est == "wall" else b["cpu_s"]
        speed = (t_base / base["batch"]) / (t_x / r["batch"])
        flop_ratio = base["flops_per_sample"] / r["flops_per_sample"]
        speed_cpu = (bb["cpu_s"] / base["batch"]) / (b["cpu_s"] / r["batch"])
        out["rows"].append({
            "label": r["label"], "res": r["res"], "text": r["text"], "mask": r.get("mask", "none"),
            "ratio": r.get("ratio", 0.0), "speedup": speed, "flop_ratio": flop_ratio, "efficiency": speed / flop_ratio,
            "estimator": est, "speedup_cpu": speed_cpu, "efficiency_cpu": speed_cpu / flop_ratio,
            "clean": b["clean"], "tries": b["tries"], "tokens_per_sample": r.get("tokens_per_sample"),
            "text_changed": r["text"] != text0,
        })
    out["base_clean"] = bb["clean"]
    out["base_tries"] = bb["tries"]
    return out


# --------------------------------------------------------------------------------------------------------------------
# cpu-2core MFU model
# --------------------------------------------------------------------------------------------------------------------


def mfu_model(p, t, w):
    mx, th, wh = p
    return mx * t / (t + th) * w / (w + wh)


def fit_mfu(points: list[dict], peak_flops: float) -> dict | None:
    """Least squares on log(predicted / measured seconds per sample) over (max, tokens_half, width_half)."""
    if len(points) < 4:
        return None
    import numpy as np
    from scipy.optimize import least_squares

    t = np.array([p["tokens_per_sample"] for p in points], float)
    w = np.array([p["image_width"] for p in points], float)
    f = np.array([p["flops_per_sample"] for p in points], float)
    y = np.array([p["measured_s_per_sample"] for p in points], float)
    bs = np.array([p["batch"] for p in points], float)

    def resid(p):
        return np.log(f / (peak_flops * mfu_model(p, t, w)) / y)

    fit = least_squares(resid, [0.5, 10.0, 60.0], bounds=([1e-3, 0, 0], [1.0, 1e4, 1e5]))
    r = resid(fit.x)

    def resid_overhead(p):  # proposal: + a fixed per-step cost spread over the batch
        return np.log((f / (peak_flops * mfu_model(p[:3], t, w)) + p[3] / bs) / y)

    fit2 = least_squares(resid_overhead, [*fit.x, 1e-3], bounds=([1e-3, 0, 0, 0], [1.0, 1e4, 1e5, 10.0]))
    r2 = resid_overhead(fit2.x)

    def resid_attn(p):  # proposal: attention work (~ t/(6w) of the FLOPs) runs less efficiently than the matmuls
        return np.log(f / (peak_flops * mfu_model(p[:3], t, w) / (1 + t / (p[3] * w))) / y)

    fit3 = least_squares(resid_attn, [*fit.x, 1.0], bounds=([1e-3, 0, 0, 1e-3], [1.0, 1e4, 1e5, 1e4]))
    r3 = resid_attn(fit3.x)
    return {"peak_flops": peak_flops,
            **_fit_summary(fit.x, r, ()),
            "with_step_overhead": _fit_summary(fit2.x, r2, ("step_overhead_s",)),
            "with_attention_penalty": _fit_summary(fit3.x, r3, ("attn_ratio",))}


def _fit_summary(x, resid, extra_names: tuple[str, ...]) -> dict:
    """One MFU fit's parameters (max, tokens_half, width_half, then ``extra_names``) and its log residuals."""
    import numpy as np

    names = ("max", "tokens_half", "width_half", *extra_names)
    return {"params": {n: float(v) for n, v in zip(names, x)},
            "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
            "max_abs_residual_pct": float(100 * np.max(np.abs(np.exp(resid) - 1))),
            "residuals": [float(v) for v in resid]}


PROFILE_BEFORE_REFIT = {"peak_flops": 180e9, "max": 0.75, "tokens_half": 4.0, "width_half": 60.0}


def mfu_calibration(rows: list[dict], peak: dict) -> dict:
    from planner.hardware import get_hardware

    hw = get_hardware("cpu-2core")
    cur = {"peak_flops": hw.peak_flops, "max": hw.mfu.max, "tokens_half": hw.mfu.tokens_half,
           "width_half": hw.mfu.width_half}
    # the planner column of the stored train-step results was computed with the profile of their day; results/
    # holds runs of 2026-11-28 made before the refit below was applied to budgets/hardware.yaml
    when = next((r["planner_profile"] for r in rows if r.get("planner_profile")), PROFILE_BEFORE_REFIT)
    local = [r for r in rows if "step_s" in r and r["model"] in ("mu/8", "mini/8", "xs/8") and r["res"] <= 64
             and r.get("mask", "none") == "none"]
    allm = [r for r in rows if "step_s" in r and r.get("mask", "none") == "none"]
    measured_peak = ((peak.get("float32") or {}).get("best") or hw.peak_flops / 1e9) * 1e9
    out = {"current": cur, "when_measured": when, "measured_f32_peak": measured_peak, "points": [], "points_all": []}
    for r in local:
        out["points"].append({k: r[k] for k in ("label", "model", "res", "text", "batch", "tokens_per_sample",
                                                 "image_width", "flops_per_sample", "measured_s_per_sample",
                                                 "planner_s_per_sample", "estimator", "clean")})
    for r in allm:
        out["points_all"].append({k: r[k] for k in ("label", "model", "res", "text", "batch", "tokens_per_sample",
                                                     "image_width", "flops_per_sample", "measured_s_per_sample",
                                                     "planner_s_per_sample", "estimator")})
    for pts in (out["points"], out["points_all"]):
        for p in pts:
            p["planner_over_measured"] = p["planner_s_per_sample"] / p["measured_s_per_sample"]
    out["fit_local"] = fit_mfu(out["points"], measured_peak)
    out["fit_local_catalog_peak"] = fit_mfu(out["points"], when["peak_flops"])
    out["fit_all"] = fit_mfu(out["points_all"], measured_peak)
    if out["points"]:
        import numpy as np

        lr = np.log([p["planner_over_measured"] for p in out["points"]])
        out["current_rms_log_residual"] = float(np.sqrt(np.mean(lr**2)))
        out["current_median_ratio"] = float(np.exp(np.median(lr)))
    if out["fit_local"]:
        fl = out["fit_local"]
        for p, res, res3 in zip(out["points"], fl["residuals"], fl["with_attention_penalty"]["residuals"]):
            p["fit_over_measured"] = math.exp(res)
            p["fit_attn_over_measured"] = math.exp(res3)
    fa = out.get("fit_all")
    if fa:
        for p, res, res3 in zip(out["points_all"], fa["residuals"], fa["with_attention_penalty"]["residuals"]):
            p["fit_all_over_measured"] = math.exp(res)
            p["fit_all_attn_over_measured"] = math.exp(res3)
    return out


# --------------------------------------------------------------------------------------------------------------------
# rendering helpers
# --------------------------------------------------------------------------------------------------------------------


def f(x, nd=2, pct=False, dagger=False):
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    s = f"{100 * x:.{nd}f}%" if pct else (f"{x:,.{nd}f}" if isinstance(x, float) else str(x))
    return s + ("†" if dagger else "")


def table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def status(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**missed**")


# --------------------------------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------------------------------


def build(quick: bool = False) -> dict:
    import sys

    sys.path.insert(0, str(bc.ROOT))
    prefix = "quick_" if quick else ""
    runlog = load("runlog", prefix) or {}
    peak_raw = load("peak", prefix)
    peak = peak_figures(peak_raw)
    peak_variants = {lab: peak_figures(load(f"peak_{lab}", prefix)) for lab in ("onednn", "xnnpack")}
    rows = train_rows(prefix, peak)
    tr = token_reduction(prefix)
    stage = load("stage_change", prefix)
    inp = load("input_pipeline", prefix)
    planner = load("planner", prefix)
    gpu_smoke = load("gpu_train_step_smoke", prefix)
    gpu_real = load("gpu_train_step", "")
    profiles = {k: load(k, prefix) for k in ("profile_B224", "profile_S64")}
    calib = mfu_calibration(rows, peak)
    variants = {}
    for pth in sorted(RESULTS.glob(f"{prefix}variants_*.json")):
        if prefix or not pth.name.startswith("quick_"):
            try:
                variants[pth.stem[len(prefix) + len("variants_"):]] = json.loads(pth.read_text())
            except json.JSONDecodeError:
                pass
    extras = {}
    for pth in sorted(RESULTS.glob(f"{prefix}extra_*.json")):
        if prefix or not pth.name.startswith("quick_"):
            try:
                extras[pth.stem[len(prefix) + len("extra_"):]] = json.loads(pth.read_text())
            except json.JSONDecodeError:
                pass

    # ---- figures and targets ----------------------------------------------------------------------------------------
    figs: dict[str, Any] = {}
    b224 = next((r for r in rows if r.get("model") == "B/16" and r.get("res") == 224 and "step_s" in r), None)
    figs["mfu_b16_224"] = b224["mfu"] if b224 else None
    if tr:
        by = {(r["res"], r["mask"]): r for r in tr["rows"] if not r["text_changed"]}
        full = tr["full_res"]
        lows = sorted({r["res"] for r in tr["rows"] if r["res"] < full and not r["text_changed"]}, reverse=True)
        figs["tr_eff_112"] = by[(lows[0], "none")]["efficiency"] if lows else None
        figs["tr_eff_64"] = by[(lows[-1], "none")]["efficiency"] if len(lows) > 1 else None
        figs["tr_labels"] = {"full": full, "half": lows[0] if lows else None,
                             "quarter": lows[-1] if len(lows) > 1 else None, "model": tr["model"]}
    consumption = {}
    for r in rows:
        if "step_s" in r and r.get("mask", "none") == "none":
            consumption.setdefault(r["res"], []).append((r["model"], r["samples_per_s"], r["batch"], r["text"]))
    if inp and inp.get("rows"):
        r64 = next((r for r in inp["rows"] if r["res"] == 64), None)
        if r64:
            # judged on the lower of the median ratio and the median of the per-repeat (paired) ratios
            figs["input_64_vs_plain"] = min(r64.get("speedup") or 0,
                                            r64.get("speedup_paired", r64.get("speedup")) or 0)
            figs["input_64_vs_plain_median"] = r64.get("speedup")
            figs["input_64_reader_vs_plain"] = r64.get("reader_speedup")
    if planner and planner.get("cached"):
        c = planner["cached"]
        figs["plan_cold_s"], figs["plan_cold_estimator"] = best_plan_s(c)
        if planner.get("refit"):
            figs["plan_refit_s"], _ = best_plan_s(planner["refit"])
    targets = {
        "mfu_b16_224": (figs.get("mfu_b16_224"), lambda v: v >= TARGETS["mfu_b16_224"]),
        "tr_eff_112": (figs.get("tr_eff_112"), lambda v: v >= TARGETS["tr_eff_112"]),
        "tr_eff_64": (figs.get("tr_eff_64"), lambda v: v >= TARGETS["tr_eff_64"]),
        "input_64_vs_plain": (figs.get("input_64_vs_plain"), lambda v: v >= TARGETS["input_64_vs_plain"]),
        "plan_cold_s": (figs.get("plan_cold_s"), lambda v: v < TARGETS["plan_cold_s"]),
    }
    met = {k: (None if v is None else bool(fn(v))) for k, (v, fn) in targets.items()}
    # a figure without clean samples is provisional: the CPU-time estimate runs optimistic under contention
    est = {"mfu_b16_224": b224.get("mfu_estimator") if b224 else None,
           "plan_cold_s": figs.get("plan_cold_estimator")}
    if tr:
        by_est = {(r["res"], r["mask"]): r["estimator"] for r in tr["rows"] if not r["text_changed"]}
        lab = figs.get("tr_labels") or {}
        est["tr_eff_112"] = by_est.get((lab.get("half"), "none"))
        est["tr_eff_64"] = by_est.get((lab.get("quarter"), "none"))
    # input pipeline above what the trainer consumes at 64 px: per core, and with the 2-thread total
    inp64 = next((r for r in (inp or {}).get("rows", []) if r["res"] == 64), None)
    cons64 = max((c[1] for c in consumption.get(64, [])), default=None)
    if inp64 and cons64:
        figs["input_64_per_core"] = inp64.get("ours")
        figs["trainer_64_max_consumption"] = cons64
        met["input_64_above_trainer"] = inp64.get("ours", 0) > cons64

    report = {
        "mode": "quick" if quick else "full", "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": (peak_raw or {}).get("machine") or bc.machine(), "versions": (peak_raw or {}).get("versions")
        or bc.versions(), "runlog": runlog, "peak": peak, "peak_variants": peak_variants, "train_step": rows,
        "token_reduction": tr, "stage_change": stage and {k: stage.get(k) for k in ("verdict", "runs", "stages")},
        "input_pipeline": inp, "trainer_consumption": consumption, "planner": planner,
        "mfu_calibration": calib, "profiles": profiles, "variants": variants, "extras": extras, "gpu_smoke": gpu_smoke, "gpu": gpu_real,
        "figures": figs, "targets": {k: {"value": targets[k][0], "target": TARGETS.get(k), "met": met[k],
                                         "provisional": est.get(k) == "cpu"} for k in targets},
    }
    by_model: dict[str, float] = {}
    for c in consumption.get(64, []):
        by_model[c[0]] = max(by_model.get(c[0], 0.0), c[1])
    report["targets"]["input_64_above_trainer"] = {"value": figs.get("input_64_per_core"),
                                                  "trainer": figs.get("trainer_64_max_consumption"),
                                                  "by_model": by_model,
                                                  "met": met.get("input_64_above_trainer")}
    # the † example of the "how to read" note: the CPU estimate of contended samples vs the clean median
    raw_b = load("train_B", prefix) or {}
    for x in raw_b.get("rows", []):
        if x.get("res") == 224 and "timing" in x:
            ss = x["timing"]["samples"]
            cl = [q["wall"] / q.get("steps", 1) for q in ss if q["others"] < bc.CLEAN_OTHERS]
            co = [q["cpu"] / NCORES / q.get("steps", 1) for q in ss if q["others"] >= bc.CLEAN_OTHERS]
            if cl and co:
                report["dagger_example"] = {"label": x["label"], "cpu_estimate_s": med(co), "clean_wall_s": med(cl)}
    order = [st for st in ("peak", "peak_onednn", "peak_xnnpack", "train_tiny", "token_reduction", "train_Ti", "train_B",
                           "profile_B224", "profile_S64", "stage_change", "input_pipeline", "planner", "gpu_smoke")]
    if runlog.get("steps"):
        runlog["steps"].sort(key=lambda st: order.index(st["name"]) if st["name"] in order else 99)
        runlog["steps_wall_s"] = round(sum(st["wall_s"] for st in runlog["steps"]), 1)
    bc.write_json(RESULTS / "report.json", report)
    REPORT.write_text(render(report))
    print(f"wrote {REPORT} and {RESULTS / 'report.json'}")
    return report


def best_plan_s(c: dict) -> tuple[float | None, str]:
    """Clean wall median; when contended, the child's CPU time (the CLI is single-threaded Python: CPU ~ wall)."""
    samples = c.get("samples", [])
    clean = [s for s in samples if s["others"] < bc.CLEAN_OTHERS]
    if len(clean) >= min(MIN_CLEAN, len(samples)) and clean:
        return med([s["wall"] for s in clean]), "wall"
    return med([s.get("child_cpu") for s in samples]), "cpu"


from bench_report_text import render  # noqa: E402  (the Markdown; kept apart from the numbers)
