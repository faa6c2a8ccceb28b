"""Profile: where the trainer's step spends its time, per XLA op, grouped by kind (matmul, attention softmax, GELU,
LayerNorm, transposes/copies, optimiser, other elementwise).

Traces a few steps of the real step (``bench_common.StepBench``) with ``jax.profiler`` and XLA's per-thunk trace
events (``XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true``, set here before JAX starts), reads the trace back with
``jax.profiler.ProfileData``, and classifies every op by what its fused computation contains in the compiled HLO
(``compiled.as_text()``). The matmul share of the step and the FLOP rate *inside* the matmuls (model FLOPs from
``planner.flops`` over the matmul time) say how much of an MFU gap is the matmul kernels and how much is everything
around them.

    .venv/bin/python benchmarks/bench_profile.py --config '{"model": "B/16", "res": 224, "text": 32, "batch": 8}'
"""

from __future__ import annotations

import os

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?\s+([\w\-]+)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]+)"')
OP_NAMES: dict[str, str] = {}


def parse_hlo(text: str) -> tuple[dict[str, tuple[str, str | None]], dict[str, str]]:
    """(instruction name -> (opcode, called computation)), (computation name -> body text)."""
    instrs: dict[str, tuple[str, str | None]] = {}
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        s = line.strip()
        if s.endswith("{") and ("(" in s) and not s.startswith("%") or s.startswith("ENTRY") or (
                s.startswith("%") and s.endswith("{") and "->" in s):
            name = s.split()[1] if s.startswith("ENTRY") else s.split()[0]
            current = name.lstrip("%")
            comps[current] = []
            continue
        if current is not None:
            comps[current].append(s)
        m = _INSTR.match(line)
        if m:
            c = _CALLS.search(line)
            instrs[m.group(1)] = (m.group(2), c.group(1) if c else None)
            o = _OPNAME.search(line)
            if o:
                OP_NAMES[m.group(1)] = o.group(1).replace("jit(step)/", "")
    return instrs, {k: "\n".join(v) for k, v in comps.items()}


def classify(name: str, instrs: dict, comps: dict) -> str:
    op, called = instrs.get(name, ("?", None))
    body = comps.get(called, "") if called else ""
    text = body + " " + op
    if op in ("dot", "convolution") or " dot(" in body or "convolution(" in body or name.startswith(("dot", "ynn")) \
            and " dot(" in body:
        return "matmul"
    if name.startswith("ynn_fusion") or name.startswith("xnn_fusion") or name.startswith("onednn"):
        return "matmul" if ("dot(" in body or not body) else "library fusion (non-matmul)"
    if "exponential(" in text and "reduce(" in text:
        return "softmax"
    if "exponential(" in text:
        return "exp (softmax parts / loss)"
    if "tanh(" in text or "erf(" in text:
        return "gelu"
    if "sqrt(" in text:  # rsqrt: LayerNorm; sqrt + divide: Adam
        return "layernorm" if "rsqrt(" in text and "divide(" not in text else "adam / norms"
    if op in ("transpose", "copy") or "transpose(" in body or name.startswith(("transpose", "copy")):
        return "transpose / copy"
    if "reduce(" in text:
        return "reduction"
    if op in ("gather", "scatter", "dynamic-slice", "dynamic-update-slice") or "gather(" in body or "scatter(" in body:
        return "gather / scatter"
    return "other elementwise"


