"""Running a spec on a Cloud TPU slice, start to finish: ``run_on_tpu`` and the ``Launcher`` behind it.

Owns the launch lifecycle: create a queued resource (spot or guaranteed tier from the pricing name), wait for it
to become ACTIVE (polling with backoff, retrying quota errors, giving up at a deadline), copy the spec (and the
source) to every worker, mount the run dir's bucket there (Cloud Storage FUSE), start ``python -m trainer.cli train
spec.json --run-dir MOUNT/PREFIX/RUN`` on every worker with ``CLIPA_DISTRIBUTED=1``, stream worker 0's output, watch
for preemption (node PREEMPTED, queued resource SUSPENDED/FAILED) or a worker crash, requeue (delete, create a new
slice ``RUN-aN``; the trainer resumes from the checkpoint in the same run dir), fetch the run dir's top-level files
when it finishes, and delete every resource it created on success, failure and interrupt (try/finally, with
SIGTERM/SIGHUP turned into KeyboardInterrupt and signals deferred while tearing down). Cost is measured per
attempt (``outcome``).

``dry_run`` renders the same plan (exact API requests and worker commands) without calling anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from planner.errors import ClipaError
from planner.spec import RunSpec, load_spec
from planner.store import atomic_write_text
from trainer.run_layout import LAUNCHER_DIR, OUTCOME_FILE
from trainer.tpu import api as tpu_api
from trainer.tpu import names
from trainer.tpu.options import SliceInfo, TpuOptions
from trainer.tpu.outcome import AttemptEnd, TpuAttempt, TpuRunOutcome
from trainer.tpu.redact import Redactor
from trainer.tpu.workers import (SOURCE_ARCHIVE, SPEC_NAME, VENV_PYTHON, GcloudSshExec, LocalExec, WorkerExec,
                                 WorkerProcess, WorkerSetupError, build_source_archive)

TRAINER_ENTRY = ("-m", "trainer.cli", "train")
# Workers as local processes under this folder instead of ssh to the slice's VMs: for tests and demos.
LOCAL_WORKERS_ENV = "CLIPA_TPU_LOCAL_WORKERS"
# Trainer exit code for bad input (ClipaError): requeueing cannot help.
EXIT_BAD_INPUT = 2


class LaunchFailed(ClipaError):
    """The run could not be completed (no capacity by the deadline, too many preemptions or crashes, ...)."""

    def __init__(self, message: str):
        super().__init__("tpu", message)


class Backoff:
    """Exponential delays from ``initial`` to ``maximum`` (factor 1.6): polls start fast and settle at the cap."""

    def __init__(self, initial: float, maximum: float, factor: float = 1.6):
        self.initial, self.maximum, self.factor = initial, max(maximum, initial), factor
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay


class LaunchPlan:
    """The names, requests and commands of one launch, derived and validated up front (nothing is created here)."""

    def __init__(self, spec: RunSpec, run_dir: Path, options: TpuOptions, workers: WorkerExec,
                 worker_entry: Sequence[str] = TRAINER_ENTRY):
        self.spec = spec
        self.options = options
        self.slice: SliceInfo = options.slice_info()
        self.workers = workers
        # The spec's name is already a safe label; it becomes a GCP resource id (lowercase, '-' only) here.
        self.run_name = options.name or names.resource_id_from_label(spec.name or spec.run_id, "spec.name")
        if len(self.run_name) > 56:
            self.run_name = names.resource_id(self.run_name[:56].rstrip("-"), "name")
        if options.bucket is None:
            raise ClipaError("bucket", "running a spec needs --bucket gs://BUCKET[/PREFIX] for its run dir "
                                       "(checkpoints must outlive a preempted VM)")
        self.remote_run_dir = f"{options.bucket}/{self.run_name}"
        self.run_dir = Path(run_dir)
        self.local_dir = self.run_dir / LAUNCHER_DIR
        self.labels = {"clipa-run": names.label_value(spec.run_id, "spec.run_id"),
                       "clipa-name": names.label_value(self.run_name, "name")}
        self.worker_entry = tuple(worker_entry)
        # Every argument of the trainer command that does not come from this code is checked here, once.
        names.safe_arg(self.trainer_run_dir, "bucket")
        for part in self.worker_entry:
            names.safe_arg(part, "worker_entry")

    @property
    def trainer_run_dir(self) -> str:
        return self.workers.local_run_dir(self.remote_run_dir)

    def qr_id(self, attempt: int) -> str:
        return names.attempt_id(self.run_name, attempt)

    def qr_name(self, attempt: int) -> str:
        return f"{tpu_api.parent(self.options.project, self.options.zone)}/queuedResources/{self.qr_id(attempt)}"

    def trainer_argv(self) -> list[str]:
        return [self.workers.python, *self.worker_entry, SPEC_NAME, "--run-dir", self.trainer_run_dir,
                *self.options.trainer_args]

    def files(self) -> list[Path]:
        files = [self.local_dir / SPEC_NAME]
        if self.options.install:
            files.append(self.local_dir / SOURCE_ARCHIVE)
        return files

    def create_request(self, attempt: int) -> Any:
        return tpu_api.build_create_request(self.options, self.slice, self.qr_id(attempt), self.labels)

    def delete_request(self, attempt: int) -> Any:
        return tpu_api.build_delete_request(self.options, self.qr_id(attempt))


class ProvisionTimeout(LaunchFailed):
    """No slice by the provisioning deadline (quota errors or no capacity the whole time)."""


class Provisioner:
    """Creating, waiting for and deleting one queued resource, with retries, backoff and deadlines. Shared by the
    launcher and the manual ``clipa tpu up/down`` commands."""

    def __init__(self, api: tpu_api.TpuApi, options: TpuOptions, say: Callable[[str], None]):
        self.api = api
        self.options = options
        self.say = say

    def create(self, qr_id: str, request: Any, deadline: float) -> None:
        """Send the create request, retrying quota and transient errors with backoff until ``deadline``."""
        from google.api_core import exceptions as gexc

        backoff = Backoff(self.options.poll_initial_s, self.options.poll_max_s)
        tries = 0
        while True:
            tries += 1
            try:
                self.api.create_queued_resource(request)
                return
            except gexc.AlreadyExists:
                if tries > 1:
                    return  # an earlier try went through after all (its reply was lost)
                raise LaunchFailed(f"a queued resource named {qr_id} already exists in {self.options.zone}; delete "
                                   f"it with `clipa tpu down --name {qr_id}` or choose another --name") from None
            except gexc.GoogleAPICallError as e:
                if not tpu_api.is_retryable(e):
                    raise tpu_api.TpuApiError(f"creating {qr_id}: {tpu_api.describe_error(e)}") from None
                delay = backoff.next()
                if _mono() + delay > deadline:
                    raise ProvisionTimeout(f"could not create {qr_id} within {self.options.provision_timeout_s:g} s: "
                                           f"{tpu_api.describe_error(e)}") from None
                self.say(f"create {qr_id}: {tpu_api.describe_error(e)}; retrying in {delay:.3g} s")
                time.sleep(delay)

    def wait_ready(self, qr_id: str, deadline: float) -> tuple[Any | None, str]:
        """Poll until the queued resource is ACTIVE and its node READY: (node, "ACTIVE"). (None, state) when it
        failed, was suspended or vanished first. ProvisionTimeout at ``deadline``."""
        backoff = Backoff(self.options.poll_initial_s, self.options.poll_max_s)
        last = None
        while True:
            qr = self.call(self.api.get_queued_resource, qr_id)
            state = "UNKNOWN" if qr is False else ("NOT_FOUND" if qr is None else tpu_api.state_name(qr))
            if state != last:
                self.say(f"{qr_id}: {state}")
                last = state
            if state == tpu_api.QR_ACTIVE:
                node = self.call(self.api.get_node, qr_id)
                if node not in (None, False) and tpu_api.state_name(node) == "READY":
                    return node, state
            elif state in tpu_api.QR_LOST or state == "NOT_FOUND":
                return None, state
            remaining = deadline - _mono()
            if remaining <= 0:
                raise ProvisionTimeout(f"no {self.options.slice_info().accelerator_type} capacity in "
                                       f"{self.options.zone} within {self.options.provision_timeout_s:g} s (last "
                                       f"state {state})")
            time.sleep(min(backoff.next(), remaining))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A read-only API call; False when it failed transiently (the caller tries again on its next poll)."""
        from google.api_core import exceptions as gexc

        try:
            return fn(*args)
        except gexc.GoogleAPICallError as e:
            if tpu_api.is_retryable(e):
                self.say(f"{fn.__name__}: {tpu_api.describe_error(e)} (will retry)")
                return False
            raise tpu_api.TpuApiError(f"{fn.__name__}: {tpu_api.describe_error(e)}") from None

    def delete(self, qr_id: str) -> None:
        """Force-delete ``qr_id`` (its node included) and poll until the API no longer knows it."""
        from google.api_core import exceptions as gexc

        opts = self.options
        deadline = _mono() + opts.teardown_timeout_s
        backoff = Backoff(opts.poll_initial_s, opts.poll_max_s)
        request = tpu_api.build_delete_request(opts, qr_id)
        sent = False
        while True:
            try:
                if not sent:
                    self.api.delete_queued_resource(request)
                    sent = True
                    self.say(f"{qr_id}: deleting")
                if self.api.get_queued_resource(qr_id) is None:
                    break
            except gexc.GoogleAPICallError as e:
                # FAILED_PRECONDITION: the resource is in a state that cannot be deleted yet (e.g. still creating).
                if not (tpu_api.is_retryable(e) or isinstance(e, gexc.FailedPrecondition)):
                    raise tpu_api.TpuApiError(f"deleting {qr_id}: {tpu_api.describe_error(e)}") from None
                self.say(f"deleting {qr_id}: {tpu_api.describe_error(e)} (will retry)")
            if _mono() >= deadline:
                raise LaunchFailed(f"{qr_id} still exists after {opts.teardown_timeout_s:g} s; delete it with "
                                   f"`clipa tpu down --name {qr_id} --project {opts.project} --zone {opts.zone}`")
            time.sleep(backoff.next())
        self.say(f"{qr_id}: deleted")


