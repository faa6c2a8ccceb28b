"""The end-of-training evaluation of a run with any number of processes (``clipa train`` on a multi-host slice).

Process 0 evaluates the whole parameters on one of its devices (``trainer.evaluation.evaluate_run``) while the other
processes wait for it on the JAX coordination service, then every process returns the same numbers. The coordination
client is reached through JAX's private ``jax._src.distributed`` (JAX 0.10 has no public accessor): that one import
is confined to ``_coordination_client`` here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import ClipaError
from planner.spec import RunSpec
from trainer.embed import TrainedModel
from trainer.evaluation import evaluate_run

# How long the other processes of a multi-host run wait for process 0's end-of-training evaluation. They wait on the
# JAX coordination service (a key process 0 sets when done), not in a device collective: collectives time out after
# seconds on some backends (Gloo: 30 s), while an ImageNet evaluation on one chip takes minutes. If process 0 dies,
# the coordination service (hosted by process 0) goes with it and the others are terminated; they never hang.
FINAL_EVAL_WAIT_S = 6 * 3600


class EvalFailedElsewhere(RuntimeError):
    """Process 0's end-of-training evaluation failed with an error that is not bad input (its log has the cause)."""


def whole_params(params: Any, device: Any | None) -> Any:
    """Every leaf of ``params`` whole, as a single-device array on ``device`` (one of this process's devices), or
    nothing (None) when ``device`` is None.

    Replicated leaves (``sharding: data``) are taken from a local copy, device to device (no copy where it already
    lies on ``device``). Leaves split over several hosts (``sharding: fsdp``) are all-gathered one at a time, a
    collective: in a multi-process run every process must call this with the same tree (which leaves need it depends
    only on their shardings, the same on every process), also the ones that keep nothing."""
    import jax
    import numpy as np

    def one(x):
        if isinstance(x, jax.Array) and x.is_fully_replicated:
            whole = x.addressable_data(0)
        elif isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            whole = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        else:
            whole = x
        return None if device is None else jax.device_put(whole, device)

    return jax.tree.map(one, params)


def _coordination_client():
    from jax._src import distributed  # the client jax.distributed.initialize() made (no public accessor in 0.10)

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("a multi-process run without a JAX coordination client")
    return client


# what every process returns of process 0's evaluation (and ``clipa train`` reports): top-1/top-5, the image count,
# each class-name word's top-1 where the data names them
SUMMARY_KEYS = ("top1", "top5", "n", "attributes")


def evaluate_at_end(spec: RunSpec, run_dir: Path, cfg: Any, params: Any,
                    wait_s: float = FINAL_EVAL_WAIT_S) -> dict[str, Any]:
    """``evaluate_run`` of a run's final parameters at the end of ``clipa train``, with any number of processes.

    Every process must call it. One process: ``evaluate_run`` as it is. Several (a multi-host slice): the whole
    parameters are put on ONE of process 0's devices (``whole_params``, which every process takes part in), and
    process 0 alone evaluates them there, so its numbers are those of a single-process ``clipa eval`` of the same
    parameters, and writes ``eval.json``; the others wait until it is done (or failed) and return the same
    ``SUMMARY_KEYS``. A computation whose inputs all lie on one local device involves no other process, so nothing
    here can deadlock on a collective.
    A ClipaError on process 0 (bad eval data) is raised on every process (exit 2 everywhere, not retried); any
    other failure there raises ``EvalFailedElsewhere`` on the others."""
    import jax

    if jax.process_count() == 1:
        return evaluate_run(spec, run_dir, TrainedModel(cfg, params))
    # Every process, before anyone goes its own way (FSDP leaves need a collective); process 0 keeps them.
    device = jax.local_devices()[0] if jax.process_index() == 0 else None
    local = whole_params(params, device)
    client = _coordination_client()
    key = f"clipa/final-eval/{spec.run_id}"
    if jax.process_index() == 0:
        try:
            ev = evaluate_run(spec, run_dir, TrainedModel(cfg, local))
        except BaseException as e:  # also KeyboardInterrupt/SIGTERM: the others must not wait for hours
            status = ({"field": e.field, "message": e.message} if isinstance(e, ClipaError)
                      else {"error": f"{type(e).__name__}: {e}"})
            client.key_value_set(key, json.dumps(status))
            raise
        shared = {k: ev[k] for k in ("run_id", *SUMMARY_KEYS) if k in ev}
        client.key_value_set(key, json.dumps({"eval": shared}))
        return ev
    status = json.loads(client.blocking_key_value_get(key, int(wait_s * 1000)))
    if "field" in status:
        raise ClipaError(status["field"], f"{status['message']} (zero-shot evaluation on process 0)")
    if "error" in status:
        raise EvalFailedElsewhere(f"zero-shot evaluation failed on process 0: {status['error']}")
    return status["eval"]
