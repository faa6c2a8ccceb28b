"""Per-device memory and FLOPs of a stage's real train step, from the XLA compiler, for a TPU slice that is not here.

With ``libtpu`` installed (``jax[tpu]`` for the pinned JAX), ``jax.experimental.topologies`` describes the devices
of any TPU topology on a CPU host; ``trainer.loop.make_train_step`` (the step ``clipa train`` runs, with the stage's
shapes, sharding, micro-batching and remat) is lowered against abstract arguments laid out on those devices and
compiled. ``memory_analysis()`` gives the per-device argument/output/temp bytes and the peak; ``cost_analysis()``
the FLOPs. A step that does not fit is a compile error (``RESOURCE_EXHAUSTED``), reported as not fitting.

Results are cached on disk (``~/.cache/clipa/fit_check/`` or ``$CLIPA_FIT_CACHE``) keyed by everything the compiled
program depends on (model, stage shape, micro-batch, remat, sharding, dtype, topology, libtpu version): a real-size
compile takes minutes. libtpu allows one process at a time (it holds a lock file), so never run two compiles in
parallel processes (on a host without TPUs, where nothing but compiles use it, ``ALLOW_MULTIPLE_LIBTPU_LOAD=1``
lifts the lock; the tests set it). Pitfall handled here: ``compute_dtype: auto`` resolves on the *host's* backend (f32 on CPU);
compiling for a TPU uses bfloat16 unless the spec names a dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from planner.errors import ClipaError
from planner.hardware import Hardware
from planner.spec import RunSpec

# hardware profile -> topology family in jax.experimental.topologies, and whether its topology names are 3-D
TPU_FAMILIES: dict[str, tuple[str, int]] = {"tpu-v5e": ("v5e", 2), "tpu-v6e": ("v6e", 2), "tpu-v5p": ("v5p", 3),
                                            "tpu-v4": ("v4", 3)}


class CompiledStage(BaseModel):
    """What the compiler says about one stage's train step on one device of the slice."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    topology: str
    chips: int
    per_device_batch: int
    micro_batch: int | None
    remat: str
    sharding: str
    dtype: str
    fits: bool
    peak_bytes: int | None  # None when the compile failed for lack of memory
    argument_bytes: int | None
    output_bytes: int | None
    temp_bytes: int | None
    flops_per_device: float | None
    compile_s: float
    error: str | None = None
    cached: bool = False


def libtpu_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("libtpu") is not None
    except (ImportError, ValueError):
        return False


