"""The planner's commands (schema, validate, cost, ...) and the CLI conventions every command follows.

Conventions: every command that reports numbers has ``--json`` (one JSON object on stdout, nothing else); bad input
raises ``ClipaError`` and ``run_app`` turns it into one line on stderr and exit code 2; nothing here imports JAX.
Commands that take a run take either a spec file or ``--model/--dataset/--schedule``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from planner.errors import ClipaError

app = typer.Typer(
    name="clipa",
    help=(
        "Plan and train CLIP models under a cost budget, using the CLIPA inverse scaling law.\n\n"
        "Start with:  clipa plan --budget 10000   (the best recipe for $10k of A100 time, at the CLIPA papers' "
        "pricing).  Price a recipe with:  clipa cost --model H/14 --schedule \"12.8B@84/8 + 512M@224/32~0.3\"."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Piped output (README examples, logs) gets a wide fixed width instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

SpecArg = Annotated[Optional[Path], typer.Argument(help="run spec file (YAML or JSON); or give --model/--schedule")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="model variant, e.g. B/16, L/14, H/14, G/14")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset: laion-400m, laion-2b, datacomp-1b, ...")]
ScheduleOpt = Annotated[
    Optional[str],
    typer.Option(
        "--schedule",
        "-s",
        help="stages in the papers' notation, e.g. \"12.8B@84/8 + 512M@224/32~0.3 + 128M@336/32~0.4\" "
        "(SAMPLES@RES[/TEXTLEN[:reduction]][~MASK_RATIO[:mask]][,batch=N][,lr=X][,warmup=N])",
    ),
]
HardwareOpt = Annotated[Optional[str], typer.Option("--hardware", help="hardware profile (see: clipa hardware)")]
PricingOpt = Annotated[
    Optional[str], typer.Option("--pricing", help="on-demand, spot, cud-1y, cud-3y, clipa-paper or custom:USD_PER_HOUR")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def resolve_spec(
    spec: Path | None,
    model: str | None,
    dataset: str,
    schedule: str | None,
    hardware: str | None = None,
    pricing: str | None = None,
):
    """A RunSpec from a file or from --model/--dataset/--schedule (hardware/pricing override the spec's)."""
    from planner.hardware import PAPER_HARDWARE, default_pricing
    from planner.schedule import parse_schedule
    from planner.spec import load_spec, spec_from_dict

    if spec is not None:
        if model or schedule:
            raise ClipaError("spec", "give either a spec file or --model/--schedule, not both")
        loaded = load_spec(spec)
        if hardware or pricing:
            data = loaded.model_dump(mode="json")
            if hardware:
                data["hardware"] = hardware
                data["pricing"] = pricing or default_pricing(hardware)
            else:
                data["pricing"] = pricing
            loaded = spec_from_dict(data)
        return loaded
    if not model or not schedule:
        raise ClipaError("spec", "give a spec file, or both --model and --schedule")
    stages = parse_schedule(schedule, model)
    hw = hardware or PAPER_HARDWARE
    return spec_from_dict(
        {
            "model": model,
            "dataset": dataset,
            "hardware": hw,
            "pricing": pricing or default_pricing(hw),
            "stages": [s.model_dump(mode="json") for s in stages],
        }
    )


def fmt_flops(x: float) -> str:
    return f"{x:.3e}"


def fmt_usd(x: float) -> str:
    if 0 < abs(x) < 0.1:  # the CPU profile's sub-cent budgets and runs: significant digits, not "$0.00"
        return f"${x:.3g}"
    return f"${x:,.2f}" if x < 100 else f"${x:,.0f}"


def fmt_hours(x: float) -> str:
    if 0 < abs(x) < 0.1:
        return f"{x:.2g}"
    return f"{x:,.2f}" if x < 10 else f"{x:,.0f}"


@app.command()
def schema() -> None:
    """Print the JSON Schema of a run spec (the contract between planner and trainer)."""
    from planner.spec import spec_json_schema

    print_json(spec_json_schema())


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="run spec file (YAML or JSON)")]) -> None:
    """Check a run spec file; print its run id and schedule, or one line naming the bad field (exit code 2)."""
    from planner.spec import load_spec

    s = load_spec(spec)
    console.print(f"[green]valid[/green] {spec}: run id {s.run_id}, {s.model} on {s.dataset}: {s.schedule}")