def _now() -> float:
    return time.time()


def _mono() -> float:
    return time.monotonic()


class Launcher:
    """Runs one ``LaunchPlan`` against a ``TpuApi`` and a ``WorkerExec``; see the module docstring."""

    def __init__(self, plan: LaunchPlan, api: tpu_api.TpuApi, workers: WorkerExec,
                 echo: Callable[[str], None] | None = None, redactor: Redactor | None = None):
        self.plan = plan
        self.api = api
        self.workers = workers
        self.redactor = redactor or workers.redactor
        self._echo = echo or _stderr
        self._owned: list[str] = []  # queued-resource ids created and not yet confirmed deleted
        self._procs: list[WorkerProcess] = []
        self._attempts_by_id: dict[str, TpuAttempt] = {}
        self.prov = Provisioner(api, plan.options, self.say)
        s = plan.slice
        self.outcome = TpuRunOutcome(
            status="running", run_name=plan.run_name, run_id=plan.spec.run_id, project=plan.options.project,
            zone=plan.options.zone, hardware=s.hardware, pricing=s.pricing, accelerator_type=s.accelerator_type,
            runtime_version=s.runtime_version, chips=s.chips, usd_per_chip_hour=s.usd_per_chip_hour,
            price_source=s.price_source, remote_run_dir=plan.remote_run_dir, started_at=_now(),
        )

    # --- output --------------------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        self._echo(self.redactor.redact(f"[tpu] {message}"))

    def _save(self) -> None:
        self.outcome.total()
        text = self.redactor.redact(self.outcome.model_dump_json(indent=2) + "\n")
        atomic_write_text(self.plan.local_dir / OUTCOME_FILE, text)

    # --- the run -------------------------------------------------------------------------------------------------
    def run(self) -> TpuRunOutcome:
        """Run to completion; returns the outcome (status succeeded or failed). On Ctrl-C/SIGTERM: tears down,
        writes the outcome (status interrupted) and re-raises KeyboardInterrupt."""
        self._prepare_files()
        raise_after: BaseException | None = None
        with signals_raise_interrupt():
            try:
                self._save()
                self._loop()
                self.outcome.status = "succeeded"
            except KeyboardInterrupt as e:
                self.outcome.status = "interrupted"
                self.outcome.error = "interrupted (Ctrl-C or SIGTERM)"
                raise_after = e
            except ClipaError as e:
                self.outcome.status = "failed"
                self.outcome.error = self.redactor.redact(str(e))
            except BaseException as e:  # a bug or an unexpected library error: clean up first, then surface it
                self.outcome.status = "failed"
                self.outcome.error = self.redactor.redact(f"{type(e).__name__}: {e}")
                raise_after = e
            finally:
                with signals_deferred(self.say):
                    self._teardown()
                    self.outcome.finished_at = _now()
                    self._save()
        self.say(self.outcome.summary())
        if raise_after is not None:
            raise raise_after
        return self.outcome

    def _prepare_files(self) -> None:
        self.plan.local_dir.mkdir(parents=True, exist_ok=True)
        # The validated spec, re-serialised: what the workers train is exactly what was checked here.
        atomic_write_text(self.plan.local_dir / SPEC_NAME, self.plan.spec.to_json())
        if self.plan.options.install:
            build_source_archive(self.plan.local_dir / SOURCE_ARCHIVE)

    def _loop(self) -> None:
        opts = self.plan.options
        worker_failures = 0
        for index in range(1, opts.max_attempts + 1):
            attempt = self._new_attempt(index)
            node = self._provision(attempt)
            if node is None:
                self._release(attempt)
                continue
            end, codes = self._run_workers(attempt, node)
            self._release(attempt, end)
            if end == "completed":
                try:
                    self._fetch()
                except (ClipaError, OSError) as e:
                    # Training finished and its files are safe in the bucket: a failed copy is reported, not fatal.
                    self.outcome.fetch_error = self.redactor.redact(str(e))
                    self.say(f"could not fetch the results ({e}); they are in {self.plan.remote_run_dir}")
                return
            if end == "preempted":
                self.say(f"{attempt.queued_resource.rsplit('/', 1)[-1]} was preempted: requeueing; the trainer "
                         "resumes from its last checkpoint")
                continue
            worker_failures += 1
            if EXIT_BAD_INPUT in codes:
                raise LaunchFailed(f"the trainer rejected its input (exit code {EXIT_BAD_INPUT}); see "
                                   f"{self._log_path(attempt, 0)}")
            if worker_failures > opts.max_worker_failures:
                raise LaunchFailed(f"workers failed {worker_failures} times (exit codes {codes}); see "
                                   f"{self._log_path(attempt, 0)}")
            self.say(f"a worker failed (exit codes {codes}); requeueing ({worker_failures} of "
                     f"{opts.max_worker_failures} retries)")
        raise LaunchFailed(f"gave up after {opts.max_attempts} slices ({self.outcome.preemptions} preemptions)")

    def _new_attempt(self, index: int) -> TpuAttempt:
        attempt = TpuAttempt(index=index, queued_resource=self.plan.qr_name(index), requested_at=_now(),
                             chips=self.plan.slice.chips, usd_per_chip_hour=self.plan.slice.usd_per_chip_hour)
        self.outcome.attempts.append(attempt)
        self._attempts_by_id[self.plan.qr_id(index)] = attempt
        return attempt

    # --- provisioning --------------------------------------------------------------------------------------------
    def _provision(self, attempt: TpuAttempt) -> Any | None:
        """Create the queued resource and wait until its node is READY. None: the request failed or was suspended
        before becoming active (the caller deletes it and requeues). Raises LaunchFailed at the deadline."""
        qr_id = self.plan.qr_id(attempt.index)
        deadline = _mono() + self.plan.options.provision_timeout_s
        # Owned before the first call: a create that times out on our side may still have happened.
        self._owned.append(qr_id)
        self.say(f"requesting {self.plan.slice.accelerator_type} ({self.plan.slice.pricing}) as {qr_id} in "
                 f"{self.plan.options.zone}")
        try:
            self.prov.create(qr_id, self.plan.create_request(attempt.index), deadline)
            node, state = self.prov.wait_ready(qr_id, deadline)
        except ProvisionTimeout as e:
            attempt.close(_now(), "provisioning_timeout", e.message)
            raise
        if node is None:
            attempt.close(_now(), "provisioning_failed", f"queued resource {state} before it was active")
            return None
        attempt.active_at = _now()
        self._save()
        return node

    # --- running -------------------------------------------------------------------------------------------------
    def _log_path(self, attempt: TpuAttempt, worker: int) -> Path:
        return self.plan.local_dir / "logs" / self.plan.qr_id(attempt.index) / f"worker-{worker}.log"

    def _run_workers(self, attempt: TpuAttempt, node: Any) -> tuple[AttemptEnd, list[int | None]]:
        opts = self.plan.options
        qr_id = self.plan.qr_id(attempt.index)
        hosts = len(node.network_endpoints) or self.plan.slice.hosts
        attempt.hosts = hosts
        self.say(f"{qr_id}: READY with {hosts} worker(s); setting up")
        try:
            self.workers.setup(qr_id, hosts, self.plan.files(), opts.install, self.plan.remote_run_dir)
        except WorkerSetupError:
            # A slice preempted during setup breaks ssh/scp too: that is a preemption, not a broken setup.
            lost = self._slice_lost(qr_id)
            if lost is None:
                raise
            attempt.close(_now(), "preempted", f"{lost} during setup")
            return "preempted", []
        argv = self.plan.trainer_argv()
        self._procs = []
        for w in range(hosts):
            env = self.workers.distributed_env(qr_id, w, hosts)
            on_line = (lambda line: self._echo(f"[w0] {line}")) if w == 0 else None
            self._procs.append(self.workers.start(qr_id, w, argv, env, self._log_path(attempt, w), on_line))
        self.say(f"started the trainer on {hosts} worker(s): {' '.join(argv)}")
        tick = min(1.0, opts.monitor_interval_s)
        next_check = _mono() + opts.monitor_interval_s
        end: AttemptEnd
        while True:
            codes = [p.poll() for p in self._procs]
            if all(c == 0 for c in codes):
                end = "completed"
                break
            crashed = any(c not in (None, 0) for c in codes)
            if crashed or _mono() >= next_check:
                lost = self._slice_lost(qr_id)
                if lost is None and crashed:
                    # A dead VM usually kills the worker before the API says PREEMPTED: give the API time.
                    grace_end = _mono() + opts.preemption_grace_s
                    backoff = Backoff(opts.poll_initial_s, opts.poll_max_s)
                    while lost is None and _mono() < grace_end:
                        time.sleep(min(backoff.next(), max(0.0, grace_end - _mono())))
                        lost = self._slice_lost(qr_id)
                if lost is not None:
                    attempt.close(_now(), "preempted", lost)
                    end = "preempted"
                    break
                if crashed:
                    end = "worker_failed"
                    break
                next_check = _mono() + opts.monitor_interval_s
            time.sleep(tick)
        # A preempted VM takes its processes with it, without a chance to checkpoint: local workers are killed the
        # same way, so what resumes is what a real requeue would resume. Otherwise they get SIGTERM and 10 s.
        grace = 0.0 if end == "preempted" else 10.0
        codes = [p.stop(grace_s=grace) for p in self._procs]
        self._procs = []
        attempt.worker_exit_codes = codes
        self._save()
        return end, codes

    def _slice_lost(self, qr_id: str) -> str | None:
        """Why the slice is gone (node PREEMPTED/..., queued resource SUSPENDED/FAILED/missing), or None."""
        node = self.prov.call(self.api.get_node, qr_id)
        if node is None:
            return "node NOT_FOUND"
        if node is not False and tpu_api.state_name(node) in tpu_api.NODE_LOST:
            return f"node {tpu_api.state_name(node)}"
        qr = self.prov.call(self.api.get_queued_resource, qr_id)
        if qr is None:
            return "queued resource NOT_FOUND"
        if qr is not False and tpu_api.state_name(qr) in tpu_api.QR_LOST:
            return f"queued resource {tpu_api.state_name(qr)}"
        return None

    # --- releasing -----------------------------------------------------------------------------------------------
    def _release(self, attempt: TpuAttempt, end: AttemptEnd | None = None) -> None:
        """Delete this attempt's queued resource and wait until it is gone; billing ends there (unless it ended
        earlier, at a preemption)."""
        qr_id = self.plan.qr_id(attempt.index)
        self._delete(qr_id)
        attempt.close(_now(), end or "error")
        self._save()

    def _delete(self, qr_id: str) -> None:
        self.prov.delete(qr_id)
        if qr_id in self._owned:
            self._owned.remove(qr_id)

    def _teardown(self) -> None:
        """Stop workers and delete everything still owned; what cannot be deleted is reported, never hidden."""
        for proc in self._procs:
            proc.stop(grace_s=5.0)
        self._procs = []
        for qr_id in list(self._owned):
            try:
                self._delete(qr_id)
                attempt = self._attempts_by_id.get(qr_id)
                if attempt is not None:
                    attempt.close(_now(), "interrupted" if self.outcome.status == "interrupted" else "error")
            except Exception as e:  # keep going: the other resources must still be deleted
                self.outcome.leaked.append(qr_id)
                message = str(e) if isinstance(e, ClipaError) else f"{type(e).__name__}: {e}"
                self.say(f"could not delete {qr_id}: {message}")
        if self.outcome.leaked:
            note = (f"LEFT ALLOCATED (still billing): {', '.join(self.outcome.leaked)}; delete with `clipa tpu down "
                    f"--name NAME --project {self.plan.options.project} --zone {self.plan.options.zone}`")
            self.outcome.error = f"{self.outcome.error}; {note}" if self.outcome.error else note
            if self.outcome.status == "succeeded":
                self.outcome.status = "failed"

    # --- results -------------------------------------------------------------------------------------------------
    def _fetch(self) -> None:
        """Copy the run dir's top-level files (results, metrics; not checkpoints) next to the launcher's folder."""
        remote = self.plan.remote_run_dir
        dest = self.plan.run_dir
        fetched: list[str] = []
        if remote.startswith("file://"):
            src = Path(remote[len("file://"):])
            if src.resolve() != dest.resolve():
                for f in sorted(src.iterdir()) if src.is_dir() else []:
                    if f.is_file():
                        shutil.copy2(f, dest / f.name)
                        fetched.append(f.name)
            else:
                fetched = sorted(f.name for f in src.iterdir() if f.is_file())
        else:
            urls = _gcloud_lines(fetch_list_command(remote), self.redactor)
            files = [u for u in urls if u.startswith(remote + "/") and not u.endswith("/")]
            if files:
                _gcloud_lines(["gcloud", "storage", "cp", *files, f"{dest}/"], self.redactor)
            fetched = [u.rsplit("/", 1)[-1] for u in files]
        self.outcome.fetched = fetched
        self.say(f"fetched {len(fetched)} file(s) from {remote} into {dest}")


