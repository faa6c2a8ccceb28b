"""The optimiser of a stage: AdamW with decoupled weight decay, linear warm-up then cosine decay to zero.

* Peak learning rate ``stage.lr`` = ``lr_base * batch / 256`` (CLIPA's scaling rule, planner.spec).
* Warm-up: ``ceil(warmup_samples / batch)`` steps, linear from 0; then cosine to 0 at the stage's last step.
* AdamW as optax (and torch) define it: the decay is multiplied by the scheduled learning rate,
  ``p <- p - lr_t * (adam_update + wd * p)``, which is what the CLIPA torch scripts' ``--wd 0.2`` means.
* Decay applies to the matrices of the Dense layers only (params named ``kernel``: patch embedding, attention, MLP,
  projections). It does not apply to biases, LayerNorm scales and offsets, position embeddings, the class token, the
  token embedding table or the temperature.

Each stage gets a fresh optimiser and schedule (the loop calls ``make_optimizer`` per stage).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from planner.spec import Stage, TrainOptions


def warmup_steps(stage: Stage) -> int:
    return -(-stage.warmup_samples // stage.batch_size)


def lr_schedule(stage: Stage) -> Callable[[jax.Array | int], jax.Array]:
    peak = stage.lr
    warm = warmup_steps(stage)
    total = stage.steps
    decay = max(1, total - warm)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = peak * step / max(warm, 1)
        cos_lr = 0.5 * peak * (1.0 + jnp.cos(math.pi * jnp.clip((step - warm) / decay, 0.0, 1.0)))
        return jnp.where(step < warm, warm_lr, cos_lr)

    return schedule


def decay_mask(params):
    """True where decoupled weight decay applies: Dense kernels only (see module docstring)."""

    def one(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name == "kernel"

    return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(stage: Stage, opts: TrainOptions) -> tuple[optax.GradientTransformation, Callable]:
    schedule = lr_schedule(stage)
    tx = optax.adamw(
        learning_rate=schedule,
        b1=opts.b1,
        b2=opts.b2,
        eps=1e-8,
        weight_decay=opts.weight_decay,
        mask=decay_mask,
    )
    return tx, schedule