@app.command()
def cost(
    spec: SpecArg = None,
    model: ModelOpt = None,
    dataset: DatasetOpt = "datacomp-1b",
    schedule: ScheduleOpt = None,
    hardware: HardwareOpt = None,
    pricing: PricingOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """FLOPs, device-hours and dollars of a run, per stage and in total.

    Without --hardware/--pricing: the spec's own, or for --model/--schedule the CLIPA papers' convention
    (A100-80GB GPU-hours at $1.575), which reproduces the papers' GPU-hour figures.
    """
    from planner.cost import cost_spec

    s = resolve_spec(spec, model, dataset, schedule, hardware, pricing)
    c = cost_spec(s)
    if json_out:
        print_json({"run_id": s.run_id, "schedule": s.schedule, **c.to_dict()})
        return
    t = Table(title=f"{s.model}  {s.schedule}", caption=f"{c.hardware}, {c.pricing} at ${c.usd_per_device_hour}/device-hour")
    for col in ("stage", "samples", "res", "tokens/sample", "GFLOPs/sample", "FLOPs", "MFU", "device-hours", "USD"):
        t.add_column(col, justify="right")
    for i, st in enumerate(c.stages):
        t.add_row(
            str(i + 1),
            f"{st.samples:,}",
            str(st.image_res),
            str(st.tokens_per_sample),
            f"{st.train_flops_per_sample / 1e9:,.1f}",
            fmt_flops(st.flops),
            f"{st.mfu:.1%}",
            fmt_hours(st.device_hours),
            fmt_usd(st.cost_usd),
        )
    t.add_row("total", f"{s.total_samples:,}", "", "", "", fmt_flops(c.flops), "", fmt_hours(c.device_hours), fmt_usd(c.cost_usd), style="bold")
    console.print(t)


@app.command("hardware")
def hardware_cmd(json_out: JsonOpt = False) -> None:
    """The hardware catalog: peak FLOP/s, memory, prices by pricing model (with date and source), MFU basis."""
    from planner.hardware import catalog

    cat = catalog()
    if json_out:
        print_json({k: v.model_dump(mode="json") for k, v in cat.items()})
        return
    t = Table(title="budgets/hardware.yaml")
    for col in ("name", "kind", "peak TFLOP/s", "memory GB", "per host", "prices $/device-hour", "MFU max"):
        t.add_column(col)
    for hw in cat.values():
        prices = ", ".join(f"{k} {p.usd_per_device_hour:g}" for k, p in hw.prices.items()) or "none (custom:USD)"
        t.add_row(hw.name, hw.kind, f"{hw.peak_flops / 1e12:g}", f"{hw.memory_gb:g}", str(hw.devices_per_host), prices, f"{hw.mfu.max:.0%}")
    console.print(t)


def _error_line(text: str) -> None:
    """One line on stderr, whatever the message quotes: user input with newlines or control characters is escaped."""
    clean = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
    err_console.print(clean, markup=False, highlight=False, soft_wrap=True)


def run_app(argv: list[str] | None = None) -> int:
    """Run the typer app: ClipaError -> one line on stderr, exit code 2; never a traceback for bad input."""
    from pydantic import ValidationError

    from planner.errors import from_validation_error

    try:
        # With standalone_mode=False click returns typer.Exit's code instead of raising it.
        rv = app(args=argv, standalone_mode=False)
    except ClipaError as e:
        _error_line(f"error: {e}")
        return 2
    except ValidationError as e:
        _error_line(f"error: {from_validation_error(e)}")
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:  # click usage errors (typer vendors its own click: check both exception families)
        usage = _click_exception_types()
        if not isinstance(e, usage):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help text is the answer
            e.show()
            return 2
        name = getattr(getattr(e, "ctx", None), "command_path", None) or "clipa"
        msg = " ".join(e.format_message().split())
        _error_line(f"error: {msg} (see: {name} --help)")
        return 2
    return rv if isinstance(rv, int) else 0


def _click_exception_types() -> tuple[type, ...]:
    """Click's usage-error base classes: typer >= 0.20 vendors click as ``typer._click``; older ones use click."""
    import importlib

    types: list[type] = []
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            types.append(importlib.import_module(mod).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(types)


@app.command()
def plan(
    budget: Annotated[str, typer.Option("--budget", "-b", help="USD to spend: 10000, 10k, $2,500, or a preset name (budgets/presets.yaml)")],
    hardware: HardwareOpt = None,
    pricing: PricingOpt = None,
    dataset: DatasetOpt = "datacomp-1b",
    objective: Annotated[str, typer.Option(help="rank by 'mean' predicted top-1, or 'p10' (the interval's low end: cautious)")] = "mean",
    top: Annotated[int, typer.Option(min=1, max=50, help="how many plans to list")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="write the plan here instead of plans/<plan-id>/")] = None,
    refit: Annotated[bool, typer.Option("--refit", help="refit the accuracy model instead of using the cached fit")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="draw the accuracy-against-cost frontier with the chosen plan (PNG)")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="training shards: folder, brace pattern, gs:// or s3:// URL (a clipa data synth folder binds its train/, eval/ and tokenizer.json); default: the dataset catalog's (datasets.yaml)")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="evaluation set: ImageNet-1k val as wnid class folders, or shards with 'cls' labels")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer.json (make one: clipa data tokenizer --data URL --out FILE)")] = None,
    slice_chips: Annotated[Optional[int], typer.Option("--slice", help="chips (GPUs) the run gets; default one host. Sets the memory fit per stage and the wall-clock")] = None,
    deadline: Annotated[Optional[str], typer.Option("--deadline", help="drop candidates that cannot finish in time: 14d, 36h, 90m, 2w")] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="compile the chosen plan's stages for the TPU slice and report the compiled peaks (minutes per stage, cached by stage shape and topology); default: when libtpu is installed (pip install 'jax[tpu]')")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The recipe with the best predicted zero-shot ImageNet top-1 within a budget, and the run specs to execute it.

    Without --hardware/--pricing it prices A100-80GB GPU-hours at the CLIPA papers' $1.575 on DataComp-1B, so the
    answer is comparable with CLIPA-v2 (79.1% for ~$13.6k). It enumerates model x pre-training resolution x text
    length x samples x fine-tune options, prices each with the cost model, predicts each with the fitted inverse-
    scaling law (80% interval; 'extrapolated' outside the data), and writes plans/<plan-id>/plan.json plus a spec.
    """
    from planner.accuracy import load_or_fit, predict_frame
    from planner.plan import make_plan, parse_budget, plot_frontier

    usd = parse_budget(budget)
    from planner.wallclock import parse_duration

    deadline_hours = parse_duration(deadline) if deadline is not None else None
    if slice_chips is not None and slice_chips < 1:
        raise ClipaError("slice", f"{slice_chips}: a slice has at least one chip")
    if out is not None:
        from planner.plan import check_writable

        check_writable(out)
    if objective not in ("mean", "p10"):
        raise ClipaError("objective", f"{objective!r} is not 'mean' or 'p10'")
    fit = load_or_fit(refit=refit)
    from planner.binding import resolve_binding
    from planner.datasets import canonical_dataset

    binding = resolve_binding(dataset, data, eval_data, tokenizer)
    result = make_plan(usd, lambda feats: predict_frame(fit, feats), fit.version_for(canonical_dataset(dataset)),
                       hardware, pricing, dataset, objective, top, out, binding=binding,  # type: ignore[arg-type]
                       slice_chips=slice_chips, deadline_hours=deadline_hours)
    body = result.body
    if "stages" in body["chosen"]:
        from trainer.fit_check import attach_compiled

        attach_compiled(body, result.plan_dir, compile_)
    if plot is not None:
        plot_frontier(body, plot)
    if json_out:
        c = body["chosen"]
        print_json({
            "budget_usd": body["budget_usd"],
            "chosen": {k: c[k] for k in ("model", "dataset", "schedule", "cost_usd", "device_hours", "predicted_top1",
                                          "interval", "extrapolated", "flags", "run_id", "spec", *_CALENDAR_KEYS)
                       if k in c},
            "candidates_considered": body["candidates_considered"],
            "candidates_within_budget": body["candidates_within_budget"],
            "plan_dir": str(result.plan_dir),
            "plan_id": result.plan_id,
            "fit_version": body["fit_version"],
            "hardware": body["hardware"],
            "pricing": body["pricing"],
            "runners_up": body["runners_up"],
            "other_hardware": body["other_hardware"],
            "executable": body["executable"],
            "missing": body["missing"],
            "notes": body.get("notes", []),
            "execute": _execute_line(body, result.plan_dir),
        })
        return
    _print_plan(body, result.plan_dir, plot)


# what a plan on a slice adds to its chosen candidate (planner.wallclock.chosen_calendar)
_CALENDAR_KEYS = ("compute_usd", "hardware", "pricing", "chips", "hosts", "sharding", "wall_clock_hours", "work_hours",
                  "checkpoint_hours", "provision_hours", "expected_preemptions", "preemption_usd", "billed_device_hours",
                  "stages")


def _flags(c: dict) -> str:
    """The flags column: extrapolated, thin data (e.g. no g/14 on datacomp-1b), and on a slice the wall-clock (and
    hardware, under --hardware any)."""
    out = (["extrapolated"] if c["extrapolated"] else []) + list(c.get("flags", []))
    if "wall_clock_hours" in c:
        out.append(f"{fmt_hours(c['wall_clock_hours'])} h on {c['chips']} x {c['hardware']} {c['pricing']}")
    return ", ".join(out)


def _print_slice(body: dict) -> None:
    """The chosen plan on its slice: wall-clock, preemptions, and per stage how it fits in device memory."""
    c = body["chosen"]
    if "stages" not in c:
        return
    console.print(f"chosen plan on {c['chips']} x {c['hardware']} ({c['pricing']}, {c['sharding']} sharding): "
                  f"wall-clock {fmt_hours(c['wall_clock_hours'])} h ({fmt_hours(c['work_hours'])} h of steps, "
                  f"{c['expected_preemptions']:.1f} expected preemptions costing {fmt_usd(c['preemption_usd'])}), "
                  f"{fmt_usd(c['cost_usd'])} billed")
    t = Table(title="per stage on the slice")
    for col in ("stage", "batch/device", "micro-batch", "remat", "peak GB", "memory from", "scaling eff.", "wall-clock h"):
        t.add_column(col, justify="right")
    for i, st in enumerate(c["stages"]):
        t.add_row(str(i + 1), str(st["per_device_batch"]), str(st["micro_batch"] or "-"), st["remat"],
                  f"{st['peak_memory_gb']:.2f}" if st["peak_memory_gb"] is not None else "-", st["memory_source"],
                  f"{st['scaling_efficiency']:.0%}", fmt_hours(st["wall_clock_hours"]))
    console.print(t)


def _print_plan(body: dict, plan_dir: Path, plot: Path | None) -> None:
    from planner.datasets import is_local

    hw, pr = body["hardware"], body["pricing"]
    console.print(
        f"[bold]clipa plan[/bold]: {fmt_usd(body['budget_usd'])} on {hw} ({pr}), dataset {body['dataset']}, "
        f"objective {body['objective']}; fit {body['fit_version']}"
    )
    console.print(f"{body['candidates_considered']:,} candidates priced, {body['candidates_within_budget']:,} within budget")
    for note in body.get("notes", []):
        console.print(f"note: {note}")
    t = Table(title="best plans within budget", show_lines=False)
    for col, j in (("#", "right"), ("model", "left"), ("schedule", "left"), ("device-h", "right"), ("USD", "right"),
                   ("top-1 %", "right"), ("80% interval", "right"), ("flags", "left")):
        t.add_column(col, justify=j)
    for i, c in enumerate([body["chosen"]] + body["runners_up"]):
        t.add_row(str(i + 1), c["model"], c["schedule"], fmt_hours(c["device_hours"]), fmt_usd(c["cost_usd"]),
                  f"{c['predicted_top1']:.1f}", f"{c['interval'][0]:.1f}-{c['interval'][1]:.1f}",
                  _flags(c), style="bold green" if i == 0 else None)
    console.print(t)
    _print_slice(body)
    f = Table(title="frontier: best predicted top-1 at each cost")
    key = "predicted_top1" if body["objective"] == "mean" else "low"
    f.add_column("USD", justify="right")
    f.add_column("top-1 %", justify="right")
    f.add_column("model")
    pts = body["frontier"]
    step = max(1, len(pts) // 10)
    for p in pts[::step] + ([pts[-1]] if (len(pts) - 1) % step else []):
        f.add_row(fmt_usd(p["cost_usd"]), f"{p[key]:.1f}", p["model"])
    console.print(f)
    o = Table(title="the chosen plan on other hardware")
    for col in ("hardware", "pricing", "device-hours", "USD"):
        o.add_column(col, justify="right" if col in ("device-hours", "USD") else "left")
    for r in sorted(body["other_hardware"], key=lambda r: r["cost_usd"]):
        o.add_row(r["hardware"], r["pricing"], fmt_hours(r["device_hours"]), fmt_usd(r["cost_usd"]))
    console.print(o)
    c = body["chosen"]
    if c["cost_usd"] < 0.5 * body["budget_usd"]:
        where = ("among the candidates ranked first (see the note above)" if is_local(body["dataset"])
                 else "within the searched recipes (up to bigG/14 and 32B samples)")
        console.print(
            f"note: the best plan spends {fmt_usd(c['cost_usd'])} of {fmt_usd(body['budget_usd'])}: {where} the "
            "fitted law predicts no gain from spending more (ties go to the cheaper plan)."
        )
    console.print(f"plan written to {plan_dir}/plan.json; run spec: {c['spec']}")
    if body.get("executable", True):
        console.print(f"execute with:  clipa rehearse {plan_dir}  (minutes, on this machine), then  "
                      f"{_execute_line(body, plan_dir)}", markup=False, highlight=False, soft_wrap=True)  # copyable
    else:
        console.print("not executable yet:", markup=False, highlight=False)
        for m in body["missing"]:
            console.print(f"  missing {m['field']} ({m['option']}): {m['problem']}", markup=False, highlight=False)
        console.print(f"supply it with:  {_execute_line(body, plan_dir)}", markup=False, highlight=False,
                      soft_wrap=True)
    if plot is not None:
        console.print(f"frontier plot: {plot}")


def _execute_line(body: dict, plan_dir: Path) -> str:
    """The command that runs the plan: as it is, or with what is missing supplied (planner.binding)."""
    from planner.binding import supply_command
    from planner.hardware import run_backend_options

    c = body["chosen"]  # a plan on a slice (or --hardware any) names the chosen hardware; else the request's
    return supply_command(str(plan_dir), body.get("missing", []),
                          run_backend_options(c.get("hardware") or body["hardware"], c.get("chips")))


@app.command()
def compare(
    json_out: JsonOpt = False,
    plot: Annotated[Optional[Path], typer.Option(help="write a predicted-against-actual calibration plot (PNG)")] = None,
) -> None:
    """Every executed run (results/runs/) with its predicted and actual top-1, the error, and whether the actual fell
    inside the plan's 80% interval; MAE and coverage per fit version, so the error can be watched shrinking."""
    from planner.compare import comparison_rows, plot_calibration, summarise
    from planner.runs import read_runs, report_problems

    records, problems = read_runs()
    report_problems(problems)
    # a hand-written record has no prediction to compare against
    rows = comparison_rows([r.result for r in records if r.result is not None])
    summary = summarise(rows)
    if plot is not None:
        plot_calibration(rows, plot)
    if json_out:
        print_json({"runs": rows, "summary": summary, "problems": problems})
        return
    if not rows:
        console.print("no executed runs in results/runs/ yet: run a plan with  clipa run PLAN_DIR")
        return
    t = Table(title="predicted against actual")
    for col in ("run", "model", "dataset", "schedule", "USD", "predicted", "80% interval", "actual", "error", "inside",
                "flags"):
        t.add_column(col, justify="right" if col in ("USD", "predicted", "actual", "error") else "left")
    for r in rows:
        if "predicted_top1" in r:
            t.add_row(r["run_id"][:10], r["model"], r["dataset"], r["schedule"], fmt_usd(r["cost_usd"]),
                      f"{r['predicted_top1']:.1f}", f"{r['interval'][0]:.1f}-{r['interval'][1]:.1f}",
                      f"{r['actual_top1']:.1f}", f"{r['error']:+.1f}", "yes" if r["inside_interval"] else "NO",
                      "; ".join(r["flags"]) or "-")
        else:
            t.add_row(r["run_id"][:10], r["model"], r["dataset"], r["schedule"], fmt_usd(r["cost_usd"]), "-", "-",
                      f"{r['actual_top1']:.1f}", "-", "-", "-")
    console.print(t)
    s = Table(title="per fit version")
    for col in ("fit version", "runs", "MAE", "worst", "coverage"):
        s.add_column(col, justify="left" if col == "fit version" else "right")
    for r in summary:
        s.add_row(r["fit_version"], str(r["runs"]), f"{r['mae']:.2f}", f"{r['worst']:.2f}", f"{r['coverage']:.0%}")
    console.print(s)
    if plot is not None:
        console.print(f"calibration plot: {plot}")
