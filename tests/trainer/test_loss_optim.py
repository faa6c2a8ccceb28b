"""Contrastive loss, exact gradient accumulation, and the optimiser's schedule and weight-decay mask."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer_helpers import make_spec

from planner.variants import decode_variant
from trainer.losses import clip_loss, clip_loss_single
from trainer.loop import loss_and_grads
from trainer.mesh import make_mesh
from trainer.model import MaskConfig, ModelConfig, abstract_params, initialize
from trainer.optim import decay_mask, lr_schedule, make_optimizer
from trainer.synthetic import SyntheticSource


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_contrastive_loss_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(8, 16))), _unit(rng.normal(size=(8, 16)))
    scale = 14.0
    logits = scale * img @ txt.T

    def ce(lg):
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        return np.mean(lse - np.diag(lg))

    want = 0.5 * (ce(logits) + ce(logits.T))
    mesh = make_mesh(jax.devices()[:1])
    args = (jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), jnp.asarray(scale))
    assert float(clip_loss_single(*args)) == pytest.approx(want, rel=1e-5)
    assert float(jax.jit(lambda *a: clip_loss(*a, mesh))(*args)) == pytest.approx(want, rel=1e-5)
    # matched pairs at a high temperature: the loss goes to zero
    assert float(clip_loss_single(args[0], args[0], jnp.asarray(100.0))) < 1e-3


def test_accumulating_four_micro_batches_equals_the_full_batch():
    """GradCache accumulation (trainer.loop docstring): same loss and gradients as one 16-sample batch, masks
    included, up to float summation order (rtol 1e-5 per element, atol 1e-6 of each array's largest gradient)."""
    spec = make_spec([dict(batch_size=16, image_mask="random", mask_ratio=0.5)], micro_batch=4)
    src = SyntheticSource(spec, 0)
    cfg = ModelConfig.for_stage(spec, 0, src.vocab_size, src.eot_id)
    mask = MaskConfig.for_stage(spec.stages[0])
    mesh = make_mesh(jax.devices()[:1])
    params = initialize(cfg, 0)
    batch = src.next_batch()
    key = jax.random.PRNGKey(11)
    full = jax.device_get(jax.jit(lambda p, b: loss_and_grads(cfg, mask, mesh, p, b, key, 1))(params, batch))
    acc = jax.device_get(jax.jit(lambda p, b: loss_and_grads(cfg, mask, mesh, p, b, key, 4))(params, batch))
    assert acc[0] == pytest.approx(full[0], rel=1e-6)
    worst = 0.0
    for a, b in zip(jax.tree.leaves(acc[1]), jax.tree.leaves(full[1])):
        scale = float(np.max(np.abs(b)))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale + 1e-12)
        worst = max(worst, float(np.max(np.abs(a - b))) / (scale + 1e-30))
    assert worst < 1e-5  # the largest difference, relative to the array's largest gradient


def test_weight_decay_applies_to_dense_kernels_only():
    cfg = ModelConfig(variant=decode_variant("mu/8"), image_res=16, vocab_size=256, posemb="learn", pool="tok")
    mask = decay_mask(abstract_params(cfg))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    decayed = {k for k, v in flat.items() if v}
    assert decayed and all(k.endswith("['kernel']") for k in decayed)
    for never in ("['logit_scale']", "['image']['posemb']", "['image']['cls']", "['text']['posemb']",
                  "['text']['token_embed']['embedding']", "['image']['embed']['bias']",
                  "['image']['norm']['scale']", "['text']['blocks'][0]['ln1']['bias']"):
        assert flat[never] is False, never
    assert flat["['image']['blocks'][0]['attn']['qkv']['kernel']"] is True


def test_schedule_scales_with_batch_warms_up_linearly_and_decays_to_zero():
    spec = make_spec([dict(samples=16 * 100, batch_size=16, lr_base=8e-4, warmup_samples=16 * 10)])
    st = spec.stages[0]
    sched = lr_schedule(st)
    peak = 8e-4 * 16 / 256
    assert st.lr == pytest.approx(peak)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(peak / 2, rel=1e-6)
    assert float(sched(10)) == pytest.approx(peak, rel=1e-6)
    assert float(sched(55)) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 45 / 90)), rel=1e-5)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-12)
    lrs = [float(sched(s)) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # cosine only goes down


def test_adamw_uses_the_spec_betas_and_decay():
    spec = make_spec([dict()], b1=0.8, b2=0.9, weight_decay=0.5)
    tx, _ = make_optimizer(spec.stages[0], spec.train)
    p = {"w": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.ones((2,))}}
    state = tx.init(p)
    zero = jax.tree.map(jnp.zeros_like, p)
    # No warm-up, so the first step runs at the peak lr; with zero gradients the Adam part is zero and only the
    # decoupled decay (-lr * wd * p) is left, on the kernel and not on the bias.
    updates, _ = tx.update(zero, state, p)
    lr = spec.stages[0].lr
    np.testing.assert_allclose(updates["w"]["kernel"], -lr * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["b"]["bias"], 0.0)
