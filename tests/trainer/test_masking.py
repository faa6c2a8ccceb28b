"""Image-token masking: exact kept counts for every strategy and ratio, the strategies' shapes, and eval unmasked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planner.flops import kept_image_tokens
from planner.variants import decode_variant
from trainer.masking import keep_indices, rectangle, sample_keys
from trainer.embed import embed_images
from trainer.model import MaskConfig, ModelConfig, bind, init_params, mask_for_batch

GRIDS = (2, 3, 7, 8, 14)  # even and odd, tiny and ViT-sized (224/16)
RATIOS = (0.05, 0.25, 0.3, 0.5, 0.75, 0.95)


def _keys(n: int, seed: int = 0) -> jax.Array:
    return sample_keys(jax.random.PRNGKey(seed), jnp.arange(n))


@pytest.mark.parametrize("strategy", ["random", "grid", "block"])
def test_every_strategy_keeps_exactly_the_planners_count(strategy):
    combos = [(g, r) for g in GRIDS for r in RATIOS]
    # one program for all combinations: one compile instead of sixty
    out = jax.jit(lambda k: [keep_indices(strategy, g, r, k) for g, r in combos])(_keys(3))
    for (g, r), idx in zip(combos, out):
        idx = np.asarray(idx)
        k = kept_image_tokens(g * g, r)
        assert idx.shape == (3, k), (strategy, g, r)
        for row in idx:
            assert len(set(row.tolist())) == k, (strategy, g, r, row)  # no patch twice
            assert row.min() >= 0 and row.max() < g * g


def test_grid_at_075_keeps_one_patch_per_2x2_window():
    g = 8
    idx = np.asarray(keep_indices("grid", g, 0.75, _keys(16)))
    offsets = set()
    for row in idx:
        r, c = row // g, row % g
        windows = set(zip((r // 2).tolist(), (c // 2).tolist()))
        assert len(windows) == (g // 2) ** 2  # every window once
        offsets.add((int(r[0] % 2), int(c[0] % 2)))
        assert len(set(zip((r % 2).tolist(), (c % 2).tolist()))) == 1  # the same cell of every window
    assert len(offsets) > 1  # the cell is random per sample


def test_grid_is_a_regular_subgrid_when_the_count_factors():
    g = 8
    for ratio in (0.5, 0.75, 0.4375):  # keeps 32 (4x8), 16 (4x4), 36 (6x6)
        k = kept_image_tokens(g * g, ratio)
        a, b = rectangle(g, k)
        assert a * b == k
        row = np.asarray(keep_indices("grid", g, ratio, _keys(1)))[0]
        rows, cols = sorted(set((row // g).tolist())), sorted(set((row % g).tolist()))
        assert (len(rows), len(cols)) == (a, b)


def test_block_keeps_one_contiguous_block():
    g = 8
    for ratio in (0.5, 0.75, 0.3, 0.9):
        k = kept_image_tokens(g * g, ratio)
        a, b = rectangle(g, k)
        for row in np.asarray(keep_indices("block", g, ratio, _keys(8))):
            r, c = row // g, row % g
            assert r.max() - r.min() + 1 <= a and c.max() - c.min() + 1 <= b  # inside one a x b rectangle
            # one 4-connected region
            cells = set(zip(r.tolist(), c.tolist()))
            seen, todo = set(), [next(iter(cells))]
            while todo:
                y, x = todo.pop()
                if (y, x) in seen:
                    continue
                seen.add((y, x))
                todo += [n for n in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)) if n in cells]
            assert seen == cells


def test_random_masks_differ_per_sample_and_repeat_per_key():
    a = np.asarray(keep_indices("random", 8, 0.5, _keys(8, seed=3)))
    b = np.asarray(keep_indices("random", 8, 0.5, _keys(8, seed=3)))
    assert (a == b).all()
    assert len({tuple(r) for r in a.tolist()}) == 8


def test_a_samples_mask_depends_on_its_global_index_only():
    """Micro-batching and sharding must not change masks: key i is fold_in(step_key, i)."""
    key = jax.random.PRNGKey(5)
    whole = np.asarray(keep_indices("random", 4, 0.5, sample_keys(key, jnp.arange(8))))
    part = np.asarray(keep_indices("random", 4, 0.5, sample_keys(key, jnp.arange(4, 8))))
    assert (whole[4:] == part).all()


def test_evaluation_sees_all_tokens_and_training_only_the_kept():
    cfg = ModelConfig(variant=decode_variant("mu/8"), image_res=32, vocab_size=256, pool="tok")
    params = jax.jit(lambda k: init_params(cfg, k))(jax.random.PRNGKey(0))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mask = MaskConfig("random", 0.5)

    @jax.jit
    def run(p, x, keys):
        model = bind(cfg, p)
        keep = mask_for_batch(cfg, mask, keys)
        return (model.image.tokens(x).shape, model.image.tokens(x, keep).shape, model.encode_image(x),
                model.encode_image(x, keep))

    n_full, n_kept, full, masked = run(params, images, _keys(4))
    assert n_full == (4, 16 + 1, 32)  # 16 patches + class token
    assert n_kept == (4, 8 + 1, 32)
    # eval: no keys means no mask, whatever the stage's masking; embed_images never masks
    assert mask_for_batch(cfg, mask, None) is None
    np.testing.assert_allclose(embed_images((cfg, params), images), np.asarray(full), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(masked), np.asarray(full), atol=1e-4)
