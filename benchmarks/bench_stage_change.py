"""Stage changes: does a new resolution / mask / text length compile the step more than once?

Runs the trainer's real loop (``trainer.loop.train``) on a multi-stage spec with the synthetic source and counts every
XLA compilation (``jax.monitoring``'s backend-compile events, by function name), attributed to the stage and to the
step during which it happened: the source factory and ``next_batch`` of a wrapping source mark the positions. A
stage change should cost exactly one compile of ``jit(step)`` (plus the small per-stage state/optimiser programs) and
nothing after the stage's first step. A second run of the same spec in the same process (a fresh run directory)
shows what the trainer's jit caches save.

    .venv/bin/python benchmarks/bench_stage_change.py [--model mu/8] [--out benchmarks/results/stage_change.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

STAGES = [  # res, text, mask, ratio
    (32, 8, "none", 0.0),
    (32, 8, "random", 0.5),
    (16, 8, "none", 0.0),
    (32, 16, "grid", 0.75),
    (32, 16, "block", 0.5),
    (32, 16, "none", 0.0),
]


class Position:
    stage = -1
    batches = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mu/8")
    ap.add_argument("--steps", type=int, default=4, help="steps per stage")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--stages", type=int, default=len(STAGES), help="use the first N stages of the list")
    ap.add_argument("--out", default=str(bc.RESULTS / "stage_change.json"))
    args = ap.parse_args()
    stages = STAGES[: max(2, args.stages)]

    from planner.spec import RunSpec
    from trainer.loop import train
    from trainer.synthetic import SyntheticSource

    log = bc.CompileLog()
    pos = Position()
    events: list[dict] = []

    def listener(event: str, duration: float, **kw) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append({"stage": pos.stage, "batches_fetched": pos.batches, "fun": str(kw.get("fun_name")),
                           "s": round(duration, 3)})

    import jax

    jax.monitoring.register_event_duration_secs_listener(listener)

    class Counting(SyntheticSource):
        def next_batch(self):
            pos.batches += 1
            return super().next_batch()

    def factory(spec, k, pidx, pcount):
        pos.stage, pos.batches = k, 0
        return Counting(spec, k, pidx, pcount, vocab_size=256)

    spec = RunSpec.model_validate(dict(
        model=args.model, dataset="local:synthetic", hardware="cpu-2core", pricing="on-demand",
        stages=[dict(samples=args.batch * args.steps, batch_size=args.batch, image_res=r, text_len=t, image_mask=m,
                     mask_ratio=q, lr_base=1e-3, init="scratch" if i == 0 else "previous")
                for i, (r, t, m, q) in enumerate(stages)],
        train=dict(checkpoint_every_steps=10_000, log_every_steps=10_000),
    ))
    out = bc.header("stage_change", args)
    out["stages"] = [{"res": r, "text": t, "mask": m, "ratio": q} for r, t, m, q in stages]
    runs = []
    for attempt in ("cold", "warm (same process, new run dir)"):
        events.clear()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train(spec, Path(tmp) / "run", source_factory=factory, vocab_size=256, progress=False,
                  handle_signals=False)
            wall = time.perf_counter() - t0
        per_stage = []
        for k in range(len(stages)):
            ev = [e for e in events if e["stage"] == k]
            # the step is called after the first batch is fetched; the next batch is fetched right after the call
            # returns, so anything compiled once 2 or more batches were fetched is a compile after the first step
            after_first = [e for e in ev if e["batches_fetched"] >= 2]
            per_stage.append({
                "stage": k, **out["stages"][k],
                "compiles": len(ev),
                "step_compiles": sum(e["fun"] == "jit(step)" for e in ev),
                "compiles_after_first_step": len(after_first),
                "compile_s": round(sum(e["s"] for e in ev), 2),
                "by_function": {f: sum(e["fun"] == f for e in ev) for f in sorted({e["fun"] for e in ev})},
                "seconds_by_function": {f: round(sum(e["s"] for e in ev if e["fun"] == f), 2)
                                        for f in sorted({e["fun"] for e in ev})},
                "after_first_step": after_first,
            })
        before = [e for e in events if e["stage"] < 0]
        runs.append({"run": attempt, "wall_s": round(wall, 2), "stages": per_stage,
                     "compiles_before_first_stage": len(before)})
        print(f"{attempt}: {wall:.1f} s; per stage (compiles / step compiles / after first step): "
              + ", ".join(f"{s['compiles']}/{s['step_compiles']}/{s['compiles_after_first_step']}" for s in per_stage),
              flush=True)
    out["runs"] = runs
    cold = runs[0]["stages"]
    out["verdict"] = {
        "max_step_compiles_per_stage": max(s["step_compiles"] for s in cold),
        "compiles_after_first_step": sum(s["compiles_after_first_step"] for s in cold),
        "recompiles_more_than_once": any(s["step_compiles"] > 1 or s["compiles_after_first_step"] for s in cold),
    }
    out["all_compile_events"] = log.since(0)
    bc.write_json(args.out, out)


if __name__ == "__main__":
    main()
