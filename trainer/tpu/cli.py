"""``clipa tpu run|up|status|logs|down``: Cloud TPU runs and manual control of slices.

``run`` is the whole launch (``launcher.run_on_tpu``); ``up`` provisions one slice named ``--name`` and waits for it;
``status`` shows queued resources and nodes; ``logs`` prints (or follows) a worker's trainer log over ssh; ``down``
deletes a slice and waits until it is gone. Every command takes ``--dry-run``, which prints the exact API requests
and worker commands as JSON and calls nothing. Cloud libraries are imported inside command bodies only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from planner.errors import ClipaError

tpu_app = typer.Typer(name="tpu", help="Run specs on Cloud TPU slices, and provision, inspect and delete slices.",
                      no_args_is_help=True)

# The options of a launch, defined once: `clipa tpu run` and `clipa run --backend tpu` both take them (the latter with
# --project/--zone optional, since only the tpu backend needs them), and ``launch_options`` turns them into TpuOptions.
ProjectOpt = Annotated[Optional[str], typer.Option("--project", help="GCP project id", envvar="CLIPA_TPU_PROJECT")]
ZoneOpt = Annotated[Optional[str], typer.Option("--zone", help="zone, e.g. us-central1-a", envvar="CLIPA_TPU_ZONE")]
HardwareOpt = Annotated[Optional[str], typer.Option("--hardware", help="tpu-v4, tpu-v5e, tpu-v5p or tpu-v6e "
                                                    "(default: the spec's, if a TPU, else tpu-v5e); "
                                                    "with clipa run --backend slurm a GPU profile (default: the spec's)")]
SliceOpt = Annotated[int, typer.Option("--slice", help="chips in the slice, e.g. 64 for v5e-64 (v5litepod-64)")]
PricingOpt = Annotated[Optional[str], typer.Option("--pricing", help="spot or on-demand (default: the spec's, "
                                                   "if one of those, else spot)")]
BucketOpt = Annotated[Optional[str], typer.Option("--bucket", help=r"gs://BUCKET\[/PREFIX] for the run dir "  # \[ : not rich markup
                                                  "(same region as the zone)", envvar="CLIPA_TPU_BUCKET")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="resource name (lowercase letters, digits, '-')")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the API requests and worker commands; call "
                                         "nothing")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
PollOpt = Annotated[float, typer.Option("--poll-interval", help="longest wait between state polls, seconds (the "
                                        "first polls come sooner)")]
NoInstallOpt = Annotated[bool, typer.Option("--no-install", help="the workers' image already has this checkout and "
                                            "jax[tpu] installed")]
ProvisionTimeoutOpt = Annotated[float, typer.Option("--provision-timeout", help="seconds to wait for capacity")]
# Their defaults, once for every command here and for `clipa run` (TpuOptions has the same ones; this module stays
# light, so it does not import it to read them: a test keeps the two equal).
DEFAULT_SLICE = 8
DEFAULT_PROVISION_TIMEOUT_S = 6 * 3600.0
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_POLL_INTERVAL_S = 60.0
MaxAttemptsOpt = Annotated[int, typer.Option("--max-attempts", help="slices to create (SLURM: jobs to submit) at "
                                                                   "most (requeues)")]
TrainerArgOpt = Annotated[Optional[list[str]], typer.Option("--trainer-arg", help="extra argument for `clipa train` on "
                                                             "the workers (repeatable)")]


def _options(project: str, zone: str, hardware: str | None, slice_: int, pricing: str | None, bucket: str | None,
             name: str | None, spec: Any = None, **extra: Any):
    """TpuOptions, defaulting hardware and pricing to the spec's when the spec names a TPU and spot/on-demand."""
    from planner.hardware import get_hardware
    from trainer.tpu.options import PRICINGS, TpuOptions

    if hardware is None:
        hardware = spec.hardware if spec is not None and get_hardware(spec.hardware).kind == "tpu" else "tpu-v5e"
    if pricing is None:
        pricing = spec.pricing if spec is not None and spec.pricing in PRICINGS else "spot"
    if pricing not in PRICINGS:
        raise ClipaError("pricing", f"{pricing!r}: the TPU launcher can request 'spot' or 'on-demand' capacity")
    return TpuOptions.create(project=project, zone=zone, hardware=hardware, slice=slice_, pricing=pricing,
                             bucket=bucket, name=name, **extra)