def fetch_list_command(remote_run_dir: str) -> list[str]:
    return ["gcloud", "storage", "ls", f"{remote_run_dir}/"]


def _gcloud_lines(argv: list[str], redactor: Redactor) -> list[str]:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchFailed(f"{' '.join(argv[:3])} failed: {redactor.redact(proc.stderr.strip())[-500:]}")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


# --- signals ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def signals_raise_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP behave like Ctrl-C (KeyboardInterrupt), so the same finally-block tears down. Only the
    main thread can install handlers; elsewhere (tests calling from a thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred(say: Callable[[str], None]) -> Iterator[None]:
    """While tearing down, a second Ctrl-C must not abandon half-deleted slices: note it and carry on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        say("deleting the TPU resources first (they bill until deleted); please wait")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- entry points ----------------------------------------------------------------------------------------------------
def local_workers_root() -> Path | None:
    """The folder ``CLIPA_TPU_LOCAL_WORKERS`` names, where workers run as local processes, or None (ssh)."""
    root = os.environ.get(LOCAL_WORKERS_ENV)
    return Path(root) if root else None


def make_workers(options: TpuOptions, redactor: Redactor | None = None) -> WorkerExec:
    """The ssh implementation, or local processes under ``local_workers_root()`` (tests and demos, with a fake API:
    ``trainer.tpu.api.ENDPOINT_ENV``)."""
    if (local_root := local_workers_root()) is not None:
        return LocalExec(local_root, redactor=redactor)
    # With --no-install the image is expected to have this checkout and jax[tpu] on its own python3.
    python = VENV_PYTHON if options.install else "python3"
    return GcloudSshExec(options.project, options.zone, python=python, redactor=redactor)


def _check_storage(options: TpuOptions, workers: WorkerExec) -> None:
    if options.bucket and options.bucket.startswith("file://") and not isinstance(workers, LocalExec):
        raise ClipaError("bucket", "a file:// run dir is lost with a preempted VM; real slices need gs://BUCKET")


def _spec(spec: RunSpec | str | Path) -> RunSpec:
    return spec if isinstance(spec, RunSpec) else load_spec(spec)


def run_on_tpu(spec_path: RunSpec | str | Path, run_dir: str | Path, options: TpuOptions, *,
               api: tpu_api.TpuApi | None = None, workers: WorkerExec | None = None,
               worker_entry: Sequence[str] = TRAINER_ENTRY, echo: Callable[[str], None] | None = None
               ) -> TpuRunOutcome:
    """Train ``spec_path`` (a spec file or a RunSpec) on a Cloud TPU slice; the trainer's run dir is
    ``options.bucket/RUN_NAME`` (mounted on the workers), the launcher's record (outcome, logs, spec sent) goes to
    ``run_dir/tpu`` and the run's result files to ``run_dir``.

    Returns the outcome (status ``succeeded`` or ``failed``, cost of every attempt); raises ClipaError for bad
    input before anything is created, and KeyboardInterrupt (after teardown) when interrupted.
    """
    spec = _spec(spec_path)
    redactor = workers.redactor if workers is not None else Redactor()
    workers = workers or make_workers(options, redactor=redactor)
    _check_storage(options, workers)
    plan = LaunchPlan(spec, Path(run_dir), options, workers, worker_entry)
    if api is None:
        api = tpu_api.connect(options.project, options.zone, timeout_s=options.api_timeout_s,
                              lro_poll_initial_s=options.poll_initial_s, lro_poll_max_s=options.poll_max_s)
    launcher = Launcher(plan, api, workers, echo=echo, redactor=redactor)
    for note in _notes(spec, plan.slice):
        launcher.say(f"note: {note}")
    return launcher.run()


def _notes(spec: RunSpec, slice_: SliceInfo) -> list[str]:
    if (spec.hardware, spec.pricing) == (slice_.hardware, slice_.pricing):
        return []
    return [f"the spec is priced as {spec.hardware} {spec.pricing}, this launch is {slice_.hardware} "
            f"{slice_.pricing}: the trainer's dollar meter follows the spec, the outcome records what the slices "
            "cost"]


def dry_run(spec_path: RunSpec | str | Path, run_dir: str | Path, options: TpuOptions, *,
            workers: WorkerExec | None = None, worker_entry: Sequence[str] = TRAINER_ENTRY) -> dict[str, Any]:
    """Everything ``run_on_tpu`` would send and run for the first attempt, without calling anything."""
    spec = _spec(spec_path)
    workers = workers or make_workers(options)
    _check_storage(options, workers)
    plan = LaunchPlan(spec, Path(run_dir), options, workers, worker_entry)
    s = plan.slice
    qr_id = plan.qr_id(1)
    rpc = "google.cloud.tpu.v2.Tpu/"
    o = options
    return {
        "run_name": plan.run_name,
        "run_id": spec.run_id,
        "accelerator_type": s.accelerator_type,
        "runtime_version": s.runtime_version,
        "pricing": s.pricing,
        "chips": s.chips,
        "hosts": s.hosts,
        "usd_per_chip_hour": s.usd_per_chip_hour,
        "remote_run_dir": plan.remote_run_dir,
        **({"notes": notes} if (notes := _notes(spec, s)) else {}),
        "api_requests": [
            {"rpc": rpc + "CreateQueuedResource", "request": tpu_api.message_to_dict(plan.create_request(1)),
             "when": f"once; retried with backoff on quota/transient errors for up to {o.provision_timeout_s:g} s"},
            {"rpc": rpc + "GetQueuedResource", "request": tpu_api.message_to_dict(tpu_api.build_get_request(o, qr_id)),
             "when": f"every {o.poll_initial_s:g}-{o.poll_max_s:g} s until ACTIVE (deadline "
                     f"{o.provision_timeout_s:g} s)"},
            {"rpc": rpc + "GetNode", "request": tpu_api.message_to_dict(tpu_api.build_get_node_request(o, qr_id)),
             "when": f"when ACTIVE, then every {o.monitor_interval_s:g} s while the trainer runs (preemption check)"},
            {"rpc": rpc + "DeleteQueuedResource", "request": tpu_api.message_to_dict(plan.delete_request(1)),
             "when": "after completion, preemption, worker failure, error or Ctrl-C; a requeue then creates "
                     f"{plan.qr_id(2)}, {plan.qr_id(3)}, ... (at most {o.max_attempts})"},
        ],
        "worker_commands": {
            "setup": workers.setup_commands(qr_id, plan.files(), o.install, plan.remote_run_dir),
            "start": [workers.start_command(qr_id, w, plan.trainer_argv(), workers.distributed_env(qr_id, w, s.hosts))
                      for w in range(s.hosts)],
            "fetch": ([fetch_list_command(plan.remote_run_dir),
                       ["gcloud", "storage", "cp", "<each listed file>", f"{plan.run_dir}/"]]
                      if plan.remote_run_dir.startswith("gs://") else []),
        },
    }


def format_json(obj: Any, indent: int = 0) -> str:
    """Indented JSON in which a list of scalars (a command's argv) stays on one line, so commands read as commands."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {format_json(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(f"{inner}{format_json(v, indent + 2)}" for v in obj) + f"\n{pad}]"
    return json.dumps(obj)


def print_json(obj: Any, redactor: Redactor | None = None) -> None:
    import sys

    sys.stdout.write((redactor or Redactor()).redact(format_json(obj)) + "\n")
