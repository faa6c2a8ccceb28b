"""Peak: the measured matmul rate of this device, the denominator of MFU.

``jit(lambda a, b: a @ b)`` on n x n operands (float32 and bfloat16, n = 2048 and 4096), two warm-up calls, then
the median of several clean calls (``bench_common.repeat``); FLOP/s = 2 n^3 / t. XLA flags come from the
environment (``XLA_FLAGS``), so the runner can compare backends (default Eigen, oneDNN, XNNPACK) in separate
processes; the flags are recorded in the result.

    .venv/bin/python benchmarks/bench_peak.py [--quick] [--out benchmarks/results/peak.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="2048,4096")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--label", default="default")
    ap.add_argument("--merge", action="store_true", help="pool samples with those already in --out")
    ap.add_argument("--out", default=str(bc.RESULTS / "peak.json"))
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    out = bc.header("peak", args)
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    out["label"] = args.label
    out["devices"] = [str(d) for d in jax.devices()]
    rows = []
    mm = jax.jit(lambda a, b: a @ b)
    rng = np.random.default_rng(0)
    for dt in args.dtypes.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            a = jnp.asarray(rng.standard_normal((n, n), np.float32), dtype=dt)
            b = jnp.asarray(rng.standard_normal((n, n), np.float32), dtype=dt)
            mm(a, b).block_until_ready()
            mm(a, b).block_until_ready()
            reps = (3 if args.quick else 7) if n <= 2048 else (3 if args.quick else 5)
            inner = max(1, int(round((2048 / n) ** 3 * 4)))  # about 0.3 s or more per sample

            def one():
                for _ in range(inner):
                    c = mm(a, b)
                c.block_until_ready()

            r = bc.repeat(one, repeats=reps, max_tries=3 * reps, time_budget_s=30 if args.quick else 60)
            flops = 2 * n**3 * inner
            row = {"dtype": dt, "n": n, "gflops": round(flops / r["median_s"] / 1e9, 1),
                   "gflops_best": round(flops / r["min_s"] / 1e9, 1), "calls_per_sample": inner, **r}
            rows.append(row)
            print(f"peak[{args.label}] {dt} n={n}: {row['gflops']} GFLOP/s (best {row['gflops_best']}), "
                  f"cpu/wall {r['cpu_wall']}, others {r['others']}, clean {r['clean']}/{r['tries']}", flush=True)
    if args.merge:
        rows = bc.merge_previous(args.out, rows, lambda r: (r["dtype"], r["n"]))
    out["rows"] = rows
    f32 = [r["gflops"] for r in rows if r["dtype"] == "float32"]
    out["peak_float32_gflops"] = max(f32) if f32 else None
    bf = [r["gflops"] for r in rows if r["dtype"] == "bfloat16"]
    out["peak_bfloat16_gflops"] = max(bf) if bf else None
    bc.write_json(args.out, out)


if __name__ == "__main__":
    main()
