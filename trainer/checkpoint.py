"""Checkpoints (orbax ``CheckpointManager``): what a run saves, how it resumes, and loading weights for init and eval.

A run's checkpoints live in ``RUN_DIR/checkpoints/<global_step>/`` with three items:

* ``params``: the model parameters (nested dict of float32 arrays, restored straight into their shardings);
* ``opt``: the optimiser state of the stage being trained;
* ``meta``: JSON with everything else needed to continue exactly: stage index, step within the stage, global step,
  the stage's RNG key, every process's data-source state (``get_state()``, gathered to the primary process), the
  cost meter, and the model configuration the parameters belong to (so ``init: checkpoint:PATH`` and ``clipa eval``
  can rebuild the network without the spec that produced them).

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous checkpoint as the latest one (unfinished ones are cleaned up on the next start).

``resolve_checkpoint`` accepts a run directory, a ``checkpoints`` directory (latest step) or one step's directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from planner.errors import ClipaError
from planner.variants import decode_variant
from trainer.run_layout import CHECKPOINT_DIR

META_VERSION = 1


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import and only needed when saving/loading

    return ocp


def model_meta(cfg) -> dict:
    """The part of a ModelConfig that fixes the parameter shapes (dtype and remat are execution choices)."""
    return {
        "variant": cfg.variant.name,
        "image_res": cfg.image_res,
        "vocab_size": cfg.vocab_size,
        "posemb": cfg.posemb,
        "pool": cfg.pool,
        "eot_id": cfg.eot_id,
    }


def config_from_meta(meta: dict, dtype: str = "float32", remat: str = "none"):
    from trainer.model import ModelConfig

    m = meta["model"]
    return ModelConfig(
        variant=decode_variant(m["variant"]),
        image_res=int(m["image_res"]),
        vocab_size=int(m["vocab_size"]),
        posemb=m["posemb"],
        pool=m["pool"],
        dtype=dtype,
        remat=remat,
        eot_id=m.get("eot_id"),
    )


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs (with shardings, when given) for restoring ``tree``'s structure."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpoints:
    """The run's checkpoint manager. ``save`` is asynchronous; ``wait`` blocks until everything is on disk."""

    def __init__(self, directory: str | Path, max_to_keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        # Reading: no directory creation, no clean-up, nothing deleted (orbax's own read_only mode logs warnings
        # on every open, so it is not used).
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else max_to_keep,
                create=not read_only,
                enable_async_checkpointing=async_save and not read_only,
                cleanup_tmp_directories=not read_only,
                # Step folders are created before save() returns, not by a background thread: when that thread fails
                # (the folder turned read-only, the disk filled) the array writers wait for its "created" signal
                # until orbax's 300 s coordination timeout; created here, the failure is an OSError at once.
                async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
            ),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def meta(self, step: int) -> dict:
        ocp = _ocp()
        return dict(self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def save(self, step: int, params: Any, opt_state: Any | None, meta: dict) -> None:
        """Save (asynchronously); ``opt_state`` None writes weights only (enough for ``init`` and eval)."""
        self._check_writable(step)
        ocp = _ocp()
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt"] = ocp.args.StandardSave(opt_state)
        # orbax first waits for the previous (asynchronous) save: a failure of that one surfaces here
        self._orbax_write(lambda: self._mngr.save(step, args=ocp.args.Composite(**items), force=True), step)

    def _orbax_write(self, call, step: int | None):
        """Run an orbax write call; a failed checkpoint write (this one or the previous asynchronous one) becomes one
        ClipaError naming the folder and the last finished checkpoint instead of orbax's traceback."""
        try:
            return call()
        except ClipaError:
            raise
        except Exception as e:  # tensorstore reports EROFS/ENOSPC as ValueError, the file system as OSError
            latest = self.latest_step()
            what = f"checkpoint {step}" if step is not None else "a checkpoint"
            # tensorstore's messages carry its whole JSON spec and nested paths; the OS reason is what matters
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(" [tensorstore_spec=")[0]
            os_reason = re.search(r":\s*([^:\"\[]+?)\s*\[os_error_code=", first)
            first = os_reason.group(1) if os_reason else (first if len(first) <= 400 else first[:400] + " ...")
            raise ClipaError("checkpoint", f"writing {what} in {self.directory} failed: {first}; the last finished "
                             f"checkpoint is {'step ' + str(latest) if latest is not None else 'none'}") from None

    def _check_writable(self, step: int) -> None:
        """A ClipaError now when the folder cannot take a file (read-only, full, permissions). Orbax's asynchronous
        save would otherwise fail in a background thread while its sibling threads wait minutes for a signal that
        never comes, and the run would end with a timeout traceback instead of a reason."""
        probe = self.directory / f".write-probe-{os.getpid()}-{jax.process_index()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"probe")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as e:
            latest = self.latest_step()
            raise ClipaError("checkpoint", f"cannot write checkpoint {step} in {self.directory}: {e.strerror or e}; "
                             f"the last finished checkpoint is {'step ' + str(latest) if latest is not None else 'none'}"
                             ) from None

    def restore(self, step: int, abstract_params: Any, abstract_opt: Any | None = None) -> tuple[Any, Any | None]:
        """Parameters (and, when ``abstract_opt`` is given, the optimiser state) of checkpoint ``step``."""
        ocp = _ocp()
        items = {"params": ocp.args.StandardRestore(abstract_params)}
        if abstract_opt is not None:
            items["opt"] = ocp.args.StandardRestore(abstract_opt)
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return out.params, (out.opt if abstract_opt is not None else None)

    def wait(self) -> None:
        self._orbax_write(self._mngr.wait_until_finished, None)

    def close(self) -> None:
        self._mngr.close()


def resolve_checkpoint(path: str | Path, field: str = "checkpoint") -> tuple[Path, int]:
    """(manager directory, step) for a run directory, a checkpoints directory, or one step's directory."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ClipaError(field, f"checkpoint not found: {p}")
    if (p / CHECKPOINT_DIR).is_dir():
        p = p / CHECKPOINT_DIR
    if (p / "params").is_dir() and (p / "meta").exists() and p.name.isdigit():
        return p.parent.absolute(), int(p.name)
    steps = sorted(int(c.name) for c in p.iterdir() if c.is_dir() and c.name.isdigit() and (c / "params").is_dir())
    if not steps:
        raise ClipaError(field, f"{path} holds no finished checkpoint (expected RUN_DIR, RUN_DIR/checkpoints or a step)")
    return p.absolute(), steps[-1]


def load_params(path: str | Path, field: str = "checkpoint", dtype: str = "float32", remat: str = "none"):
    """(ModelConfig, params on this process's first device, meta) of the checkpoint at ``path`` (see
    ``resolve_checkpoint``), also when it was saved by another device layout or number of hosts."""
    from trainer.model import abstract_params

    directory, step = resolve_checkpoint(path, field)
    store = Checkpoints(directory, read_only=True, async_save=False)
    try:
        meta = store.meta(step)
        if "model" not in meta:
            raise ClipaError(field, f"{directory}/{step} was not written by this trainer (no model description)")
        cfg = config_from_meta(meta, dtype=dtype, remat=remat)
        # Onto one local device, whatever devices saved it: a multi-host run's checkpoint records that run's
        # device topology, which orbax refuses to restore without a target layout for this one.
        abstract = abstract_params(cfg)
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        params, _ = store.restore(step, abstract_like(abstract, jax.tree.map(lambda _: one_device, abstract)))
    finally:
        store.close()
    return cfg, params, meta


def load_trained(path: str | Path):
    """A ``TrainedModel`` (for ``embed_images``/``embed_texts``) from a run directory or checkpoint."""
    from trainer.embed import TrainedModel
    from trainer.model import resolve_compute_dtype

    cfg, params, _ = load_params(path, dtype=resolve_compute_dtype("auto"))
    return TrainedModel(cfg, params)


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-serialisable ``obj``, in process order (each process gets the full list)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([blob.size], np.int32))
    longest = int(np.max(lengths))
    padded = np.zeros((longest,), np.uint8)
    padded[: blob.size] = blob
    allb = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(allb[i, : int(lengths[i][0])]).decode()) for i in range(allb.shape[0])]
