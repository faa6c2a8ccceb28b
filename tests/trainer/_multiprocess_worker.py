"""One process of a multi-process CPU run: ``python _multiprocess_worker.py RUN_DIR`` with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set (``trainer.mesh.maybe_initialize_distributed`` reads them) and the local
device count set through XLA_FLAGS. Trains a tiny spec on synthetic batches (each process feeds its own rows) and
prints one JSON line; process 0 saves the final parameters to RUN_DIR/final_params.npz."""

from __future__ import annotations

import json
import sys

from trainer.mesh import maybe_initialize_distributed

maybe_initialize_distributed()  # before anything else touches JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from trainer_helpers import make_spec  # noqa: E402

from trainer.loop import train  # noqa: E402
from trainer.synthetic import make_synthetic_source  # noqa: E402

SPEC = make_spec([dict(samples=8 * 4, batch_size=8, image_res=16, text_len=4, lr_base=0.02)],
                 checkpoint_every_steps=2, log_every_steps=1)


def main() -> None:
    result = train(SPEC, sys.argv[1], make_synthetic_source, progress=False)
    # The final parameters as host arrays (replicated, so every process holds all of them); process 0 saves them.
    leaves = jax.tree_util.tree_leaves_with_path(multihost_utils.process_allgather(result.params, tiled=True))
    if jax.process_index() == 0:
        np.savez(f"{sys.argv[1]}/final_params.npz",
                 **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "devices": jax.device_count(), "global_step": result.global_step}), flush=True)


if __name__ == "__main__":
    main()
