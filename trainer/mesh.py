"""The one device mesh, and how the batch and the training state are laid out on it.

A single mesh axis, ``data``, over every device JAX sees (``jax.devices()``: all hosts' devices in a multi-host run).
The same code runs on one CPU, on 8 fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set
before JAX starts), on a GPU and on a multi-host TPU slice:

* the global batch is split over ``data``; each process feeds only its local slice (rows
  ``[process_index * B / P, (process_index + 1) * B / P)``) and ``global_batch`` assembles the global array with
  ``jax.make_array_from_process_local_data``;
* ``sharding="data"`` (data parallel) replicates parameters and optimiser state; ``sharding="fsdp"`` shards each
  array of the state along its largest axis divisible by the device count (small arrays stay replicated), and XLA
  inserts the all-gathers and reduce-scatters. Both use the same ``data`` axis, so the batch layout is the same.

``check_layout`` turns every way a batch cannot be laid out into a ClipaError before anything is compiled.
``activation_sharding(mesh)`` is the context the training step traces under so that the model's blocks keep their
activations split over ``data`` (``batch_sharded``), whatever layout the weights have.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from planner.errors import ClipaError

DATA_AXIS = "data"
# Arrays smaller than this stay replicated under FSDP: sharding them saves no memory worth an all-gather.
FSDP_MIN_SIZE = 1024


# What srun sets for every task of a job step (JAX's SlurmCluster reads these; SLURM_STEP_ID marks a step, which the
# batch script itself is not).
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID")


def in_slurm_step() -> bool:
    """True in a task of an ``srun`` step with more than one task (``clipa run --backend slurm``'s jobs)."""
    if not all(os.environ.get(v) for v in _SLURM_STEP_VARS):
        return False
    try:
        return int(os.environ["SLURM_NTASKS"]) > 1
    except ValueError:
        return False


def maybe_initialize_distributed() -> None:
    """Join a multi-host run when the environment describes one (a JAX coordinator, a Cloud TPU VM slice, or a
    multi-task ``srun`` step of a SLURM job).

    Must run before any other JAX call. On a single machine without those variables it does nothing.
    """
    if jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # CPU processes (tests, a CPU cluster) need a cross-process collectives backend; accelerators ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif in_slurm_step():
        # JAX's own SLURM detection: coordinator = first node of SLURM_STEP_NODELIST (port from SLURM_JOB_ID),
        # SLURM_NTASKS processes, id SLURM_PROCID, and on GPUs the task's own device SLURM_LOCALID (one task per GPU).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(cluster_detection_method="slurm")
    elif os.environ.get("CLIPA_DISTRIBUTED") == "1" or (
            "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
        # Cloud TPU: coordinator, process count and id come from the TPU VM metadata. The launcher sets
        # CLIPA_DISTRIBUTED=1 because an ssh session on a queued-resource VM need not have TPU_WORKER_HOSTNAMES.
        jax.distributed.initialize()


def describe_devices(compute_dtype: str) -> str:
    """One line for the start of training: backend, device count and kind, processes, compute dtype."""
    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    return (f"{jax.default_backend()}: {len(devs)} device(s) ({', '.join(kinds)}) in {jax.process_count()} "
            f"process(es), compute {compute_dtype}")


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: all of JAX's devices, in the order JAX lists them)."""
    devs = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devs, dtype=object), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], n: int) -> P:
    size = int(np.prod(shape)) if shape else 1
    if n == 1 or size < FSDP_MIN_SIZE:
        return P()
    # The largest axis that divides evenly; ties go to the first (usually the fan-in of a kernel).
    best = None
    for ax, d in enumerate(shape):
        if d % n == 0 and (best is None or d > shape[best]):
            best = ax
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = DATA_AXIS
    return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, mode: str) -> Any:
    """A sharding for every leaf of a (possibly abstract) state pytree: replicated ("data") or FSDP ("fsdp").

    The rule depends only on each array's shape, so parameters and their Adam moments get the same layout.
    """
    if mode not in ("data", "fsdp"):
        raise ClipaError("train.sharding", f"unknown sharding {mode!r} (known: data, fsdp)")
    n = mesh.devices.size

    def one(x):
        if mode == "data":
            return replicated(mesh)
        return NamedSharding(mesh, _fsdp_spec(tuple(x.shape), n))

    return jax.tree.map(one, abstract_state)


def check_layout(global_batch: int, mesh: Mesh, micro_batch: int | None = None, field: str = "batch_size") -> None:
    """A ClipaError unless ``global_batch`` (and each micro-batch) splits evenly over devices and processes."""
    n_dev = mesh.devices.size
    n_proc = jax.process_count()
    if global_batch % n_proc:
        raise ClipaError(field, f"global batch {global_batch} is not divisible by the {n_proc} processes")
    if global_batch % n_dev:
        raise ClipaError(field, f"global batch {global_batch} is not divisible by the {n_dev} devices")
    if micro_batch is not None:
        if global_batch % micro_batch:
            raise ClipaError("train.micro_batch", f"{micro_batch} does not divide the global batch {global_batch}")
        if micro_batch % n_dev:
            raise ClipaError(
                "train.micro_batch", f"micro-batch {micro_batch} is not divisible by the {n_dev} devices"
            )


def local_batch_size(global_batch: int) -> int:
    return global_batch // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, global_size: int) -> dict[str, jax.Array]:
    """Global, batch-sharded arrays from this process's slice of every field."""
    sharding = batch_sharding(mesh)
    out = {}
    for name, arr in local.items():
        arr = np.asarray(arr)
        out[name] = jax.make_array_from_process_local_data(sharding, arr, (global_size,) + arr.shape[1:])
    return out


# The mesh the training step is being traced for, read by the model's blocks (ambient so that the network's
# signature stays the network's).
_ACTIVATION_MESH: contextvars.ContextVar = contextvars.ContextVar("activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh):
    """While tracing under this context, activations stay split over the mesh's ``data`` axis (``batch_sharded``)."""
    token = _ACTIVATION_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVATION_MESH.reset(token)


def batch_sharded(x: jax.Array) -> jax.Array:
    """Keep activations split over the batch when the training step traces under ``activation_sharding``.

    Without this, FSDP-sharded weights would propagate their layout into the activations and XLA would end up
    replicating them; with it, XLA all-gathers each weight where it is used, which is what FSDP means.
    """
    mesh = _ACTIVATION_MESH.get()
    if mesh is None or mesh.devices.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(DATA_AXIS)))
