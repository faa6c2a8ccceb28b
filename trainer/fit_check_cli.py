"""``clipa fit-check SPEC|PLAN --hardware H --slice N``: does each stage's train step fit one device of the slice?

Per stage: the setting to check is the stage's own micro_batch/remat (or ``train.*``) when the spec sets one, else
the analytic model's choice (``planner.memory.choose_fit``). On a TPU target with libtpu installed the real step is
compiled for the slice (``trainer.fit_check``, cached; with micro-batches the compiled FLOPs are left out: XLA's
cost analysis counts a loop body once); when the compiler says it does not fit, the next settings
in the search order are compiled, up to ``--max-compiles`` per stage. Elsewhere (GPUs, no libtpu, ``--analytic``)
the numbers are the analytic model's; each row says which. A stage that fits no setting (by the analytic model's
smallest peak, or after every compile tried) is one line on stderr and the command exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _load(target: Path):
    from planner.spec import load_spec

    if target.is_dir():
        from planner.plan import load_plan

        _, runs = load_plan(target)
        if not runs:
            from planner.errors import ClipaError

            raise ClipaError("plan", f"{target} lists no runs")
        return runs[0][0]
    return load_spec(target)


def _over(peak_gb: float, limit_gb: float, mb: int | None, remat: str, sharding: str) -> str:
    return (f"{peak_gb:.1f} GB per device over {limit_gb:.1f} GB with micro-batch {mb}, remat {remat}, sharding "
            f"{sharding} (clipa plan --slice chooses settings that fit)")


def check_stages(spec, hw, chips: int, compile_: bool, max_compiles: int) -> list[dict]:
    """One row per stage (see the module docstring)."""
    from planner.flops import stage_flops
    from planner.memory import candidate_settings, choose_fit, estimate, remat_extra_flops_per_sample
    from trainer import fit_check

    rows = []
    for i, st in enumerate(spec.stages):
        opts = spec.stage_train(i)
        explicit = st.micro_batch is not None or st.remat is not None or spec.train.micro_batch is not None \
            or spec.train.remat != "none"
        sharding = opts.sharding
        limit = 0.9 * hw.memory_gb
        if explicit:
            settings = [(opts.micro_batch, opts.remat)]
        else:
            first = choose_fit(spec.model, st, chips, hw.memory_gb, sharding)
            order = candidate_settings(st.batch_size, chips)
            start = order.index((first.micro_batch, first.remat))
            settings = order[start:]
        # "fits no setting": not even the smallest peak over every micro-batch, remat and sharding
        best_analytic = min((estimate(spec.model, st, chips, mb, r, sh) for mb, r in
                             candidate_settings(st.batch_size, chips) for sh in ("data", "fsdp")),
                            key=lambda e: e.peak_bytes)
        row = {"stage": i + 1, "image_res": st.image_res, "text_len": st.text_len, "batch_size": st.batch_size,
               "per_device_batch": st.batch_size // chips if st.batch_size % chips == 0 else None,
               "sharding": sharding, "hbm_gb": hw.memory_gb, "limit_gb": limit}
        if st.batch_size % chips:
            rows.append({**row, "fits": False, "reason": f"batch {st.batch_size} does not split over {chips} chips"})
            continue
        if best_analytic.peak_gb > limit:
            rows.append({**row, "fits": False, "micro_batch": best_analytic.micro_batch, "remat": best_analytic.remat,
                         "peak_gb": best_analytic.peak_gb, "memory_source": "analytic",
                         "reason": f"needs {best_analytic.peak_gb:.1f} GB per device at its smallest setting "
                                   f"(micro-batch {best_analytic.micro_batch}, remat {best_analytic.remat}), over "
                                   f"{limit:.1f} GB"})
            continue
        planner_flops = stage_flops(spec.model, st).train_per_sample * st.batch_size
        result = None
        tried = 0
        for mb, remat in settings:
            est = estimate(spec.model, st, chips, mb, remat, sharding)
            extra = remat_extra_flops_per_sample(spec.model, st, remat, mb) * st.batch_size
            row_s = {**row, "micro_batch": mb, "remat": remat, "analytic_peak_gb": est.peak_gb,
                     "planner_flops_per_step": planner_flops, "planner_flops_with_recompute": planner_flops + extra}
            if not compile_:
                result = {**row_s, "peak_gb": est.peak_gb, "memory_source": "analytic", "fits": est.peak_gb <= limit}
                if not result["fits"]:
                    result["reason"] = _over(est.peak_gb, limit, mb, remat, sharding)
                if result["fits"] or explicit:
                    break
                continue
            sub = spec.model_copy(update={"stages": [s.model_copy(update={"micro_batch": mb, "remat": remat})
                                                     if k == i else s for k, s in enumerate(spec.stages)]})
            c = fit_check.compile_stage(sub, i, hw, chips)
            tried += 0 if c.cached else 1
            result = {**row_s, "memory_source": "compiled", "topology": c.topology, "compile_s": c.compile_s,
                      "cached": c.cached, "fits": c.fits and (c.peak_bytes or 0) <= limit * 1e9,
                      "peak_gb": (c.peak_bytes / 1e9) if c.peak_bytes else None,
                      "compiled_flops_per_step": (c.flops_per_device or 0) * chips or None}
            if c.flops_per_device and not mb:  # XLA's cost analysis counts a loop body (a micro-batch) once
                result["compiled_over_planner_flops"] = c.flops_per_device * chips / (planner_flops + extra)
            if c.error:
                result["reason"] = c.error
            elif not result["fits"]:
                result["reason"] = _over(result["peak_gb"], limit, mb, remat, sharding)
            if result["fits"] or explicit or tried >= max_compiles:
                break
        rows.append(result)
    return rows


def register(app: typer.Typer) -> None:
    @app.command("fit-check")
    def fit_check_cmd(
        target: Annotated[Path, typer.Argument(help="run spec file, or a plan folder (its first run)")],
        hardware: Annotated[Optional[str], typer.Option("--hardware", help="hardware profile; default: the spec's")] = None,
        slice_chips: Annotated[Optional[int], typer.Option("--slice", help="chips in the slice; default one host")] = None,
        analytic: Annotated[bool, typer.Option("--analytic", help="only the analytic model, even where libtpu could compile")] = False,
        max_compiles: Annotated[int, typer.Option(min=1, max=20, help="compiles per stage at most (each takes minutes at real sizes)")] = 3,
        json_out: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
    ) -> None:
        """Per stage: per-device batch, micro-batches, remat, peak GB against HBM, compiled FLOPs against
        planner.flops and compile time (TPU targets with libtpu installed), else the analytic memory model.
        Exit 2 with one line per stage that fits no setting."""
        from rich.table import Table

        from planner.cli import _error_line, console, print_json
        from planner.hardware import get_hardware
        from planner.wallclock import check_slice, default_chips
        from trainer import fit_check

        spec = _load(target)
        hw = get_hardware(hardware or spec.hardware)
        chips = slice_chips if slice_chips is not None else default_chips(hw)
        check_slice(hw, chips)
        compile_ = (not analytic) and hw.name in fit_check.TPU_FAMILIES and fit_check.libtpu_available()
        if compile_:
            fit_check.topology_name(hw, chips)  # a bad slice size is one line before any compile
        rows = check_stages(spec, hw, chips, compile_, max_compiles)
        bad = [r for r in rows if not r["fits"]]
        if json_out:
            print_json({"model": spec.model, "hardware": hw.name, "chips": chips, "stages": rows,
                        "fits": not bad})
        else:
            t = Table(title=f"fit-check {spec.model} on {chips} x {hw.name} ({hw.memory_gb:g} GB each)")
            for col in ("stage", "res/text", "batch/device", "micro-batch", "remat", "peak GB", "limit GB", "source",
                        "FLOPs compiled/planner", "compile s", "fits"):
                t.add_column(col)
            for r in rows:
                t.add_row(str(r["stage"]), f"{r['image_res']}/{r['text_len']}", str(r.get("per_device_batch")),
                          str(r.get("micro_batch") or "-"), str(r.get("remat", "-")),
                          f"{r['peak_gb']:.2f}" if r.get("peak_gb") else "-", f"{r['limit_gb']:.1f}",
                          r.get("memory_source", "-"),
                          f"{r['compiled_over_planner_flops']:.3f}" if r.get("compiled_over_planner_flops") else "-",
                          f"{r['compile_s']:.0f}{' (cached)' if r.get('cached') else ''}" if "compile_s" in r else "-",
                          "yes" if r["fits"] else "NO")
            console.print(t)
        for r in bad:
            _error_line(f"error: stages[{r['stage'] - 1}]: {spec.model} at {r['image_res']} px, batch "
                        f"{r['batch_size']} does not fit {chips} x {hw.name}: {r.get('reason', 'over the limit')}")
        if bad:
            raise typer.Exit(2)
