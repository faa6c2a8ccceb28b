"""``clipa run`` and ``clipa pilot``: execute plans and record their results (the closed loop's commands).

Registered in ``trainer.cli.REGISTRARS``; JAX and the cloud client are imported inside the command bodies.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.errors import ClipaError
# The launch options of `clipa tpu run`, defined once there (that module imports nothing heavy).
from trainer.tpu.cli import (DEFAULT_MAX_ATTEMPTS, DEFAULT_POLL_INTERVAL_S, DEFAULT_PROVISION_TIMEOUT_S, DEFAULT_SLICE,
                             BucketOpt, DryRunOpt, HardwareOpt, MaxAttemptsOpt,
                             NoInstallOpt, PollOpt, PricingOpt, ProjectOpt, ProvisionTimeoutOpt, SliceOpt,
                             TrainerArgOpt, ZoneOpt)
from trainer.slurm.options import (DEFAULT_GPUS_PER_NODE, DEFAULT_NODES, AccountOpt, ClipaExeOpt, GpusPerNodeOpt,
                                   NodesOpt, PartitionOpt, QosOpt, TimeOpt)


def _runs_root(run_dir: Path | None) -> Path:
    from planner.paths import project_root

    return (run_dir or project_root() / "runs").absolute()


def _targets(target: Path):
    """(plan_id, [(spec, prediction dict)]) from a plan folder, or a single spec file."""
    from planner.plan import load_plan
    from planner.spec import load_spec

    if target.is_dir():
        body, runs = load_plan(target)
        return body.get("plan_id"), runs
    return None, [(load_spec(target), {})]


def execute_command(target: Path, spec, overrides: dict[str, str | None] | None = None) -> str:
    """The ``clipa run`` line that executes ``target`` where its plan was priced (the plan's hardware and chips;
    a bare spec: its hardware's one host), repeating the location options given on this command line."""
    from planner.binding import supply_command
    from planner.hardware import run_backend_options
    from planner.plan import load_plan

    chips = load_plan(target)[0].get("chosen", {}).get("chips") if target.is_dir() else None  # a pilot has no chosen
    given = [f"--{k.replace('_', '-')} {v}" for k, v in (overrides or {}).items() if v]
    return " ".join([supply_command(str(target), [], run_backend_options(spec.hardware, chips)), *given])


def _print_outcome(status: str, r) -> None:
    from planner.cli import console

    p = r.prediction
    pred_txt = f"predicted {p.predicted_top1:.1f} [{p.low:.1f}, {p.high:.1f}]" if p else "no prediction"
    where = f" on {r.extra.get('accelerator_type')} ({r.extra.get('pricing')})" if r.backend == "tpu" else ""
    if r.backend == "slurm":
        where = f" on {r.extra.get('nodes')}x{r.extra.get('gpus_per_node')} {r.extra.get('hardware')} (SLURM)"
    console.print(f"{status}: run {r.run_id} {r.model} {r.spec.schedule}{where}: top-1 {r.top1:.2f}% ({pred_txt}), "
                  f"{r.device_hours:.4f} device-hours, ${r.cost_usd:.4f}")


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        target: Annotated[Path, typer.Argument(help="a plan folder (plans/<plan-id>) or a run spec file")],
        backend: Annotated[str, typer.Option(help="'local' (this machine's devices), 'tpu' (a Cloud TPU slice) or 'slurm' (GPU nodes of a SLURM cluster)")] = "local",
        run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="parent of the runs' folders (default runs/)")] = None,
        eval_limit: Annotated[Optional[int], typer.Option(help="evaluate on at most this many held-out samples")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
        json_out: Annotated[bool, typer.Option("--json", help="print the recorded results as JSON")] = False,
        dry_run: DryRunOpt = False,
        data: Annotated[Optional[str], typer.Option("--data", help="training shards, replacing the plan's (folder, brace pattern, gs:// or s3:// URL)")] = None,
        eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="evaluation set, replacing the plan's (wnid class folders or shards with 'cls')")] = None,
        tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer.json, replacing the plan's")] = None,
        # --backend tpu: the options of `clipa tpu run` (trainer/tpu/README.md); every spec runs on its own slice
        # named clipa-<run id>, in the run dir BUCKET/clipa-<run id>.
        project: ProjectOpt = None,
        zone: ZoneOpt = None,
        bucket: BucketOpt = None,
        hardware: HardwareOpt = None,
        slice_: SliceOpt = DEFAULT_SLICE,
        pricing: PricingOpt = None,
        no_install: NoInstallOpt = False,
        provision_timeout: ProvisionTimeoutOpt = DEFAULT_PROVISION_TIMEOUT_S,
        max_attempts: MaxAttemptsOpt = DEFAULT_MAX_ATTEMPTS,
        trainer_arg: TrainerArgOpt = None,
        poll_interval: PollOpt = DEFAULT_POLL_INTERVAL_S,
        # --backend slurm (README "GPU cluster"; also --hardware, --pricing, --max-attempts, --poll-interval above)
        nodes: NodesOpt = DEFAULT_NODES,
        gpus_per_node: GpusPerNodeOpt = DEFAULT_GPUS_PER_NODE,
        partition: PartitionOpt = None,
        account: AccountOpt = None,
        qos: QosOpt = None,
        time_limit: TimeOpt = None,
        clipa_exe: ClipaExeOpt = None,
    ) -> None:
        """Execute every run of a plan (or one spec): train (resuming), evaluate zero-shot, record the result.

        Each result lands in results/runs/<run-id>.json with the measured cost, speed and accuracy and the plan's
        prediction. Rerunning after a crash finishes what is missing and never records a run twice. With
        --backend tpu each run trains on a Cloud TPU slice (options as `clipa tpu run`) and its cost is what the
        slices cost, preempted ones included. --dry-run prints what each run would do and does nothing.
        """
        from planner.cli import print_json
        from planner.runs import RecordedPrediction, find_record, run_folder

        if backend not in ("local", "tpu", "slurm"):
            raise ClipaError("backend", f"{backend!r} is not 'local', 'tpu' or 'slurm'")
        plan_id, runs = _targets(target)
        if data or eval_data or tokenizer:  # locations are not part of the run id: the runs stay the same runs
            from planner.binding import bind_spec, resolve_binding

            runs = [(bind_spec(spec, resolve_binding(spec.dataset, data, eval_data, tokenizer, catalog={},
                                                discover_tokenizer=False)), pred)
                    for spec, pred in runs]
        if not runs:
            raise ClipaError("plan", f"{target} lists no runs")
        root = _runs_root(run_dir)
        from trainer.closed_loop import preflight, tpu_preflight

        blocked: dict[str, str] = {}
        for spec, _ in runs:  # every run's inputs are checked before the first one starts
            try:
                preflight(spec)
            except ClipaError as e:
                if not (dry_run and backend == "slurm"):
                    raise
                blocked[spec.run_id] = str(e)  # the dry-run still shows the job, and what stops it
            if backend == "local":
                from trainer.closed_loop import local_fit_problem

                problem = local_fit_problem(spec)
                if problem:
                    where = execute_command(target, spec,
                                            {"data": data, "eval_data": eval_data, "tokenizer": tokenizer})
                    problem += f": execute it there with  {where}  (check it here first with  clipa rehearse {target})"
                if problem and not dry_run:
                    raise ClipaError("memory", problem)
                if problem:
                    blocked[spec.run_id] = f"memory: {problem}"
        launch: dict[str, tuple] = {}
        if backend == "tpu":
            from trainer.tpu.cli import launch_options
            from trainer.tpu.launcher import local_workers_root, make_workers

            for spec, _ in runs:
                if local_workers_root() is None:  # local worker processes (tests, demos) can read local paths
                    tpu_preflight(spec)
                options = launch_options(spec, project=project, zone=zone, bucket=bucket, hardware=hardware,
                                         slice_=slice_, pricing=pricing, name=f"clipa-{spec.run_id}",
                                         no_install=no_install, provision_timeout=provision_timeout,
                                         max_attempts=max_attempts, trainer_arg=trainer_arg,
                                         poll_interval=poll_interval)
                launch[spec.run_id] = (options, make_workers(options))
        if backend == "slurm":
            from trainer.slurm.options import slurm_options

            for spec, _ in runs:
                launch[spec.run_id] = (slurm_options(
                    spec, nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, account=account, qos=qos,
                    time=time_limit, hardware=hardware, pricing=pricing, clipa=clipa_exe, max_attempts=max_attempts,
                    poll_interval=poll_interval),)
        if dry_run:
            plan_out = []
            for spec, _ in runs:
                item = {"run_id": spec.run_id, "run_dir": str(run_folder(root, spec))}
                if find_record(spec) is not None:
                    item["action"] = "skip (already recorded)"
                elif backend == "local":
                    item["action"] = "train locally, evaluate, record"
                    if spec.run_id in blocked:
                        item["blocked"] = blocked[spec.run_id]
                elif backend == "slurm":
                    from trainer.slurm.launcher import dry_run as slurm_dry_run

                    item["action"] = "submit to SLURM (resubmitting after preemption), record"
                    if spec.run_id in blocked:
                        item["blocked"] = blocked[spec.run_id]
                    item["launch"] = slurm_dry_run(spec, run_folder(root, spec), launch[spec.run_id][0])
                else:
                    from trainer.tpu.launcher import dry_run as tpu_dry_run

                    options, workers = launch[spec.run_id]
                    item["action"] = "train on a TPU slice, fetch eval.json, record"
                    item["launch"] = tpu_dry_run(spec, run_folder(root, spec), options, workers=workers)
                plan_out.append(item)
            from trainer.tpu.launcher import print_json as print_commands

            print_commands({"plan_id": plan_id, "backend": backend, "runs": plan_out})
            return
        recorded = []
        for spec, pred in runs:
            prediction = RecordedPrediction(**pred) if pred else None
            if prediction is None:
                from trainer.closed_loop import predict_now

                prediction = predict_now(spec)
            if backend == "tpu":
                from trainer.closed_loop import execute_tpu_run

                options, workers = launch[spec.run_id]
                out = execute_tpu_run(spec, run_folder(root, spec), options, prediction=prediction, plan_id=plan_id,
                                      workers=workers)
            elif backend == "slurm":
                from trainer.slurm.record import execute_slurm_run

                out = execute_slurm_run(spec, run_folder(root, spec), launch[spec.run_id][0], prediction=prediction,
                                        plan_id=plan_id)
            else:
                out = _execute_local(spec, root, prediction, plan_id, progress, eval_limit)
            recorded.append(out.result)
            if not json_out:
                _print_outcome(out.status, out.result)
        if json_out:
            print_json({"plan_id": plan_id, "results": [r.model_dump(mode="json") for r in recorded]})
        sys.stdout.flush()


