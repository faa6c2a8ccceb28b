"""A/B tests of candidate fixes on the trainer's step, timed interleaved in one process.

Each variant rebuilds the trainer's real step (``trainer.loop.make_train_step``) after patching one piece of
``trainer.model`` *in this process only* (the trainer's files are not touched), so the measured gain is the gain the
same edit in ``trainer/model.py`` would give. Variants:

* ``baseline``: the trainer as it is;
* ``attn_heads_first``: attention computed in a [batch, heads, tokens, head_dim] layout: one transpose of the fused
  QKV output to [3, B, H, T, D] and one back, instead of einsums over [B, T, H, D] operands (which XLA lays out with
  a transpose/copy per operand, forward and backward);
* ``attn_dpa``: ``jax.nn.dot_product_attention(q, k, v, implementation="xla")`` on the [B, T, H, D] operands;
* ``bf16``: the spec's ``train.compute_dtype: bfloat16`` (no code change; parameters stay float32).

XLA flag variants (e.g. ``--xla_cpu_use_onednn=true``) cannot share a process: run this script once per flag set
(``XLA_FLAGS=... bench_variants.py --variants baseline``) and compare the CPU-time estimates.

Parameters are filled with random numbers of the right shapes (the step's speed does not depend on their values), so
no ``jit(init)`` is compiled: only the steps.

    .venv/bin/python benchmarks/bench_variants.py --config '{"model": "B/16", "res": 224, "text": 32, "batch": 8}' \
        --variants baseline,attn_heads_first
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402


def random_state(cfg, stage, opts, mesh):
    """The trainer's state structure (``make_state``) with random parameters instead of ``jit(init)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from trainer.loop import make_state, stage_rng, state_layout
    from trainer.model import abstract_params
    from trainer.optim import make_optimizer

    tx, _ = make_optimizer(stage, opts)
    _, sh = state_layout(cfg, tx, mesh, opts.sharding)
    rng = np.random.default_rng(0)

    def fill(path, a):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(a.shape, np.float32)
        if name == "logit_scale":
            return np.asarray(math.log(1 / 0.07), np.float32)
        return (rng.standard_normal(a.shape, np.float32) * 0.02).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(fill, abstract_params(cfg))
    params = jax.device_put(params, sh["params"])
    state = jax.jit(lambda p, r: make_state(p, tx, r), out_shardings=sh)(params, stage_rng(0, 0))
    return jax.block_until_ready(state)


# ---- patches ---------------------------------------------------------------------------------------------------------