def launch_options(spec: Any, *, project: str | None, zone: str | None, bucket: str | None, hardware: str | None,
                   slice_: int, pricing: str | None, name: str | None, no_install: bool, provision_timeout: float,
                   max_attempts: int, trainer_arg: list[str] | None, poll_interval: float):
    """The TpuOptions of running ``spec`` on a slice, from the launch options above (shared by `clipa tpu run` and
    `clipa run --backend tpu`); a run needs a project, a zone and a bucket."""
    for field, value in (("project", project), ("zone", zone)):
        if value is None:
            raise ClipaError(field, f"a TPU run needs --{field} (or CLIPA_TPU_{field.upper()})")
    options = _options(project, zone, hardware, slice_, pricing, bucket, name, spec, install=not no_install,
                       provision_timeout_s=provision_timeout, max_attempts=max_attempts,
                       trainer_args=tuple(trainer_arg or ()), **_polling(poll_interval))
    if options.bucket is None:
        raise ClipaError("bucket", "give --bucket gs://BUCKET[/PREFIX] (or set CLIPA_TPU_BUCKET)")
    return options


def _polling(poll_interval: float) -> dict[str, float]:
    if not poll_interval > 0:
        raise ClipaError("poll-interval", "must be a positive number of seconds")
    # The running slice's state is checked every 30 s, or as often as the longest poll wait when that is shorter.
    return {"poll_initial_s": min(5.0, poll_interval), "poll_max_s": poll_interval,
            "monitor_interval_s": min(30.0, poll_interval)}


def _emit(obj: Any) -> None:
    from trainer.tpu.launcher import print_json

    print_json(obj)


def _api(options):
    from trainer.tpu.api import connect

    return connect(options.project, options.zone, timeout_s=options.api_timeout_s,
                   lro_poll_initial_s=options.poll_initial_s, lro_poll_max_s=options.poll_max_s)


def _say(message: str) -> None:
    from trainer.tpu.redact import Redactor

    print(Redactor().redact(message), file=sys.stderr, flush=True)


