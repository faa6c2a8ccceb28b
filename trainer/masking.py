"""Image-token masking: which patches of a square ``grid x grid`` patch grid a training sample keeps.

Owns the three strategies of ``planner.spec.ImageMask`` (random, grid, block). Every strategy keeps exactly
``planner.flops.kept_image_tokens(patches, ratio)`` patches, so the planner's FLOP count and the trainer's work are the
same number. The model gathers the kept patches *before* the patch embedding (``trainer.model``), so masked patches
cost nothing. Masking is a training-time operation only: evaluation always passes ``keep=None`` (all tokens).

Randomness is per sample: each sample's key is derived from the step key and the sample's *global* index in the batch
(``sample_keys``), so the mask a sample gets does not depend on how the batch is split over devices or micro-batches.

Layouts for ``grid`` and ``block`` need a rectangle of ``a x b`` patches holding the ``K`` kept ones. When ``K`` factors
into a near-square ``a x b`` that fits the grid, that rectangle is used as is (e.g. ratio 0.75 on an even grid keeps
``(g/2) x (g/2)``: one patch per 2x2 window). Otherwise (e.g. ``K`` prime) the smallest near-square rectangle with
``a * b >= K`` is used and the surplus ``a * b - K`` points are dropped: evenly spread for ``grid`` (so the sub-grid stays
as regular as ``K`` allows), the last ones in raster order for ``block`` (so the block stays one contiguous region).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from planner.flops import kept_image_tokens
from planner.spec import ImageMask

STRATEGIES = ("random", "grid", "block")


def num_kept(grid: int, ratio: float) -> int:
    """Patches a masked sample keeps (the planner's number)."""
    return kept_image_tokens(grid * grid, ratio)


@functools.lru_cache(maxsize=256)
def rectangle(grid: int, kept: int) -> tuple[int, int]:
    """Rows x cols of the rectangle that holds ``kept`` patches on a ``grid x grid`` grid (see module docstring)."""
    if not 1 <= kept <= grid * grid:
        raise ValueError(f"cannot keep {kept} of {grid * grid} patches")
    best = None
    for a in range(1, grid + 1):
        if kept % a == 0 and kept // a <= grid:
            b = kept // a
            aspect = max(a, b) / min(a, b)
            if best is None or aspect < best[0]:
                best = (aspect, a, b)
    if best is not None and best[0] <= 2.0:
        return best[1], best[2]
    a = min(grid, math.ceil(math.sqrt(kept)))
    b = math.ceil(kept / a)
    return a, b


@functools.lru_cache(maxsize=256)
def _grid_selection(grid: int, kept: int) -> np.ndarray:
    """Which of the a*b rectangle points a grid mask keeps: ``kept`` of them, evenly spread (floor(i*ab/K) is strictly
    increasing because ab >= K)."""
    a, b = rectangle(grid, kept)
    n = a * b
    return np.array([(i * n) // kept for i in range(kept)], dtype=np.int32)


# One uniform draw per sample (cheap to compile: each extra random call adds a threefry hash to the program).
def _random_keep(key: jax.Array, grid: int, kept: int) -> jax.Array:
    n = grid * grid
    # The K patches with the smallest uniform scores: a uniform K-subset. Sorted so tokens stay in raster order
    # (cheaper gathers, easier debugging); order does not matter to the model, positions are added per token.
    _, idx = jax.lax.top_k(-jax.random.uniform(key, (n,)), kept)
    return jnp.sort(idx).astype(jnp.int32)


def _offsets(key: jax.Array, high_r: int, high_c: int) -> tuple[jax.Array, jax.Array]:
    """Two independent uniform integers in [0, high_r) and [0, high_c)."""
    u = jax.random.uniform(key, (2,))
    off_r = jnp.minimum(jnp.floor(u[0] * high_r).astype(jnp.int32), high_r - 1)
    off_c = jnp.minimum(jnp.floor(u[1] * high_c).astype(jnp.int32), high_c - 1)
    return off_r, off_c


def _grid_keep(key: jax.Array, grid: int, kept: int) -> jax.Array:
    a, b = rectangle(grid, kept)
    # Row i of the sub-grid sits in the band [floor(i*g/a), floor((i+1)*g/a)); a random offset below the narrowest band
    # width floor(g/a) moves the whole sub-grid without leaving any band (so at ratio 0.75 the kept patch is the same
    # random cell of every 2x2 window).
    off_r, off_c = _offsets(key, grid // a, grid // b)
    rows = jnp.asarray([(i * grid) // a for i in range(a)], jnp.int32) + off_r
    cols = jnp.asarray([(j * grid) // b for j in range(b)], jnp.int32) + off_c
    idx = (rows[:, None] * grid + cols[None, :]).reshape(-1)
    return idx[jnp.asarray(_grid_selection(grid, kept))].astype(jnp.int32)


def _block_keep(key: jax.Array, grid: int, kept: int) -> jax.Array:
    a, b = rectangle(grid, kept)
    r0, c0 = _offsets(key, grid - a + 1, grid - b + 1)
    rows = r0 + jnp.arange(a, dtype=jnp.int32)
    cols = c0 + jnp.arange(b, dtype=jnp.int32)
    return (rows[:, None] * grid + cols[None, :]).reshape(-1)[:kept].astype(jnp.int32)


_KEEP = {"random": _random_keep, "grid": _grid_keep, "block": _block_keep}


def keep_indices(strategy: str | ImageMask, grid: int, ratio: float, keys: jax.Array) -> jax.Array:
    """Kept patch indices (raster order on the ``grid x grid`` grid), int32 ``[B, K]``, one row per key in ``keys``.

    ``keys`` are per-sample PRNG keys, shape ``[B, 2]`` (uint32, from ``sample_keys``).
    """
    name = strategy.value if isinstance(strategy, ImageMask) else str(strategy)
    if name not in _KEEP:
        raise ValueError(f"unknown image mask {name!r} (known: {', '.join(STRATEGIES)})")
    kept = num_kept(grid, ratio)
    return jax.vmap(lambda k: _KEEP[name](k, grid, kept))(keys)


def sample_keys(step_key: jax.Array, global_indices: jax.Array) -> jax.Array:
    """One PRNG key per sample from the step key and each sample's global index in the batch."""
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(global_indices)