def _execute_local(spec, root: Path, prediction, plan_id, progress: bool, eval_limit: int | None):
    from planner.runs import run_folder
    from trainer.closed_loop import execute_run
    from trainer.loop import TrainingInterrupted
    from trainer.telemetry import NonFiniteError
    from trainer.train_cli import EXIT_NON_FINITE

    try:
        return execute_run(spec, run_folder(root, spec), prediction=prediction, plan_id=plan_id, progress=progress,
                           eval_limit=eval_limit)
    except NonFiniteError as e:  # as `clipa train` reports them: one line, no traceback
        sys.stderr.write(f"error: run {spec.run_id}: {e}\n")
        raise typer.Exit(EXIT_NON_FINITE) from None
    except TrainingInterrupted as e:
        sys.stderr.write(f"run {spec.run_id}: {e}\n")
        raise typer.Exit(128 + e.signum) from None
    except RuntimeError as e:  # XLA's allocator error (XlaRuntimeError); the estimate before the start missed it
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
            raise
        first = next((ln.strip() for ln in text.splitlines() if "memory" in ln.lower()), text.splitlines()[0])
        raise ClipaError("memory", f"run {spec.run_id}: a train step does not fit in this machine's memory "
                                   f"({first[:200]}); checkpoints written so far are kept. Give the stage a "
                                   "micro_batch or remat in the spec, or run it on the hardware it was priced for"
                         ) from None