@tpu_app.command("run")
def run_cmd(
    spec: Annotated[Path, typer.Argument(help="run spec file (YAML or JSON)")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="local folder for the result files and the launch "
                                          "record (RUN_DIR/tpu)")],
    project: ProjectOpt,
    zone: ZoneOpt,
    bucket: BucketOpt = None,
    hardware: HardwareOpt = None,
    slice_: SliceOpt = DEFAULT_SLICE,
    pricing: PricingOpt = None,
    name: NameOpt = None,
    no_install: NoInstallOpt = False,
    provision_timeout: ProvisionTimeoutOpt = DEFAULT_PROVISION_TIMEOUT_S,
    max_attempts: MaxAttemptsOpt = DEFAULT_MAX_ATTEMPTS,
    trainer_arg: TrainerArgOpt = None,
    poll_interval: PollOpt = DEFAULT_POLL_INTERVAL_S,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train SPEC on a Cloud TPU slice: provision, run on every host, requeue after preemption, fetch, delete."""
    from planner.spec import load_spec
    from trainer.tpu.launcher import dry_run as plan_dry_run
    from trainer.tpu.launcher import make_workers, run_on_tpu

    s = load_spec(spec)
    options = launch_options(s, project=project, zone=zone, bucket=bucket, hardware=hardware, slice_=slice_,
                             pricing=pricing, name=name, no_install=no_install, provision_timeout=provision_timeout,
                             max_attempts=max_attempts, trainer_arg=trainer_arg, poll_interval=poll_interval)
    workers = make_workers(options)
    if dry_run:
        _emit(plan_dry_run(spec, run_dir, options, workers=workers))
        return
    outcome = run_on_tpu(spec, run_dir, options, workers=workers)
    if json_out:
        _emit(outcome.model_dump(mode="json"))
    if outcome.status != "succeeded":
        # One line and exit code 2, like every failure the CLI reports (the full record is in RUN_DIR/tpu).
        raise ClipaError("", outcome.error or outcome.status)  # the error already names its field


@tpu_app.command("up")
def up_cmd(
    project: ProjectOpt,
    zone: ZoneOpt,
    name: Annotated[str, typer.Option("--name", help="resource name (lowercase letters, digits, '-')")],
    spec: Annotated[Optional[Path], typer.Option("--spec", help="take hardware and pricing from this spec")] = None,
    hardware: HardwareOpt = None,
    slice_: SliceOpt = DEFAULT_SLICE,
    pricing: PricingOpt = None,
    network: Annotated[Optional[str], typer.Option("--network")] = None,
    subnetwork: Annotated[Optional[str], typer.Option("--subnetwork")] = None,
    service_account: Annotated[Optional[str], typer.Option("--service-account")] = None,
    provision_timeout: ProvisionTimeoutOpt = DEFAULT_PROVISION_TIMEOUT_S,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait until the slice is READY")] = True,
    poll_interval: PollOpt = DEFAULT_POLL_INTERVAL_S,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Provision one slice (a queued resource and its node, both named NAME) and wait until it is READY.

    It bills until `clipa tpu down --name NAME`. If it cannot be provisioned by the deadline, it is deleted.
    """
    import time

    from planner.spec import load_spec
    from trainer.tpu import api as tpu_api
    from trainer.tpu.launcher import LaunchFailed, Provisioner, signals_deferred

    s = load_spec(spec) if spec is not None else None
    options = _options(project, zone, hardware, slice_, pricing, None, name, s, network=network,
                       subnetwork=subnetwork, service_account=service_account, provision_timeout_s=provision_timeout,
                       **_polling(poll_interval))
    labels = {"clipa-name": name, **({"clipa-run": s.run_id} if s is not None else {})}
    request = tpu_api.build_create_request(options, options.slice_info(), name, labels)
    if dry_run:
        _emit({"api_requests": [
            {"rpc": "google.cloud.tpu.v2.Tpu/CreateQueuedResource", "request": tpu_api.message_to_dict(request)},
            {"rpc": "google.cloud.tpu.v2.Tpu/GetQueuedResource",
             "request": tpu_api.message_to_dict(tpu_api.build_get_request(options, name)),
             "when": "until ACTIVE" if wait else "not sent (--no-wait)"},
        ]})
        return
    prov = Provisioner(_api(options), options, _say)
    deadline = time.monotonic() + options.provision_timeout_s
    prov.create(name, request, deadline)
    if not wait:
        _say(f"{name}: requested; see `clipa tpu status --name {name}`")
        return
    try:
        node, state = prov.wait_ready(name, deadline)
        if node is None:
            raise LaunchFailed(f"{name} ended {state} before it was ready")
    except BaseException:
        # Nothing half-made is left behind: a slice that did not come up (or a Ctrl-C while waiting) is deleted,
        # and a second Ctrl-C does not interrupt that.
        with signals_deferred(_say):
            prov.delete(name)
        raise
    info = _node_info(node)
    if json_out:
        _emit(info)
    else:
        _say(f"{name}: READY, {len(info['workers'])} worker(s) {', '.join(info['workers'])}; it bills until "
             f"`clipa tpu down --name {name} --project {project} --zone {zone}`")


def _node_info(node: Any) -> dict[str, Any]:
    from trainer.tpu.api import state_name

    return {"name": node.name, "state": state_name(node), "accelerator_type": node.accelerator_type,
            "runtime_version": node.runtime_version, "spot": bool(node.scheduling_config.spot),
            "labels": dict(node.labels), "workers": [e.ip_address for e in node.network_endpoints]}