def _attn_heads_first(self, x):
    import jax
    import jax.numpy as jnp

    b, t, w = x.shape
    h = self.heads
    d = w // h
    qkv = self.qkv(x).reshape(b, t, 3, h, d).transpose(2, 0, 3, 1, 4)  # [3, B, H, T, D]
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    if self.causal:
        logits = jnp.where(jnp.tril(jnp.ones((t, t), dtype=bool)), logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bhkd->bhqd", weights, v)  # [B, H, T, D]
    return self.out(y.transpose(0, 2, 1, 3).reshape(b, t, w))


def _attn_dpa(self, x):
    import jax

    b, t, w = x.shape
    h = self.heads
    qkv = self.qkv(x).reshape(b, t, 3, h, w // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal, implementation="xla")
    return self.out(y.reshape(b, t, w))


PATCHES = {"attn_heads_first": ("Attention", "__call__", _attn_heads_first),
           "attn_dpa": ("Attention", "__call__", _attn_dpa)}


class Patched:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        from trainer import compiled, model

        compiled.clear()
        self.undo = None
        if self.name in PATCHES:
            cls_name, attr, fn = PATCHES[self.name]
            cls = getattr(model, cls_name)
            self.undo = (cls, attr, getattr(cls, attr))
            setattr(cls, attr, fn)
        return self

    def __exit__(self, *exc):
        from trainer import compiled

        if self.undo:
            setattr(*self.undo)
        compiled.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--variants", default="baseline,attn_heads_first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample-s", type=float, default=3.0)
    ap.add_argument("--time-budget-s", type=float, default=240.0)
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=str(bc.RESULTS / "variants.json"))
    args = ap.parse_args()
    c = {"mask": "none", "ratio": 0.0, "remat": "none", "vocab": None, **json.loads(args.config)}

    import jax

    from planner.flops import stage_flops
    from trainer import mesh as meshlib
    from trainer.loop import make_train_step
    from trainer.model import MaskConfig, ModelConfig
    from trainer.synthetic import SyntheticSource

    log = bc.CompileLog()
    mesh = meshlib.make_mesh()
    benches = {}
    states = {}
    compile_info = {}
    for name in args.variants.split(","):
        dtype = "bfloat16" if name == "bf16" else c.get("dtype", "auto")
        spec = bc.make_spec(c["model"], c["res"], c["text"], c["batch"], c["mask"], c["ratio"], c["remat"], dtype)
        st = spec.stages[0]
        cfg = ModelConfig.for_stage(spec, 0, c["vocab"])
        mask = MaskConfig.for_stage(st)
        key = "shared"
        if key not in states:
            states[key] = random_state(cfg, st, spec.train, mesh)
        batch = meshlib.global_batch(SyntheticSource(spec, 0, vocab_size=min(256, cfg.vocab_size)).next_batch(), mesh,
                                     c["batch"])
        with Patched(name):
            step = make_train_step(cfg, mask, st, spec.train, mesh)
            mark = log.mark()
            t0 = time.perf_counter()
            step.lower(states[key], batch).compile()
            compile_info[name] = {"compile_wall_s": round(time.perf_counter() - t0, 2), **log.since(mark)}
        flops = stage_flops(c["model"], st).train_per_sample * c["batch"]

        def run(n, step=step, batch=batch):
            s = states[key]
            for _ in range(n):
                s, m = step(s, batch)
            states[key] = s
            return {"loss": float(jax.device_get(m["loss"]))}

        with bc.Meter() as m:
            run(1)
        k = max(1, int(math.ceil(args.sample_s / m.wall)))
        benches[name] = (run, k, flops)
        print(f"compiled {name}: {compile_info[name]['compile_wall_s']} s, first step {m.wall:.3f} s, {k} per sample",
              flush=True)
    res = bc.interleaved({n: (lambda r=r, k=k: r(k)) for n, (r, k, _) in benches.items()}, repeats=args.repeats,
                         time_budget_s=args.time_budget_s)
    out = bc.header("variants", args)
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    out["config"] = c
    out["variants"] = {}
    for n, (r, k, flops) in benches.items():
        t = res[n]
        cpu = sorted(s["cpu"] / (os.cpu_count() or 1) / k for s in t["samples"])[len(t["samples"]) // 2]
        clean = [s["wall"] / k for s in t["samples"] if bc.is_clean(s)]
        out["variants"][n] = {"steps_per_sample": k, "timing": t, "step_s_cpu": cpu,
                              "step_s_clean_wall": sorted(clean)[len(clean) // 2] if len(clean) >= 2 else None,
                              "flops_per_step": flops, "compile": compile_info[n]}
        print(f"{n}: step {t['median_s'] / k:.3f} s (cpu est {cpu:.3f} s; clean {t['clean']}/{t['tries']}), "
              f"{flops / cpu / 1e9:.1f} GFLOP/s by CPU time", flush=True)
    base = out["variants"].get("baseline")
    if base:
        for n, v in out["variants"].items():
            v["speedup_vs_baseline_cpu"] = base["step_s_cpu"] / v["step_s_cpu"]
            if base["step_s_clean_wall"] and v["step_s_clean_wall"]:
                v["speedup_vs_baseline_wall"] = base["step_s_clean_wall"] / v["step_s_clean_wall"]
    bc.write_json(args.out, out)


if __name__ == "__main__":
    main()