def topology_name(hw: Hardware, chips: int) -> str:
    """The topology name of a ``chips``-chip slice of ``hw`` (e.g. tpu-v5e, 16 -> 'v5e:4x4')."""
    if hw.name not in TPU_FAMILIES:
        raise ClipaError("hardware", f"{hw.name} is not a TPU with a compile target (known: {', '.join(TPU_FAMILIES)})")
    if chips < 1 or chips & (chips - 1):
        raise ClipaError("slice", f"{chips} chips: a TPU slice has a power-of-two number of chips")
    fam, dims = TPU_FAMILIES[hw.name]
    e = int(math.log2(chips))
    parts = [2 ** (e // dims + (1 if i < e % dims else 0)) for i in range(dims)]
    if dims == 2:
        parts = sorted(parts)
    return f"{fam}:" + "x".join(str(p) for p in parts)


def tpu_devices(hw: Hardware, chips: int):
    from jax.experimental import topologies

    name = topology_name(hw, chips)
    dims = [int(x) for x in name.split(":")[1].split("x")] + [1]
    bounds = (min(2, dims[0]), min(2, dims[1]), 1)
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name="default",
                                            chips_per_host_bounds=bounds, num_slices=1)
    except Exception as e:  # JaxRuntimeError; the lock is the one failure a user can act on
        if "lockfile" not in str(e):
            raise
        raise ClipaError("libtpu", "another process holds libtpu's lock (/tmp/libtpu_lockfile): compile one at a "
                                   "time, or on a machine without TPUs set ALLOW_MULTIPLE_LIBTPU_LOAD=1") from None
    devs = list(topo.devices)
    if len(devs) != chips:
        raise ClipaError("slice", f"topology {name} lists {len(devs)} devices, not {chips} chips")
    return name, devs


def _cache_dir() -> Path:
    return Path(os.environ.get("CLIPA_FIT_CACHE") or Path.home() / ".cache" / "clipa" / "fit_check")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("jax", "jaxlib", "libtpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _cache_path(spec: RunSpec, index: int, hw: Hardware, chips: int) -> Path:
    """Keyed by what the compiled program depends on: model, stage shape (not its samples, lr or init), the stage's
    execution options, the target dtype, the topology and the compiler versions."""
    st = spec.stages[index]
    key_src = json.dumps({"model": spec.model, "stage": st.model_dump(mode="json", exclude={
        "init", "samples", "lr_base", "warmup_samples", "micro_batch", "remat"}),
        "opts": spec.stage_train(index).model_dump(mode="json"), "dtype": _target_dtype(spec),
        "topology": topology_name(hw, chips), **_versions()}, sort_keys=True)
    return _cache_dir() / f"{hashlib.sha256(key_src.encode()).hexdigest()[:20]}.json"


def cached_result(spec: RunSpec, index: int, hw: Hardware, chips: int) -> CompiledStage | None:
    """A stored compile of this stage for this slice, or None; never imports JAX (``clipa plan`` reads these)."""
    if hw.name not in TPU_FAMILIES:
        return None
    try:
        path = _cache_path(spec, index, hw, chips)
    except ClipaError:
        return None
    if not path.exists():
        return None
    try:
        return CompiledStage.model_validate({**json.loads(path.read_text()), "cached": True})
    except (OSError, ValueError):
        return None  # an unreadable cache entry is recompiled


def _target_dtype(spec: RunSpec) -> str:
    return "bfloat16" if spec.train.compute_dtype == "auto" else spec.train.compute_dtype


def compile_stage(spec: RunSpec, index: int, hw: Hardware, chips: int, use_cache: bool = True) -> CompiledStage:
    """Compile stage ``index`` of ``spec`` (with its micro_batch/remat) for a ``chips``-chip slice of ``hw``."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from trainer import mesh as meshlib
    from trainer.loop import make_train_step, state_layout
    from trainer.model import MaskConfig, ModelConfig
    from trainer.optim import make_optimizer

    st = spec.stages[index]
    opts = spec.stage_train(index)
    dtype = _target_dtype(spec)
    name = topology_name(hw, chips)
    import libtpu  # noqa: F401  (a clear ImportError when absent; callers check libtpu_available first)

    path = _cache_path(spec, index, hw, chips)
    if use_cache:
        hit = cached_result(spec, index, hw, chips)
        if hit is not None:
            return hit
    if st.batch_size % chips:
        raise ClipaError(f"stages[{index}].batch_size", f"{st.batch_size} is not divisible by {chips} chips")
    _, devices = tpu_devices(hw, chips)
    mesh = meshlib.make_mesh(devices)
    meshlib.check_layout(st.batch_size, mesh, opts.micro_batch, field=f"stages[{index}].batch_size")
    cfg = dataclasses.replace(ModelConfig.for_stage(spec, index), dtype=dtype)
    tx, _ = make_optimizer(st, opts)
    abstract, shardings = state_layout(cfg, tx, mesh, opts.sharding)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    bsh = NamedSharding(mesh, P(meshlib.DATA_AXIS))
    batch = {"images": jax.ShapeDtypeStruct((st.batch_size, st.image_res, st.image_res, 3), np.uint8, sharding=bsh),
             "tokens": jax.ShapeDtypeStruct((st.batch_size, st.text_len), np.int32, sharding=bsh)}
    step = make_train_step(cfg, MaskConfig.for_stage(st), st, opts, mesh)
    t0 = time.perf_counter()
    common = {"topology": name, "chips": chips, "per_device_batch": st.batch_size // chips,
              "micro_batch": opts.micro_batch, "remat": opts.remat, "sharding": opts.sharding, "dtype": dtype}
    try:
        compiled = step.lower(state, batch).compile()
    except Exception as e:  # XLA raises its own runtime error type; only "out of memory" means "does not fit"
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "exceeds" not in text:
            raise
        out = CompiledStage(**common, fits=False, peak_bytes=None, argument_bytes=None, output_bytes=None,
                            temp_bytes=None, flops_per_device=None, compile_s=time.perf_counter() - t0,
                            error=" ".join(text.split())[:400])
    else:
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        peak = int(getattr(mem, "peak_memory_in_bytes", 0) or (mem.argument_size_in_bytes + mem.output_size_in_bytes
                   - mem.alias_size_in_bytes + mem.temp_size_in_bytes))
        out = CompiledStage(**common, fits=peak <= hw.memory_gb * 1e9, peak_bytes=peak,
                            argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
                            temp_bytes=int(mem.temp_size_in_bytes), flops_per_device=float(cost.get("flops", 0.0)),
                            compile_s=time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    from planner.store import atomic_write_text

    atomic_write_text(path, out.model_dump_json(indent=1, exclude={"cached"}) + "\n")
    return out


RECHOICE_ROUNDS = 3  # compile, re-choose, recompile: at most this many re-choices per plan


def over_hbm_temporaries(error: str | None) -> float | None:
    """The HLO temporaries, in bytes, that libtpu reports for a step over HBM ("... HLO temporaries (21.93G)
    exceeds ..."), or None."""
    import re

    m = re.search(r"temporaries \(([0-9.]+)G\)", error or "")
    return float(m.group(1)) * 2**30 if m else None


def required_bytes(result: CompiledStage, state_bytes: float) -> float:
    """Bytes per device the compiled step needs: its peak, or for a step that did not fit, the HLO temporaries
    the compiler reported plus the training state it keeps."""
    if result.peak_bytes:
        return float(result.peak_bytes)
    temps = over_hbm_temporaries(result.error)
    return temps + state_bytes if temps is not None else float("inf")


def attach_compiled(body: dict, plan_dir: Path, compile_: bool | None) -> None:
    """Replace the chosen plan's analytic per-stage peaks by compiled ones where a compile of that exact stage and
    slice is cached (or, with ``compile_``, after compiling it; None: compile when libtpu is installed); rewrites
    plan.json. Without a compile this never imports JAX, so ``clipa plan`` stays fast where libtpu is absent."""
    from planner.hardware import get_hardware
    from planner.spec import load_spec
    from planner.store import atomic_write_text

    c = body["chosen"]
    hw = get_hardware(c["hardware"])
    if hw.name not in TPU_FAMILIES:
        return
    spec = load_spec(c["spec"])
    auto = compile_ is None
    if auto:
        compile_ = libtpu_available()
    can_compile = compile_ and libtpu_available()
    try:
        _attach(body, plan_dir, spec, hw, bool(compile_), can_compile)
    except ClipaError as e:  # e.g. libtpu's lock held by another process: asked for, it is an error; by default, a note
        if not auto:
            raise
        body.setdefault("notes", []).append(f"not compiled ({e}); memory numbers are analytic")
        atomic_write_text(Path(plan_dir) / "plan.json", json.dumps(body, indent=2) + "\n")


def _attach(body: dict, plan_dir: Path, spec: RunSpec, hw: Hardware, compile_: bool, can_compile: bool) -> None:
    from planner.store import atomic_write_text

    c = body["chosen"]
    if can_compile and any(cached_result(spec, i, hw, c["chips"]) is None for i in range(len(c["stages"]))):
        sys.stderr.write(f"compiling the chosen plan's {len(c['stages'])} stages for {c['chips']} {hw.name} chips "
                         "(libtpu; minutes per stage, cached; --no-compile skips it)\n")
    if compile_ and not can_compile:
        body.setdefault("notes", []).append("--compile: libtpu is not installed (pip install 'jax[tpu]'); memory "
                                            "numbers are analytic")
    chips, n = c["chips"], len(c["stages"])
    scales = [1.0] * n
    rechosen: dict[int, str] = {}
    for attempt in range(RECHOICE_ROUNDS + 1):
        got = [compile_stage(spec, i, hw, chips) if can_compile else cached_result(spec, i, hw, chips)
               for i in range(n)]
        over = [i for i, g in enumerate(got) if g is not None and not g.fits]
        if not over or not can_compile or attempt == RECHOICE_ROUNDS:
            break
        # The compiler needs more than the analytic model said: scale those stages' estimates by what it reported
        # and choose again (more micro-batches, more remat, or FSDP), re-pricing the run with the extra FLOPs.
        from planner.memory import estimate
        from planner.wallclock import chosen_calendar

        for i in over:
            st, opts = spec.stages[i], spec.stage_train(i)
            est = estimate(spec.model, st, chips, opts.micro_batch, opts.remat, opts.sharding)
            scales[i] = max(scales[i] * 1.15, required_bytes(got[i], est.state_bytes) / est.peak_bytes)
            rechosen.setdefault(i, f"micro_batch {opts.micro_batch or 'none'}, remat {opts.remat}, {opts.sharding}: "
                                   f"{required_bytes(got[i], est.state_bytes) / 1e9:.1f} GB compiled")
        stages, train, cal = chosen_calendar(spec.model, list(spec.stages), hw, c["pricing"], chips, scales)
        new = spec.model_copy(update={"stages": stages, "train": spec.train.model_copy(update=train)})
        assert new.run_id == spec.run_id  # execution settings are not part of a run's identity
        spec = new
        c.update(cal)
        spec.write(c["spec"])
    changed = False
    for i, (row, g) in enumerate(zip(c["stages"], got)):
        if g is None:
            continue
        row["memory_source"] = "compiled"
        row["analytic_peak_memory_gb"] = row["peak_memory_gb"]
        row["peak_memory_gb"] = g.peak_bytes / 1e9 if g.peak_bytes else None
        row["fits"] = g.fits
        row["compile_s"] = g.compile_s
        if i in rechosen:
            body.setdefault("notes", []).append(
                f"stage {i + 1}: the compiler put {rechosen[i]}, over the {hw.memory_gb:g} GB HBM; re-chosen with "
                f"the estimate scaled by {scales[i]:.2f}: micro_batch {row['micro_batch'] or 'none'}, remat "
                f"{row['remat']}, {c['sharding']} ({'fits' if g.fits else 'still over'}); cost and wall-clock "
                "re-priced")
        if not g.fits:
            body.setdefault("notes", []).append(
                f"stage {i + 1}: the compiler puts it over the {hw.memory_gb:g} GB HBM on {chips} chips (the "
                "analytic model said it fits): check it with clipa fit-check, or plan for a larger --slice")
        changed = True
    if rechosen and c["cost_usd"] > body["budget_usd"]:
        body.setdefault("notes", []).append(
            f"with the compiled memory fit the run costs ${c['cost_usd']:,.0f}, over the ${body['budget_usd']:,.0f} "
            "budget: plan with a larger --slice, or a smaller budget's recipe")
    if changed:
        atomic_write_text(Path(plan_dir) / "plan.json", json.dumps(body, indent=2) + "\n")
