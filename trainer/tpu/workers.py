"""Running the trainer on a slice's worker hosts: the ``WorkerExec`` interface and its two implementations.

``GcloudSshExec`` is the real one: ``gcloud compute tpus tpu-vm scp/ssh`` per worker, one local ``gcloud`` process
per worker whose output is that worker's log. ``LocalExec`` runs each "worker" as a subprocess on this machine, in
its own folder per node (a requeued slice gets fresh folders, as fresh VMs get fresh disks), which is how tests
exercise the whole launch flow against the fake API.

Commands are argv lists end to end; no local shell is involved. On the ssh path the remote side is a shell, so each
argument is quoted with ``shlex.quote`` and, before that, every spec- or option-derived argument has been checked by
``names.safe_arg`` (no whitespace, no metacharacters), so quoting is a second line of defence, not the only one.
Every output line is redacted before it is written or shown.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from planner.errors import ClipaError
from planner.paths import PACKAGE_ROOT
from trainer.tpu import names
from trainer.tpu.redact import LineRedactor, Redactor, worker_base_env

# The folder (relative to the worker's home) that holds the spec, the source and the trainer's log.
WORKDIR = "clipa-run"
LOG_NAME = "train.log"
SOURCE_ARCHIVE = "clipa-src.tar.gz"
SPEC_NAME = "spec.json"
# Where the run dir's bucket is mounted on every worker (Cloud Storage FUSE), relative to WORKDIR, which is the
# trainer's working directory. The trainer gets the mounted path as --run-dir, so everything it writes (spec, metrics,
# TensorBoard, eval.json, orbax checkpoints) stays plain local-file IO and lands in the bucket, where a requeued slice
# finds it after a preemption.
MOUNT_DIR = "gcs"
GCSFUSE_OPTIONS = (
    "--implicit-dirs",  # prefixes written by another host (or gcloud storage) show up as directories
    # orbax finalizes a checkpoint by renaming its temporary step directory, which gcsfuse refuses unless the
    # directory has fewer objects than this (it renames by copy + delete, object by object: not atomic)
    "--rename-dir-limit=200000",
    # no stat/type caching: every host sees the files the others wrote at once (multi-host orbax saves and restores)
    "--metadata-cache-ttl-secs=0",
)


class WorkerProcess:
    """One started worker: a local process (the trainer itself, or the ssh client running it remotely) whose
    combined output is redacted, saved to ``log_path`` and passed line by line to ``on_line``."""

    def __init__(self, worker: int, argv: Sequence[str], *, cwd: Path | None, env: Mapping[str, str],
                 log_path: Path, redactor: Redactor, on_line: Callable[[str], None] | None = None,
                 mirror_log: Path | None = None):
        self.worker = worker
        self.log_path = log_path
        self._logs = []
        for path in (log_path, mirror_log):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._logs.append(open(path, "a", encoding="utf-8"))
        # A new session: the terminal's Ctrl-C reaches the launcher only, which then stops workers in order, and the
        # whole process group can be signalled at once.
        self._proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._redact = LineRedactor(redactor)
        self._on_line = on_line
        self._reader = threading.Thread(target=self._pump, name=f"worker-{worker}-log", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for raw in iter(self._proc.stdout.readline, b""):
            line = self._redact(raw.decode("utf-8", "replace").rstrip("\n"))
            for log in self._logs:
                log.write(line + "\n")
                log.flush()
            if self._on_line is not None:
                self._on_line(line)
        self._proc.stdout.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self._proc.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``grace_s`` (at once when it is 0); returns the exit code."""
        if self._proc.poll() is None and grace_s <= 0:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        elif self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        self._reader.join(timeout=5)
        for log in self._logs:
            log.close()
        self._logs = []
        return self._proc.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass


class WorkerExec(ABC):
    """How the launcher reaches a slice's hosts. ``*_commands`` return the local argv lists (printed by
    ``--dry-run``); ``setup``/``start``/``logs`` run them."""

    python: str  # the interpreter on the workers

    def __init__(self, redactor: Redactor | None = None):
        self.redactor = redactor or Redactor()

    @abstractmethod
    def setup_commands(self, node: str, files: Sequence[Path], install: bool,
                       remote_run_dir: str | None = None) -> list[list[str]]:
        """Copy ``files`` into every worker's WORKDIR; with ``install``, install the shipped source there; make
        ``remote_run_dir`` reachable as the path ``local_run_dir`` returns (on a TPU VM: mount its bucket)."""

    @abstractmethod
    def setup(self, node: str, hosts: int, files: Sequence[Path], install: bool,
              remote_run_dir: str | None = None) -> None: ...

    @abstractmethod
    def start_command(self, node: str, worker: int, argv: Sequence[str], env: Mapping[str, str]) -> list[str]: ...

    @abstractmethod
    def start(self, node: str, worker: int, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
              on_line: Callable[[str], None] | None = None) -> WorkerProcess: ...

    @abstractmethod
    def distributed_env(self, node: str, worker: int, hosts: int) -> dict[str, str]:
        """The variables that tell the trainer to call jax.distributed.initialize: CLIPA_DISTRIBUTED=1 always, and
        JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID where they cannot be discovered (README)."""

    @abstractmethod
    def logs_command(self, node: str, worker: int, follow: bool) -> list[str]: ...

    def local_run_dir(self, remote_run_dir: str) -> str:
        """The --run-dir argument the trainer gets for the run dir URL: always a local path (``clipa train`` refuses
        URLs). Here ``file://PATH`` -> ``PATH``; ``GcloudSshExec`` maps ``gs://`` into its bucket mount."""
        if remote_run_dir.startswith("file://"):
            return remote_run_dir[len("file://"):]
        raise ClipaError("bucket", f"{remote_run_dir}: these workers can only use a file:// run dir")


# The interpreter the trainer runs with after the install step (relative to WORKDIR): a Python 3.11 venv, because
# the project pins Python 3.11 and TPU VM images ship the system Python of their Ubuntu release.
VENV_PYTHON = "venv/bin/python"


# The checkout's optional dependencies a worker installs (pyproject.toml): gcsfs, so that the trainer reads gs:// data.
WORKER_EXTRA = "tpu"
# Workers install the versions CI tested: the lock is a constraints file (packages it lists get exactly its version).
LOCK_FILE = "requirements.lock"


