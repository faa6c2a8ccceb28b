"""Train step: the trainer's real jitted step (``trainer.loop.make_train_step``) timed per stage shape.

For each configuration (model, resolution, text length, batch, image mask, remat) it builds the step exactly as the
trainer does (``trainer.model.ModelConfig.for_stage``, ``MaskConfig.for_stage``, ``make_train_step``), compiles it
(``lower().compile()``: trace + lower + XLA compile, timed and counted with ``jax.monitoring``), reads XLA's memory
analysis, then times steps on one fixed synthetic batch (the trainer's ``SyntheticSource``; the batch is already on
the device, so this is what the trainer *consumes*, not what an input pipeline delivers). FLOPs per sample come from
``planner.flops.stage_flops(model, stage).train_per_sample`` (the one FLOP counter); the planner's prediction from
``planner.cost.seconds_per_sample(model, stage, cpu-2core)``.

Modes:

* ``sequential`` (default): one configuration after another, each timed until it has ``--repeats`` clean samples;
* ``interleaved``: compile every configuration first, then time them round-robin (one sample of each per round), so
  that the *ratios* between them (token-reduction speed-ups) see the same machine conditions.

Configurations of the same model share one training state (parameter shapes do not depend on the stage's tokens).

    .venv/bin/python benchmarks/bench_train_step.py --configs '[{"model": "S/16", "res": 64, "text": 8, "batch": 64}]'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

DEFAULTS = {"mask": "none", "ratio": 0.0, "remat": "none", "dtype": "auto", "vocab": None, "micro_batch": None}


def label(c: dict) -> str:
    s = f"{c['model']}@{c['res']}/t{c['text']}/b{c['batch']}"
    if c.get("mask", "none") != "none":
        s += f"/{c['mask']}{c['ratio']:g}"
    if c.get("remat", "none") != "none":
        s += f"/remat-{c['remat']}"
    if c.get("dtype", "auto") != "auto":
        s += f"/{c['dtype']}"
    return s


def build(c: dict, boxes: dict, log: bc.CompileLog) -> bc.StepBench:
    key = (c["model"], c.get("vocab"))
    box = boxes.setdefault(key, {})
    return bc.StepBench(c["model"], c["res"], c["text"], c["batch"], c["mask"], c["ratio"], c["remat"], c["dtype"],
                        c["vocab"], box=box, compile_log=log, micro_batch=c["micro_batch"])


def predicted(c: dict, sb: bc.StepBench) -> dict:
    from planner.cost import seconds_per_sample, stage_tokens
    from planner.hardware import get_hardware

    hw = get_hardware("cpu-2core")
    sps = seconds_per_sample(c["model"], sb.stage, hw)
    return {"tokens_per_sample": stage_tokens(c["model"], sb.stage), "planner_s_per_sample": sps,
            "planner_mfu": hw.mfu.mfu(stage_tokens(c["model"], sb.stage), sb.cfg.variant.image.width),
            "planner_peak_flops": hw.peak_flops}


def row_from(c: dict, sb: bc.StepBench, timing: dict, steps_per_sample: int, recompiles: int | None) -> dict:
    step_s = timing["median_s"] / steps_per_sample
    # CPU-normalised step: process CPU seconds / cores, a second estimate that contention inflates much less
    cpu_step = [s["cpu"] / steps_per_sample / (bc.os.cpu_count() or 1) for s in timing["samples"]]
    return {
        **{k: c[k] for k in ("model", "res", "text", "batch", "mask", "ratio", "remat", "dtype")},
        "label": label(c),
        "vocab": sb.cfg.vocab_size,
        "image_width": sb.cfg.variant.image.width,
        "flops_per_sample": sb.flops_per_sample,
        "step_s": step_s,
        "samples_per_s": c["batch"] / step_s,
        "achieved_gflops": sb.flops_per_step / step_s / 1e9,
        "cpu_normalised_step_s": sorted(cpu_step)[len(cpu_step) // 2] if cpu_step else None,
        "steps_per_sample": steps_per_sample,
        "timing": timing,
        "compile": sb.compile,
        "memory": sb.memory,
        "init_s": sb.init_s,
        "init_compiles": sb.init_compiles,
        "recompiles_while_timing": recompiles,
        "rss_gb": round(bc.rss_gb(), 2),
        "peak_rss_gb": round(bc.peak_rss_gb(), 2),
        **predicted(c, sb),
    }


def steps_for(sb: bc.StepBench, sample_s: float) -> tuple[int, float]:
    """One warm step timed; the number of steps per timing sample to reach about ``sample_s`` seconds."""
    with bc.Meter() as m:
        sb.run(1)
    return max(1, int(math.ceil(sample_s / max(m.wall, 1e-4)))), m.wall


def fits(sb: bc.StepBench, limit_gb: float | None) -> bool:
    if not limit_gb or not sb.memory or "peak_estimate_gb" not in sb.memory:
        return True
    return sb.memory["peak_estimate_gb"] <= limit_gb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", required=True, help="JSON list of configurations (or @file.json)")
    ap.add_argument("--mode", choices=("sequential", "interleaved"), default="sequential")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-s", type=float, default=1.0, help="target seconds per timing sample")
    ap.add_argument("--time-budget-s", type=float, default=120.0, help="per configuration (sequential) or in all")
    ap.add_argument("--memory-limit-gb", type=float, default=15.0,
                    help="skip a configuration whose XLA peak estimate exceeds this (after trying its fallbacks)")
    ap.add_argument("--merge", action="store_true",
                    help="pool the timing samples with those of the same configurations already in --out")
    ap.add_argument("--label", default="train_step")
    ap.add_argument("--out", default=str(bc.RESULTS / "train_step.json"))
    args = ap.parse_args()

    raw = args.configs
    configs = json.loads(Path(raw[1:]).read_text() if raw.startswith("@") else raw)
    configs = [{**DEFAULTS, **c} for c in configs]

    import jax

    log = bc.CompileLog()
    out = bc.header(args.label, args)
    out["devices"] = [str(d) for d in jax.devices()]
    out["backend"] = jax.default_backend()
    rows: list[dict] = []
    boxes: dict = {}
    t_all = time.perf_counter()

    def prepare(c: dict) -> tuple[dict, bc.StepBench | None, list]:
        """Build and compile ``c``; when it does not fit, try its ``fallback`` overrides in order."""
        tried = []
        for override in [{}] + list(c.get("fallback", [])):
            cc = {**c, **override}
            sb = build(cc, boxes, log)
            sb.compile_and_analyse()
            tried.append({"label": label(cc), "memory": sb.memory, "compile": sb.compile})
            if fits(sb, args.memory_limit_gb):
                return cc, sb, tried
            print(f"  {label(cc)}: XLA peak estimate {sb.memory['peak_estimate_gb']} GB > {args.memory_limit_gb} GB,"
                  " trying the next fallback", flush=True)
            del sb
            bc.clear_jax_caches()
        return c, None, tried

    if args.mode == "sequential":
        for c in configs:
            if c.get("fresh"):
                boxes.clear()
                bc.clear_jax_caches()
            cc, sb, tried = prepare(c)
            if sb is None:
                rows.append({**{k: c[k] for k in ("model", "res", "text", "batch")}, "label": label(c),
                             "skipped": f"does not fit in {args.memory_limit_gb} GB", "tried": tried})
                continue
            probes = [bc.peak_probe()]  # (its first call compiles the probe: before the mark)
            mark = log.mark()
            k, first = steps_for(sb, args.sample_s)
            r = bc.repeat(lambda: sb.run(k), repeats=args.repeats, time_budget_s=args.time_budget_s)
            probes.append(bc.peak_probe())
            row = row_from(cc, sb, r, k, log.since(mark)["compiles"])
            row["peak_probes"] = probes  # float32 2048^3 matmul just before and after the timing
            row["first_step_s"] = first
            if len(tried) > 1:
                row["fit_attempts"] = tried
            rows.append(row)
            print(f"{row['label']}: step {row['step_s']:.4f} s, {row['samples_per_s']:.1f} samples/s, "
                  f"{row['achieved_gflops']:.1f} GFLOP/s, compile {sb.compile['compile_wall_s']:.1f} s "
                  f"({sb.compile['compiles']} compiles), mem est {sb.memory and sb.memory.get('peak_estimate_gb')} GB, "
                  f"cpu/wall {r['cpu_wall']}, others {r['others']}, clean {r['clean']}/{r['tries']}", flush=True)
            if not args.merge:
                bc.write_json(args.out, {**out, "rows": rows, "partial": True})
            del sb
    else:
        benches = {}
        for c in configs:
            cc, sb, tried = prepare(c)
            if sb is None:
                rows.append({"label": label(c), "skipped": f"does not fit in {args.memory_limit_gb} GB"})
                continue
            k, first = steps_for(sb, args.sample_s)
            benches[label(cc)] = (cc, sb, k)
            print(f"compiled {label(cc)}: {sb.compile['compile_wall_s']:.1f} s, first step {first:.3f} s, "
                  f"{k} steps per sample", flush=True)
        mark = log.mark()
        fns = {name: (lambda sb=sb, k=k: sb.run(k)) for name, (cc, sb, k) in benches.items()}
        fns["__peak_probe__"] = lambda: {"gflops_probe": bc.peak_probe()["gflops"]}  # the peak, in every round
        res = bc.interleaved(fns, repeats=args.repeats, time_budget_s=args.time_budget_s)
        out["peak_probe"] = res.pop("__peak_probe__")
        recompiles = log.since(mark)["compiles"]
        for name, (cc, sb, k) in benches.items():
            row = row_from(cc, sb, res[name], k, recompiles)
            rows.append(row)
            print(f"{row['label']}: step {row['step_s']:.4f} s, {row['achieved_gflops']:.1f} GFLOP/s, "
                  f"cpu/wall {res[name]['cpu_wall']}, others {res[name]['others']}, clean {res[name]['clean']}",
                  flush=True)
    if args.merge:
        rows = bc.merge_previous(args.out, rows, lambda r: r.get("label"))
    out["rows"] = rows
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    out["compile_events"] = log.since(0)
    bc.write_json(args.out, out)


if __name__ == "__main__":
    main()
