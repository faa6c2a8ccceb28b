"""The CLIP model: architecture against the variant table, position-embedding adaptation, temperature, pooling,
embedding functions, remat and compute dtype."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer_helpers import make_spec

from planner.errors import ClipaError
from planner.variants import decode_variant, image_params, text_params
from trainer.loop import loss_and_grads
from trainer.mesh import make_mesh
from trainer.embed import embed_images, embed_texts
from trainer.model import (
    LOGIT_SCALE_INIT,
    MaskConfig,
    ModelConfig,
    abstract_params,
    adapt_params,
    bind,
    check_resolution,
    initialize,
    param_count,
)

MU = decode_variant("mu/8")


@pytest.fixture(scope="module")
def mu():
    cfg = ModelConfig(variant=MU, image_res=16, vocab_size=256, pool="tok")
    return cfg, initialize(cfg, 0)


@pytest.mark.parametrize("name,pool", [("mu/8", "tok"), ("mini/16", "gap"), ("xs/8", "tok"), ("Ti/16", "gap")])
def test_parameter_counts_follow_the_variant_table(name, pool):
    """Same blocks, text tower and heads as planner.variants' (OpenCLIP's) count; the image tower differs by design:
    no LayerNorm before the blocks (-2w), a bias on the patch embedding (+w), no position for the class token (-w),
    and with GAP no class token (-w)."""
    v = decode_variant(name)
    w = v.image.width
    cfg = ModelConfig(variant=v, image_res=4 * v.patch, vocab_size=v.vocab_size, posemb="learn", pool=pool)
    ap = abstract_params(cfg)
    img = param_count(ap["image"]) + param_count(ap["image_proj"])
    txt = param_count(ap["text"]) + param_count(ap["text_proj"])
    assert txt == text_params(v)
    assert img == image_params(v, cfg.image_res) - 2 * w - (w if pool == "gap" else 0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ap))


def test_learned_position_embeddings_are_resampled_for_a_new_resolution():
    src = ModelConfig(variant=MU, image_res=16, vocab_size=256, posemb="learn")
    dst = src.with_resolution(32)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), abstract_params(src))
    params["image"]["posemb"] = np.full((2, 2, MU.image.width), 0.25, np.float32)
    out = adapt_params(params, src, dst)
    assert out["image"]["posemb"].shape == (4, 4, MU.image.width)
    np.testing.assert_allclose(out["image"]["posemb"], 0.25, rtol=1e-6)  # bilinear keeps a constant field
    np.testing.assert_array_equal(out["text"]["posemb"], params["text"]["posemb"])  # nothing else changes
    assert jax.tree.structure(out) == jax.tree.structure(abstract_params(dst))
    with pytest.raises(ClipaError, match="cannot carry weights"):
        adapt_params(params, src, ModelConfig(variant=MU, image_res=32, vocab_size=128, posemb="learn"))


def test_temperature_starts_at_1_over_007_and_is_capped_at_100(mu):
    cfg, params = mu
    assert float(params["logit_scale"]) == pytest.approx(LOGIT_SCALE_INIT)
    assert float(bind(cfg, params).temperature()) == pytest.approx(1 / 0.07, rel=1e-5)
    hot = {**params, "logit_scale": jnp.asarray(10.0)}
    assert float(bind(cfg, hot).temperature()) == pytest.approx(100.0, rel=1e-5)


def test_embeddings_are_unit_vectors_and_batching_does_not_change_them(mu):
    cfg, params = mu
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    tokens = rng.integers(1, 255, (5, 4)).astype(np.int32)
    img = embed_images((cfg, params), images, batch_size=5)
    txt = embed_texts((cfg, params), tokens, batch_size=5)
    assert img.shape == (5, MU.embed_dim) and txt.shape == (5, MU.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    # chunks of 2 (the last one padded to the compiled shape) give the same embeddings
    np.testing.assert_allclose(embed_texts((cfg, params), tokens, batch_size=2), txt, rtol=1e-5, atol=1e-6)


def test_eot_pooling_with_a_causal_tower_ignores_padding_after_the_end_token():
    v = decode_variant("mu/8", convention="openclip")
    assert v.text_causal and v.text_pool == "eot"
    cfg = ModelConfig(variant=v, image_res=16, vocab_size=64, pool="tok", eot_id=63)
    rng = np.random.default_rng(1)  # random weights without compiling an initialiser
    params = jax.tree.map(lambda a: (0.1 * rng.normal(size=a.shape)).astype(a.dtype), abstract_params(cfg))
    a = np.array([[5, 6, 63, 0, 0, 0], [7, 63, 0, 0, 0, 0]], np.int32)
    b = a.copy()
    b[0, 3:] = [9, 10, 11]  # different tokens after the end token
    b[1, 2:] = [12, 13, 14, 15]
    np.testing.assert_allclose(embed_texts((cfg, params), a), embed_texts((cfg, params), b), rtol=1e-5, atol=1e-6)


def test_resolutions_the_image_tower_cannot_take_are_refused(mu):
    cfg, params = mu
    with pytest.raises(ClipaError, match="multiple of mu/8's patch size 8"):
        check_resolution(MU, 20)
    with pytest.raises(ClipaError, match="patch size"):
        embed_images((cfg, params), np.zeros((2, 12, 12, 3), np.uint8))
    with pytest.raises(ClipaError, match="uint8"):
        embed_images((cfg, params), np.zeros((2, 16, 16, 3), np.float32))


@pytest.mark.slow  # three gradient compiles (~20 s on two shared cores)
def test_remat_policies_give_the_same_loss_and_gradients():
    spec = make_spec([dict(image_mask="random", mask_ratio=0.5)])
    mesh = make_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch = {"images": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
             "tokens": rng.integers(1, 255, (8, 4)).astype(np.int32)}
    out = {}
    for remat in ("none", "full", "dots"):
        cfg = ModelConfig(variant=MU, image_res=16, vocab_size=256, pool="tok", remat=remat)
        params = initialize(cfg, 0)
        fn = jax.jit(lambda p, b, k, cfg=cfg: loss_and_grads(cfg, MaskConfig.for_stage(spec.stages[0]), mesh, p, b, k))
        out[remat] = jax.device_get(fn(params, batch, jax.random.PRNGKey(3)))
    for remat in ("full", "dots"):
        assert out[remat][0] == pytest.approx(out["none"][0], rel=1e-6)
        for a, b in zip(jax.tree.leaves(out[remat][1]), jax.tree.leaves(out["none"][1])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(b))) + 1e-12)


def test_bf16_compute_keeps_float32_parameters_and_outputs(mu):
    cfg32, params = mu
    cfg16 = ModelConfig(variant=MU, image_res=16, vocab_size=256, pool="tok", dtype="bfloat16")
    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    e16 = embed_images((cfg16, params), images)
    e32 = embed_images((cfg32, params), images)
    assert e16.dtype == np.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    cos = np.sum(e16 * e32, axis=1)
    assert np.all(cos > 0.99), cos  # same model, bf16 rounding only
    assert not math.isclose(float(np.abs(e16 - e32).max()), 0.0)  # and bf16 really was used