def _by_kind_op(per_step: dict, instrs: dict, comps: dict, total: float) -> list[dict]:
    """Time per (kind, originating JAX primitive, forward/backward): which part of the model the time belongs to."""
    agg: collections.Counter = collections.Counter()
    n: collections.Counter = collections.Counter()
    for k, v in per_step.items():
        op = OP_NAMES.get(k) or "?"
        direction = ("backward" if op.startswith("transpose(") else "forward" if "jvp(" in op
                     else "optimizer / loss" if op != "?" else "?")
        prim = op.rsplit("/", 1)[-1]
        key = (classify(k, instrs, comps), prim, direction)
        agg[key] += v
        n[key] += 1
    return [{"kind": a, "primitive": b, "pass": c, "s": round(v, 4), "share": round(v / total, 4), "ops": n[(a, b, c)]}
            for (a, b, c), v in agg.most_common(30)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help='JSON: {"model", "res", "text", "batch", optional "mask", ...}')
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=str(bc.RESULTS / "profile.json"))
    args = ap.parse_args()
    c = {"mask": "none", "ratio": 0.0, "remat": "none", "dtype": "auto", "vocab": None, **json.loads(args.config)}

    import jax

    sb = bc.StepBench(c["model"], c["res"], c["text"], c["batch"], c["mask"], c["ratio"], c["remat"], c["dtype"],
                      c["vocab"])
    sb.compile_and_analyse()
    hlo = sb.step_fn.lower(sb.box["state"], sb.batch).compile().as_text()
    instrs, comps = parse_hlo(hlo)
    sb.run(1)
    opts = jax.profiler.ProfileOptions()
    opts.host_tracer_level = 3
    opts.python_tracer_level = 0
    with tempfile.TemporaryDirectory() as tmp:
        with bc.Meter() as m_untraced:
            sb.run(args.steps)
        jax.profiler.start_trace(tmp, profiler_options=opts)
        with bc.Meter() as m:
            sb.run(args.steps)
        jax.profiler.stop_trace()
        files = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        pdata = jax.profiler.ProfileData.from_file(sorted(files)[-1])
        dur: collections.Counter = collections.Counter()
        cnt: collections.Counter = collections.Counter()
        for plane in pdata.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                if line.name == "python":
                    continue
                for ev in line.events:
                    if ev.name.startswith("ThunkExecutor") or ev.name.startswith("$"):
                        continue
                    dur[ev.name] += ev.duration_ns
                    cnt[ev.name] += 1
    step_s = m.wall / args.steps
    per_step = {k: v / 1e9 / args.steps for k, v in dur.items()}
    total_ops = sum(per_step.values())
    cats: collections.Counter = collections.Counter()
    for k, v in per_step.items():
        cats[classify(k, instrs, comps)] += v
    matmul_s = cats.get("matmul", 0.0)
    out = bc.header("profile", args)
    out.update({
        "config": c, "label": args.label or json.dumps(c), "step_s_traced": step_s,
        "step_s_untraced": m_untraced.wall / args.steps, "cpu_wall": round(m.cpu / m.wall, 3),
        "others": round(m.others, 3), "op_time_per_step_s": total_ops,
        "flops_per_step": sb.flops_per_step, "achieved_gflops_traced": sb.flops_per_step / step_s / 1e9,
        "matmul_s": matmul_s, "matmul_share_of_op_time": matmul_s / total_ops if total_ops else None,
        "gflops_inside_matmuls": sb.flops_per_step / matmul_s / 1e9 if matmul_s else None,
        "categories": {k: {"s": round(v, 4), "share": round(v / total_ops, 4)} for k, v in cats.most_common()},
        "top_ops": [{"op": k, "kind": classify(k, instrs, comps), "jax_op": OP_NAMES.get(k), "s": round(v, 4),
                     "share": round(v / total_ops, 4), "calls_per_step": cnt[k] / args.steps}
                    for k, v in sorted(per_step.items(), key=lambda kv: -kv[1])[:25]],
        "hlo_instructions": len(instrs),
        "by_kind_and_jax_op": _by_kind_op(per_step, instrs, comps, total_ops),
        "ops": [[k, classify(k, instrs, comps), OP_NAMES.get(k), round(v, 5)]
                for k, v in sorted(per_step.items(), key=lambda kv: -kv[1])],
    })
    print(f"{out['label']}: step {step_s:.3f} s traced ({out['step_s_untraced']:.3f} untraced), op time "
          f"{total_ops:.3f} s, matmul share {100 * (out['matmul_share_of_op_time'] or 0):.0f}%, "
          f"{out['gflops_inside_matmuls'] or 0:.0f} GFLOP/s inside matmuls; others {m.others:.2f}", flush=True)
    for k, v in out["categories"].items():
        print(f"   {k:28s} {v['s']:8.3f} s  {100 * v['share']:5.1f}%")
    bc.write_json(args.out, out)


if __name__ == "__main__":
    main()
