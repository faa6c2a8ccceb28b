"""The contrastive (CLIP) loss over the global batch, with an explicit all-gather across the data axis.

Each device holds its slice of the batch's image and text embeddings. Inside ``shard_map`` it all-gathers the other
devices' embeddings (with gradient: the transpose of the all-gather is a reduce-scatter, so every embedding gets its
full gradient back on the device that computed it), computes its own rows of the image->text and text->image logits
against the whole batch, and the per-device cross-entropy sums are added with ``psum``. The result is the same number
as the single-device loss on the whole batch (the "local loss, gather with grad" of OpenCLIP and CLIPA's
``loss_use_global_batch``), and its gradients are the same, up to float summation order.

The loss is symmetric: mean over the batch of (CE(image -> its caption) + CE(caption -> its image)) / 2, in float32.
The same function runs on one device (the gather is a no-op), on a data-parallel mesh and under FSDP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from trainer.mesh import DATA_AXIS


def _local_rows_loss(img: jax.Array, txt: jax.Array, scale: jax.Array, all_img: jax.Array, all_txt: jax.Array,
                     offset: jax.Array | int) -> jax.Array:
    """Sum over this shard's rows of both cross-entropies; row i's positive is global column offset + i."""
    labels = offset + jnp.arange(img.shape[0])
    logits_i2t = scale * (img @ all_txt.T)  # [b, B]
    logits_t2i = scale * (txt @ all_img.T)  # [b, B]

    def ce(logits):
        lse = jax.nn.logsumexp(logits, axis=-1)
        pos = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        return jnp.sum(lse - pos)

    return ce(logits_i2t) + ce(logits_t2i)


def clip_loss_single(img: jax.Array, txt: jax.Array, scale: jax.Array) -> jax.Array:
    """The reference: the loss on one device over the whole batch (no mesh)."""
    img = img.astype(jnp.float32)
    txt = txt.astype(jnp.float32)
    return _local_rows_loss(img, txt, scale, img, txt, 0) / (2 * img.shape[0])


def clip_loss(img: jax.Array, txt: jax.Array, scale: jax.Array, mesh: Mesh) -> jax.Array:
    """Contrastive loss over the global batch. ``img``/``txt``: [B, E] (normalised, batch sharded over ``data``);
    ``scale``: the temperature exp(logit_scale), a replicated scalar. Returns a replicated float32 scalar."""
    batch = img.shape[0]

    def per_shard(img_s, txt_s, scale_s):
        img_s = img_s.astype(jnp.float32)
        txt_s = txt_s.astype(jnp.float32)
        all_img = jax.lax.all_gather(img_s, DATA_AXIS, tiled=True)
        all_txt = jax.lax.all_gather(txt_s, DATA_AXIS, tiled=True)
        offset = jax.lax.axis_index(DATA_AXIS) * img_s.shape[0]
        local = _local_rows_loss(img_s, txt_s, scale_s, all_img, all_txt, offset)
        return jax.lax.psum(local, DATA_AXIS) / (2 * batch)

    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(P(DATA_AXIS), P(DATA_AXIS), P()),
        out_specs=P(),
    )(img, txt, scale)