@tpu_app.command("status")
def status_cmd(
    project: ProjectOpt,
    zone: ZoneOpt,
    name: Annotated[Optional[str], typer.Option("--name", help="one slice; default: every queued resource and "
                                                "node in the zone")] = None,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Queued resources and nodes, with their states (one slice with --name)."""
    from trainer.tpu import api as tpu_api
    from trainer.tpu import names

    options = _options(project, zone, None, 8, None, None, None)
    if name is not None:
        names.resource_id(name)
    if dry_run:
        from google.cloud import tpu_v2

        par = tpu_api.parent(project, zone)
        reqs = ([{"rpc": "google.cloud.tpu.v2.Tpu/GetQueuedResource",
                  "request": tpu_api.message_to_dict(tpu_api.build_get_request(options, name))},
                 {"rpc": "google.cloud.tpu.v2.Tpu/GetNode",
                  "request": tpu_api.message_to_dict(tpu_api.build_get_node_request(options, name))}]
                if name else
                [{"rpc": "google.cloud.tpu.v2.Tpu/ListQueuedResources",
                  "request": tpu_api.message_to_dict(tpu_v2.ListQueuedResourcesRequest(parent=par))},
                 {"rpc": "google.cloud.tpu.v2.Tpu/ListNodes",
                  "request": tpu_api.message_to_dict(tpu_v2.ListNodesRequest(parent=par))}])
        _emit({"api_requests": reqs})
        return
    api = _api(options)
    if name is not None:
        qrs = [q for q in [api.get_queued_resource(name)] if q is not None]
        nodes = [n for n in [api.get_node(name)] if n is not None]
    else:
        qrs, nodes = api.list_queued_resources(), api.list_nodes()
    out = {"queued_resources": [{"name": q.name, "state": tpu_api.state_name(q), "spot": "spot" in q}
                                for q in qrs],
           "nodes": [_node_info(n) for n in nodes]}
    if json_out:
        _emit(out)
        return
    if not qrs and not nodes:
        _say(f"nothing in {zone}" + (f" named {name}" if name else ""))
    for q in out["queued_resources"]:
        print(f"queued resource {q['name'].rsplit('/', 1)[-1]}: {q['state']}")
    for n in out["nodes"]:
        print(f"node {n['name'].rsplit('/', 1)[-1]}: {n['state']} {n['accelerator_type']} "
              f"({'spot' if n['spot'] else 'on-demand'}), {len(n['workers'])} worker(s)")


@tpu_app.command("logs")
def logs_cmd(
    project: ProjectOpt,
    zone: ZoneOpt,
    name: Annotated[str, typer.Option("--name", help="the slice (for a `clipa tpu run`: RUN-aN)")],
    worker: Annotated[int, typer.Option("--worker", min=0, help="worker index (0 is the coordinator)")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Print a worker's trainer log (it lives on the worker, so the slice must still exist)."""
    from trainer.tpu import names
    from trainer.tpu.launcher import make_workers
    from trainer.tpu.redact import LineRedactor, Redactor

    options = _options(project, zone, None, 8, None, None, None)
    workers = make_workers(options)
    argv = workers.logs_command(names.resource_id(name), worker, follow)
    if dry_run:
        _emit({"worker_commands": {"logs": [argv]}})
        return
    redact = LineRedactor(Redactor())
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        for raw in iter(proc.stdout.readline, b""):
            sys.stdout.write(redact(raw.decode("utf-8", "replace").rstrip("\n")) + "\n")
            sys.stdout.flush()
    except BaseException:
        # Interrupted (Ctrl-C on --follow, a closed stdout): stop the reader. After a plain end of output the
        # process may still be exiting, so it is waited for, not terminated (that turned exit 0 into -15).
        proc.terminate()
        proc.wait()
        raise
    code = proc.wait()
    if code != 0:
        raise typer.Exit(code)


@tpu_app.command("down")
def down_cmd(
    project: ProjectOpt,
    zone: ZoneOpt,
    name: Annotated[str, typer.Option("--name", help="the queued resource (or plain node) to delete")],
    poll_interval: PollOpt = DEFAULT_POLL_INTERVAL_S,
    dry_run: DryRunOpt = False,
) -> None:
    """Delete a slice (its queued resource, forced, with its node; or a plain node) and wait until it is gone."""
    from trainer.tpu import api as tpu_api
    from trainer.tpu import names
    from trainer.tpu.launcher import Provisioner

    options = _options(project, zone, None, 8, None, None, None, **_polling(poll_interval))
    names.resource_id(name)
    request = tpu_api.build_delete_request(options, name)
    if dry_run:
        _emit({"api_requests": [
            {"rpc": "google.cloud.tpu.v2.Tpu/DeleteQueuedResource", "request": tpu_api.message_to_dict(request)},
            {"rpc": "google.cloud.tpu.v2.Tpu/GetQueuedResource",
             "request": tpu_api.message_to_dict(tpu_api.build_get_request(options, name)),
             "when": "until NOT_FOUND"},
        ]})
        return
    api = _api(options)
    if api.get_queued_resource(name) is None:
        # Not a queued resource: maybe a node made some other way (gcloud tpu-vm create).
        if api.delete_node(name):
            _say(f"{name}: node deleted")
        else:
            _say(f"{name}: nothing to delete in {zone}")
        return
    Provisioner(api, options, _say).delete(name)


def register(app: typer.Typer) -> None:
    app.add_typer(tpu_app, name="tpu")