def install_script() -> str:
    """The remote install step, run in WORKDIR on every worker: unpack the shipped source, make a Python 3.11 venv
    with uv, and install the checkout (editable: the catalog in budgets/ is read from the checkout) with its
    ``WORKER_EXTRA`` extra (gcsfs) and the JAX version this checkout pins, built for TPU, constrained to the locked
    versions (``LOCK_FILE``). Only constants go into it;
    no spec-derived text."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        jax_req = f"jax[tpu]=={version('jax')}"
    except PackageNotFoundError:  # pragma: no cover - jax is a dependency of the project
        jax_req = "jax[tpu]"
    uv = "$HOME/.local/bin/uv"
    return " && ".join([
        f"tar -xzf {SOURCE_ARCHIVE}",
        "python3 -m pip install --quiet --user uv",
        f"{uv} venv --quiet --python 3.11 venv",
        f"{uv} pip install --quiet --python {VENV_PYTHON} -c clipa/{LOCK_FILE} "
        f"-e {shlex.quote(f'./clipa[{WORKER_EXTRA}]')} {shlex.quote(jax_req)}",
    ])


def gcsfuse_install_script() -> str:
    """Install Cloud Storage FUSE from Google's apt repository (TPU VM images are Ubuntu), as Google documents it.
    Constants only. ``DPkg::Lock::Timeout``: a fresh VM may still be running unattended-upgrades."""
    apt = "sudo apt-get -o DPkg::Lock::Timeout=600 -qq"
    key = "/usr/share/keyrings/cloud.google.asc"
    # Double quotes on purpose: the remote shell fills in the Ubuntu release name.
    repo = f'"deb [signed-by={key}] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main"'
    return " && ".join([
        f"echo {repo} | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null",
        f"curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee {key} >/dev/null",
        f"{apt} update",
        f"{apt} install -y gcsfuse",
    ])


def mount_script(remote_run_dir: str) -> str:
    """The remote mount step, run in WORKDIR on every worker: install gcsfuse if the image lacks it and mount the run
    dir's bucket at MOUNT_DIR (unless something is mounted there already). The bucket name is validated
    (``names.gs_parts``) and quoted; everything else is a constant. No unmount: the VM is deleted afterwards."""
    bucket, _ = names.gs_parts(remote_run_dir, "bucket")
    mount = shlex.join(["gcsfuse", *GCSFUSE_OPTIONS, bucket, MOUNT_DIR])
    return (f"mkdir -p {MOUNT_DIR} && {{ command -v gcsfuse >/dev/null || {{ {gcsfuse_install_script()}; }}; }} && "
            f"{{ mountpoint -q {MOUNT_DIR} || {mount}; }}")


def mounted_run_dir(remote_run_dir: str) -> str:
    """Where ``gs://BUCKET/PATH`` is on a worker once ``mount_script`` ran: ``MOUNT_DIR/PATH``, relative to WORKDIR
    (the trainer's working directory; ``clipa train`` makes it absolute)."""
    _, path = names.gs_parts(remote_run_dir, "bucket")
    return f"{MOUNT_DIR}/{path}" if path else MOUNT_DIR


def build_source_archive(dest: Path) -> Path:
    """A tar.gz of this checkout's packages and data that the workers install (no venv, caches or results)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    skip_dirs = {"__pycache__", ".pytest_cache", ".ruff_cache"}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in skip_dirs for p in parts) or info.name.endswith((".pyc", ".tmp")):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w:gz") as tar:
        for item in ("pyproject.toml", LOCK_FILE, "README.md", "planner", "trainer", "budgets"):
            path = PACKAGE_ROOT / item
            if path.exists():
                tar.add(path, arcname=f"clipa/{item}", filter=keep)
    return dest


class GcloudSshExec(WorkerExec):
    """Workers reached with ``gcloud compute tpus tpu-vm ssh/scp`` (gcloud must be installed and logged in here;
    the launcher never handles its credentials)."""

    def __init__(self, project: str, zone: str, python: str = VENV_PYTHON, gcloud: str = "gcloud",
                 redactor: Redactor | None = None):
        super().__init__(redactor)
        self.project = names.project_id(project)
        self.zone = names.zone(zone)
        self.python = python
        self.gcloud = gcloud

    def _base(self, verb: str, node: str, worker: int | str) -> list[str]:
        return [self.gcloud, "compute", "tpus", "tpu-vm", verb, names.resource_id(node), f"--project={self.project}",
                f"--zone={self.zone}", f"--worker={worker}", "--quiet"]

    def _ssh(self, node: str, worker: int | str, remote: str) -> list[str]:
        # Keepalives make a vanished (preempted) VM end the ssh session instead of hanging it for hours.
        return self._base("ssh", node, worker) + ["--ssh-flag=-oServerAliveInterval=30",
                                                  "--ssh-flag=-oServerAliveCountMax=4", f"--command={remote}"]

    def setup_commands(self, node: str, files: Sequence[Path], install: bool,
                       remote_run_dir: str | None = None) -> list[list[str]]:
        cmds = [self._ssh(node, "all", f"mkdir -p {WORKDIR}")]
        cmds.append([self.gcloud, "compute", "tpus", "tpu-vm", "scp", *(str(f) for f in files),
                     f"{names.resource_id(node)}:{WORKDIR}/", f"--project={self.project}", f"--zone={self.zone}",
                     "--worker=all", "--quiet"])
        if install:
            remote = f"cd {WORKDIR} && {install_script()}"
            cmds.append(self._ssh(node, "all", remote))
        if remote_run_dir is not None:
            cmds.append(self._ssh(node, "all", f"cd {WORKDIR} && {mount_script(remote_run_dir)}"))
        return cmds

    def local_run_dir(self, remote_run_dir: str) -> str:
        """``gs://BUCKET/PATH`` -> ``gcs/PATH``: the bucket is mounted at WORKDIR/gcs by the setup step."""
        return mounted_run_dir(remote_run_dir)

    def setup(self, node: str, hosts: int, files: Sequence[Path], install: bool,
              remote_run_dir: str | None = None) -> None:
        for argv in self.setup_commands(node, files, install, remote_run_dir):
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                tail = self.redactor.redact(proc.stdout.decode("utf-8", "replace"))[-2000:]
                raise WorkerSetupError(f"{argv[4]} on {node} failed with exit code {proc.returncode}: {tail}")

    def start_command(self, node: str, worker: int, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        env_args = [f"{k}={v}" for k, v in sorted(env.items())]
        inner = shlex.join(["env", *env_args, *argv])
        # pipefail: the ssh exit code is the trainer's, not tee's. The log stays on the worker for `clipa tpu logs`.
        remote = f"set -o pipefail; cd {WORKDIR} && {inner} 2>&1 | tee -a {LOG_NAME}"
        return self._ssh(node, worker, remote)

    def start(self, node: str, worker: int, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
              on_line: Callable[[str], None] | None = None) -> WorkerProcess:
        # The local gcloud process gets this machine's environment (it needs its own login); the trainer on the
        # worker gets only ``env``, written into the command.
        return WorkerProcess(worker, self.start_command(node, worker, argv, env), cwd=None, env=os.environ,
                             log_path=log_path, redactor=self.redactor, on_line=on_line)

    def distributed_env(self, node: str, worker: int, hosts: int) -> dict[str, str]:
        # On a TPU VM jax.distributed.initialize() finds coordinator, process count and id itself (from the VM's
        # metadata server); the flag tells the trainer to call it.
        return {"CLIPA_DISTRIBUTED": "1"}

    def logs_command(self, node: str, worker: int, follow: bool) -> list[str]:
        tail = ["tail", "-n", "+1", *(["-F"] if follow else []), f"{WORKDIR}/{LOG_NAME}"]
        return self._ssh(node, worker, shlex.join(tail))


class WorkerSetupError(ClipaError):
    def __init__(self, message: str):
        super().__init__("workers", message)


class LocalExec(WorkerExec):
    """Each worker is a subprocess on this machine, in ``root/NODE/worker-I/clipa-run`` (multi-host JAX on one box).

    Workers see only an allow-listed environment plus the launcher's variables, as a fresh VM would. Installing is not
    done: the workers run this checkout with this interpreter.
    """

    def __init__(self, root: Path, python: str | None = None, redactor: Redactor | None = None):
        super().__init__(redactor)
        self.root = Path(root)
        self.python = python or sys.executable
        self._ports: dict[str, int] = {}

    def worker_dir(self, node: str, worker: int) -> Path:
        return self.root / names.resource_id(node) / f"worker-{worker}" / WORKDIR

    def setup_commands(self, node: str, files: Sequence[Path], install: bool,
                       remote_run_dir: str | None = None) -> list[list[str]]:
        # The run dir is a file:// folder every local worker reaches directly: nothing to mount.
        return [["cp", str(f), str(self.root / node / "worker-*" / WORKDIR) + "/"] for f in files]

    def setup(self, node: str, hosts: int, files: Sequence[Path], install: bool,
              remote_run_dir: str | None = None) -> None:
        for w in range(hosts):
            d = self.worker_dir(node, w)
            d.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, d / f.name)

    def start_command(self, node: str, worker: int, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        return list(argv)

    def start(self, node: str, worker: int, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
              on_line: Callable[[str], None] | None = None) -> WorkerProcess:
        full_env = worker_base_env()
        # The checkout must be importable from the worker folder, as the editable install makes it on a TPU VM.
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), full_env.get("PYTHONPATH")) if p)
        full_env.update(env)
        wdir = self.worker_dir(node, worker)
        # The worker keeps its own log too (as the tee on a TPU VM does), for `clipa tpu logs`.
        return WorkerProcess(worker, self.start_command(node, worker, argv, env), cwd=wdir, env=full_env,
                             log_path=log_path, redactor=self.redactor, on_line=on_line,
                             mirror_log=wdir / LOG_NAME)

    def distributed_env(self, node: str, worker: int, hosts: int) -> dict[str, str]:
        # Off TPU nothing can be auto-detected: give jax.distributed.initialize every argument, under the names JAX
        # itself reads (JAX_COORDINATOR_ADDRESS) and the trainer passes on (trainer.mesh.maybe_initialize_distributed).
        if node not in self._ports:
            self._ports[node] = _free_port()
        return {"CLIPA_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{self._ports[node]}",
                "JAX_NUM_PROCESSES": str(hosts), "JAX_PROCESS_ID": str(worker)}

    def logs_command(self, node: str, worker: int, follow: bool) -> list[str]:
        return ["tail", "-n", "+1", *(["-F"] if follow else []), str(self.worker_dir(node, worker) / LOG_NAME)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
