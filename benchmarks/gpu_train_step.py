"""GPU train-step benchmark: the trainer's real step on one GPU (bf16), MFU against a measured and the datasheet peak.

One prepared script for a one-GPU machine (written for an NVIDIA H200 with CUDA JAX preinstalled), meant to finish in
a few minutes and to run unchanged there:

1. peak: ``jit(a @ b)`` in bfloat16 (n = 8192 and 16384; float32 for reference), median of timed calls after
   warm-up; FLOP/s = 2 n^3 / t;
2. train steps: ``trainer.loop.make_train_step`` (through ``benchmarks/bench_common.StepBench``, the same harness as
   the CPU benchmark) for B/16 at 224/112/64 px and L/14 at 224/112/56 px (56 = 4 x 14: /14 towers need a multiple
   of 14; 56 px gives 16 tokens like 64 px at /16), text 32/16/8, compute dtype bfloat16 (the trainer's "auto" on an
   accelerator), batch sizes sized for ~141 GB; compile time and count, step time (median of timed steps), samples/s,
   achieved FLOP/s (``planner.flops``) and MFU against the measured bf16 peak and against the datasheet 989 TFLOP/s;
3. writes ``$OUT/gpu_train_step.json`` when ``$OUT`` is set (else ``benchmarks/results/gpu_train_step.json``) and a
   one-line summary per configuration.

A deadline (``--deadline-s``, default 480 s of wall time) skips configurations that would not finish in time, so a
run always writes its JSON. ``--smoke`` runs the plumbing on any backend (CPU here): a mu/8 model at 32 px, 2 steps,
a 512 x 512 matmul; the numbers mean nothing.

Dependencies: JAX with its GPU plugin, flax, optax, orbax-checkpoint, numpy, pyyaml, typer, rich, pandas and pydantic
(the trainer imports ``planner.spec``). The H200 image lacks pydantic; carry its wheels (built for that machine's
Python, 3.12) and pass ``--wheels DIR``: the script installs them with ``pip --no-index`` when an import fails. Make
them here with:

    .venv/bin/pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 -d .wheels pydantic
    # then, on the device:  python3 benchmarks/gpu_train_step.py --wheels .wheels   (carry: [".wheels"])

    python benchmarks/gpu_train_step.py [--smoke] [--deadline-s 480] [--configs JSON]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DATASHEET_BF16 = 989e12  # NVIDIA H100/H200 SXM dense bf16 (budgets/hardware.yaml h200: 989.0e12)

# model, res, text, batch; sized for one 141 GB H200 in bf16 (B/16@224: ~0.13 GB of activations per sample)
GPU_CONFIGS = [
    ("B/16", 64, 8, 2048), ("B/16", 112, 16, 1024), ("B/16", 224, 32, 256),
    ("L/14", 56, 8, 1024), ("L/14", 112, 16, 512), ("L/14", 224, 32, 128),
]
SMOKE_CONFIGS = [("mu/8", 32, 8, 16), ("mu/8", 16, 8, 16)]
NEEDED = ("jax", "flax", "optax", "orbax.checkpoint", "numpy", "yaml", "typer", "rich", "pandas", "pydantic")


def ensure_imports(wheels: str | None) -> list[str]:
    missing = []
    for mod in NEEDED:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing and wheels:
        print(f"missing {missing}; installing from {wheels}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels,
                        *[m.split(".")[0].replace("yaml", "pyyaml").replace("orbax", "orbax-checkpoint")
                          for m in missing]], check=False)
        importlib.invalidate_caches()
        missing = [m for m in missing if importlib.util.find_spec(m.split(".")[0]) is None]
    return missing


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def peak(smoke: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    mm = jax.jit(lambda a, b: a @ b)
    rows = []
    sizes = [(512, "bfloat16"), (512, "float32")] if smoke else [(8192, "bfloat16"), (16384, "bfloat16"),
                                                                  (8192, "float32")]
    for n, dt in sizes:
        k1, k2 = jax.random.split(jax.random.PRNGKey(0))
        a = jax.random.normal(k1, (n, n), jnp.float32).astype(dt)
        b = jax.random.normal(k2, (n, n), jnp.float32).astype(dt)
        for _ in range(3):
            mm(a, b).block_until_ready()
        inner = 1 if smoke else 10

        def run():
            for _ in range(inner):
                c = mm(a, b)
            c.block_until_ready()

        ts = timed(run, 3 if smoke else 7)
        t = statistics.median(ts) / inner
        rows.append({"n": n, "dtype": dt, "tflops": 2 * n**3 / t / 1e12, "best_tflops": 2 * n**3 / (min(ts) / inner)
                     / 1e12, "runs_s": [x / inner for x in ts]})
        print(f"peak {dt} n={n}: {rows[-1]['tflops']:.1f} TFLOP/s (best {rows[-1]['best_tflops']:.1f})", flush=True)
        del a, b
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, any backend (plumbing check)")
    ap.add_argument("--configs", help='JSON list of [model, res, text, batch] (default: B/16 and L/14 grid)')
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--deadline-s", type=float, default=480.0, help="stop starting configurations after this")
    ap.add_argument("--remat", default="none", choices=("none", "dots", "full"))
    ap.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    ap.add_argument("--wheels", help="folder of wheels to install missing packages from (pip --no-index)")
    ap.add_argument("--out", help="JSON output (default: $OUT/gpu_train_step.json, else benchmarks/results/)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    missing = ensure_imports(args.wheels)
    out_path = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "gpu_train_step.json" if os.environ.get(
        "OUT") else HERE / "results" / ("gpu_train_step_smoke.json" if args.smoke else "gpu_train_step.json"))
    result: dict = {"benchmark": "gpu_train_step", "smoke": args.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "argv": sys.argv[1:]}
    if missing:
        result["error"] = f"missing Python packages: {missing} (carry wheels and pass --wheels; see the docstring)"
        print(result["error"], flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))
        sys.exit(2)

    import jax

    import bench_common as bc

    result["versions"] = bc.versions()
    result["backend"] = jax.default_backend()
    result["devices"] = [f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in jax.devices()]
    result["machine"] = bc.machine()
    print(f"backend {result['backend']}, devices {result['devices']}, versions {result['versions']}", flush=True)

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(out_path)

    result["peak"] = peak(args.smoke)
    bf = [r["tflops"] for r in result["peak"] if r["dtype"] == "bfloat16"]
    measured_peak = max(bf) * 1e12
    result["measured_bf16_peak_tflops"] = max(bf)
    save()

    configs = json.loads(args.configs) if args.configs else (SMOKE_CONFIGS if args.smoke else GPU_CONFIGS)
    steps = 2 if args.smoke else args.steps
    log = bc.CompileLog()
    rows = []
    box_by_model: dict = {}
    for model, res, text, batch in configs:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.deadline_s:
            rows.append({"model": model, "res": res, "text": text, "batch": batch,
                         "skipped": f"deadline ({elapsed:.0f} s > {args.deadline_s:.0f} s)"})
            continue
        try:
            if model not in box_by_model:  # free the previous model's state before building the next
                box_by_model.clear()
                bc.clear_jax_caches()
            box = box_by_model.setdefault(model, {})
            sb = bc.StepBench(model, res, text, batch, remat=args.remat, dtype=args.dtype, box=box,
                              compile_log=log, hardware="h200")
            sb.compile_and_analyse()
            sb.run(1)  # first execution (autotuning, allocation)
            sb.run(1)
            ts = timed(lambda: sb.run(1), steps)
            step = statistics.median(ts)
            achieved = sb.flops_per_step / step
            row = {
                "model": model, "res": res, "text": text, "batch": batch, "dtype": sb.cfg.dtype, "remat": args.remat,
                "flops_per_sample": sb.flops_per_sample, "step_s": step, "step_runs_s": ts,
                "samples_per_s": batch / step, "achieved_tflops": achieved / 1e12,
                "mfu_vs_measured": achieved / measured_peak, "mfu_vs_datasheet": achieved / DATASHEET_BF16,
                "compile": sb.compile, "memory": sb.memory, "init_s": sb.init_s,
            }
            try:
                stats = jax.devices()[0].memory_stats() or {}
                row["device_peak_bytes_in_use_gb"] = round(stats.get("peak_bytes_in_use", 0) / 2**30, 2)
            except Exception:  # CPU has no memory stats
                pass
            print(f"{model}@{res}/t{text}/b{batch}: step {step * 1e3:.1f} ms, {batch / step:.0f} samples/s, "
                  f"{achieved / 1e12:.1f} TFLOP/s, MFU {100 * achieved / measured_peak:.1f}% of measured, "
                  f"{100 * achieved / DATASHEET_BF16:.1f}% of datasheet, compile "
                  f"{sb.compile['compile_wall_s']:.1f} s ({sb.compile.get('compiles')} compiles)", flush=True)
            del sb
        except Exception as e:  # keep going: one failing configuration (e.g. out of memory) must not lose the rest
            row = {"model": model, "res": res, "text": text, "batch": batch, "error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"{model}@{res}: {row['error'][:300]}", flush=True)
            box_by_model.clear()
            bc.clear_jax_caches()
        rows.append(row)
        result["rows"] = rows
        save()
    result["rows"] = rows
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["compile_events"] = log.since(0)
    save()
    print(f"wrote {out_path} ({result['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
