"""The CLIP model (flax.nnx): ViT image tower, text transformer, projection heads, learnable temperature.

Owns the network and everything that turns a spec's variant and stage into one (``ModelConfig``), parameter
initialisation and position-embedding adaptation between stages (``adapt_params``). Elsewhere: the activation
layout the training step asks for (``trainer.mesh.activation_sharding``; the blocks call ``mesh.batch_sharded``), the
cache of compiled programs (``trainer.compiled``) and the batched embedding functions of evaluation
(``trainer.embed``).

* Image tower: uint8 images are normalised on device (CLIP mean/std), cut into patches, and the patches are embedded
  with a Dense layer on the flattened ``p*p*3`` pixels. A Dense (not a Conv) so that masked patches are dropped
  *before* the embedding (``trainer.masking`` picks which); position embeddings (sincos2d, or learned ones that
  ``adapt_params`` resamples bilinearly when the resolution changes) are gathered for the kept patches only. A class
  token, when the pooling uses one, is prepended after masking (as ``planner.flops`` counts it). Pre-LN blocks, a final
  LayerNorm, then global-average or class-token pooling.
* Text tower: token embedding (vocabulary from the tokenizer), learned positions up to the variant's ``max_text_len``,
  pre-LN blocks, causal or bidirectional per variant, pooled at the last token or at the EOT token.
* Heads: bias-free projections to ``embed_dim``, L2 normalisation, and a temperature ``logit_scale`` initialised to
  log(1/0.07) and clipped at log(100) where it is used.

Parameters are float32; matmuls run in the compute dtype (bf16 on accelerators, float32 on CPU by default); softmax,
normalisation and the embeddings that leave the model are float32. The whole model holds only ``nnx.Param`` state,
so the training code works on a plain nested dict of arrays (``nnx.merge(graphdef, params)`` inside jitted code).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from planner.errors import ClipaError
from planner.spec import ImageMask, RunSpec, Stage
from planner.variants import ModelVariant, decode_variant
from trainer import compiled, masking
from trainer.mesh import batch_sharded

# OpenAI CLIP's image statistics (also OpenCLIP's default); applied on device so the host only ships uint8.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)
LAYER_NORM_EPS = 1e-6
GELU_APPROXIMATE = True  # tanh-approximated GELU (jax.nn.gelu's default); exported models must say so

Params = dict[str, Any]


# --------------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------------


def resolve_compute_dtype(name: str) -> str:
    """'auto' -> bfloat16 on accelerators, float32 on CPU (bf16 is no faster there, feasibility.md section 4)."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the network for one stage (hashable: jitted functions are cached on it)."""

    variant: ModelVariant
    image_res: int
    vocab_size: int
    posemb: str = "sincos2d"  # or "learn"
    pool: str = "tok"  # "gap" or "tok"
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots
    eot_id: int | None = None  # text_pool "eot": pool where tokens == eot_id; None: at argmax(tokens) (CLIP BPE)

    @property
    def grid(self) -> int:
        return self.image_res // self.variant.patch

    @property
    def patches(self) -> int:
        return self.grid**2

    @classmethod
    def for_stage(
        cls, spec: RunSpec, stage: Stage | int, vocab_size: int | None = None, eot_id: int | None = None
    ) -> ModelConfig:
        st = spec.stages[stage] if isinstance(stage, int) else stage
        v = decode_variant(spec.model)
        check_resolution(v, st.image_res)
        pool = v.pool if spec.train.pool == "default" else spec.train.pool
        return cls(
            variant=v,
            image_res=st.image_res,
            vocab_size=int(vocab_size or v.vocab_size),
            posemb=spec.train.posemb,
            pool=pool,
            dtype=resolve_compute_dtype(spec.train.compute_dtype),
            remat=st.remat or spec.train.remat,  # the stage's own policy, else the run's
            eot_id=eot_id,
        )

    @property
    def param_signature(self) -> tuple:
        """What the parameter shapes and their initial values depend on: equal signatures, equal init (the image
        resolution matters only to learned position embeddings; dtype and remat never)."""
        grid = self.grid if self.posemb == "learn" else None
        return (self.variant, self.vocab_size, self.posemb, self.pool, grid)

    def with_resolution(self, image_res: int) -> ModelConfig:
        check_resolution(self.variant, image_res)
        return dataclasses.replace(self, image_res=image_res)


def check_resolution(v: ModelVariant, res: int, field: str = "image_res") -> None:
    """A ClipaError unless the image tower can take ``res`` x ``res`` inputs."""
    if res < v.patch or res % v.patch:
        raise ClipaError(field, f"resolution {res} is not a positive multiple of {v.name}'s patch size {v.patch}")
    if v.image.width % 4:
        raise ClipaError("model", f"{v.name}: image width {v.image.width} is not a multiple of 4 (sincos2d)")


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Training-time image masking of one stage (static: the kept-token count fixes the shapes)."""

    strategy: str = "none"
    ratio: float = 0.0

    @classmethod
    def for_stage(cls, stage: Stage) -> MaskConfig:
        if stage.image_mask == ImageMask.none:
            return cls()
        return cls(stage.image_mask.value, float(stage.mask_ratio))

    @property
    def active(self) -> bool:
        return self.strategy != "none" and self.ratio > 0


# --------------------------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------------------------

_xavier = nnx.initializers.xavier_uniform()
_small_normal = nnx.initializers.normal(stddev=1e-6)


def _dense(fan_in: int, fan_out: int, dtype, rngs: nnx.Rngs, use_bias: bool = True, kernel_init=_xavier) -> nnx.Linear:
    return nnx.Linear(
        fan_in,
        fan_out,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        bias_init=_small_normal,
        rngs=rngs,
    )


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # float32 normalisation whatever the compute dtype: cheap, and bf16 statistics drift.
    return nnx.LayerNorm(width, epsilon=LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention with one fused QKV projection (4 W^2 MACs per token with the output projection,
    the planner's count)."""

    def __init__(self, width: int, heads: int, causal: bool, dtype, rngs: nnx.Rngs):
        if width % heads:
            raise ClipaError("model", f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.causal = causal
        self.dtype = dtype
        self.qkv = _dense(width, 3 * width, dtype, rngs)
        self.out = _dense(width, width, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, w = x.shape
        h = self.heads
        qkv = batch_sharded(self.qkv(x).reshape(b, t, 3, h, w // h))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = q * jnp.asarray(1.0 / math.sqrt(w // h), q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if self.causal:
            allowed = jnp.tril(jnp.ones((t, t), dtype=bool))
            logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        weights = batch_sharded(jax.nn.softmax(batch_sharded(logits), axis=-1).astype(self.dtype))
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, w)
        return self.out(y)


class Block(nnx.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, mlp: int, heads: int, causal: bool, dtype, rngs: nnx.Rngs):
        self.ln1 = _layer_norm(width, rngs)
        self.attn = Attention(width, heads, causal, dtype, rngs)
        self.ln2 = _layer_norm(width, rngs)
        self.fc1 = _dense(width, mlp, dtype, rngs)
        self.fc2 = _dense(mlp, width, dtype, rngs)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x).astype(self.dtype))
        h = batch_sharded(self.fc1(self.ln2(x).astype(self.dtype)))
        h = batch_sharded(jax.nn.gelu(h, approximate=GELU_APPROXIMATE))
        return x + self.fc2(h)


_REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute the cheap elementwise work
}


def _run_blocks(blocks: list[Block], x: jax.Array, remat: str) -> jax.Array:
    x = batch_sharded(x)
    if remat == "none":
        for blk in blocks:
            x = batch_sharded(blk(x))
        return x
    if remat not in _REMAT_POLICIES:
        raise ClipaError("train.remat", f"unknown remat policy {remat!r}")
    call = nnx.remat(lambda blk, y: blk(y), policy=_REMAT_POLICIES[remat])
    for blk in blocks:
        x = batch_sharded(call(blk, x))
    return x


def posemb_sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """big_vision's fixed 2-D sin-cos position embedding, [grid*grid, width] in raster order (float32)."""
    y, x = np.mgrid[:grid, :grid]
    quarter = width // 4
    omega = np.arange(quarter) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega
    y = np.einsum("m,d->md", y.reshape(-1), omega)
    x = np.einsum("m,d->md", x.reshape(-1), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, R, R, C] -> [B, (R/p)^2, p*p*C] in raster order of the patch grid."""
    b, h, w, c = images.shape
    g_h, g_w = h // patch, w // patch
    x = images.reshape(b, g_h, patch, g_w, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g_h * g_w, patch * patch * c)


def normalize_images(images_uint8: jax.Array) -> jax.Array:
    x = images_uint8.astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)


# --------------------------------------------------------------------------------------------------------------------
# towers
# --------------------------------------------------------------------------------------------------------------------


class ImageTower(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.variant
        w = v.image.width
        dtype = jnp.dtype(cfg.dtype)
        self.patch = v.patch
        self.grid = cfg.grid
        self.width = w
        self.pool = cfg.pool
        self.posemb_kind = cfg.posemb
        self.remat = cfg.remat
        self.dtype = dtype
        self.embed = _dense(3 * v.patch**2, w, dtype, rngs, kernel_init=nnx.initializers.lecun_normal())
        if cfg.posemb == "learn":
            init = nnx.initializers.normal(stddev=1.0 / math.sqrt(w))
            self.posemb = nnx.Param(init(rngs.params(), (cfg.grid, cfg.grid, w), jnp.float32))
        elif cfg.posemb != "sincos2d":
            raise ClipaError("train.posemb", f"unknown position embedding {cfg.posemb!r}")
        if cfg.pool == "tok":
            self.cls = nnx.Param(jnp.zeros((1, 1, w), jnp.float32))
        elif cfg.pool != "gap":
            raise ClipaError("train.pool", f"unknown image pooling {cfg.pool!r}")
        self.blocks = nnx.List(
            [Block(w, v.image.mlp, v.image.heads, False, dtype, rngs) for _ in range(v.image.depth)]
        )
        self.norm = _layer_norm(w, rngs)

    def position_embedding(self) -> jax.Array:
        if self.posemb_kind == "learn":
            return self.posemb[...].reshape(self.grid * self.grid, self.width)
        return jnp.asarray(posemb_sincos_2d(self.grid, self.width))

    def tokens(self, images_uint8: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """The token sequence entering the blocks, [B, T, W]: all patches when ``keep`` is None, else ``keep``'s."""
        b, h, w, c = images_uint8.shape
        if h != w or h != self.grid * self.patch or c != 3:
            raise ClipaError(
                "images",
                f"expected [B, {self.grid * self.patch}, {self.grid * self.patch}, 3] images for this model, "
                f"got {list(images_uint8.shape)}",
            )
        patches = patchify(images_uint8, self.patch)  # [B, N, p*p*3] uint8
        pos = self.position_embedding()  # [N, W]
        if keep is not None:
            # Drop masked patches before anything is computed on them: only the kept ones are normalised and
            # embedded (planner.flops counts so).
            patches = jnp.take_along_axis(patches, keep[:, :, None], axis=1)
            pos = pos[keep]  # [B, K, W]
        # Per-pixel normalisation (the channel is the fastest axis of a flattened patch).
        x = normalize_images(patches.reshape(patches.shape[:2] + (self.patch * self.patch, 3)))
        x = self.embed(x.reshape(patches.shape).astype(self.dtype)) + pos.astype(self.dtype)
        if self.pool == "tok":
            x = jnp.concatenate([jnp.broadcast_to(self.cls[...].astype(self.dtype), (b, 1, self.width)), x], axis=1)
        return x

    def __call__(self, images_uint8: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        x = _run_blocks(list(self.blocks), self.tokens(images_uint8, keep), self.remat)
        x = self.norm(x)
        return x[:, 0] if self.pool == "tok" else x.mean(axis=1)


class TextTower(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.variant
        w = v.text.width
        dtype = jnp.dtype(cfg.dtype)
        self.max_len = v.max_text_len
        self.width = w
        self.text_pool = v.text_pool
        self.eot_id = cfg.eot_id
        self.remat = cfg.remat
        self.dtype = dtype
        self.token_embed = nnx.Embed(
            cfg.vocab_size, w, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(stddev=0.02), rngs=rngs,
        )
        self.posemb = nnx.Param(nnx.initializers.normal(stddev=0.01)(rngs.params(), (v.max_text_len, w), jnp.float32))
        self.blocks = nnx.List([Block(w, v.text.mlp, v.text.heads, v.text_causal, dtype, rngs) for _ in range(v.text.depth)])
        self.norm = _layer_norm(w, rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        b, t = tokens.shape
        if t > self.max_len:
            raise ClipaError("text_len", f"{t} tokens exceed the text tower's {self.max_len} positions")
        x = self.token_embed(tokens) + self.posemb[:t].astype(self.dtype)
        x = self.norm(_run_blocks(list(self.blocks), x, self.remat))
        if self.text_pool == "last":
            return x[:, -1]
        # EOT pooling: the EOT token's position (CLIP BPE: the highest id, hence argmax when no id is given).
        where = jnp.argmax(tokens == self.eot_id, axis=1) if self.eot_id is not None else jnp.argmax(tokens, axis=1)
        return x[jnp.arange(b), where]


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class CLIP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.variant
        dtype = jnp.dtype(cfg.dtype)
        self.image = ImageTower(cfg, rngs)
        self.text = TextTower(cfg, rngs)
        self.image_proj = _dense(v.image.width, v.embed_dim, dtype, rngs, use_bias=False)
        self.text_proj = _dense(v.text.width, v.embed_dim, dtype, rngs, use_bias=False)
        self.logit_scale = nnx.Param(jnp.asarray(LOGIT_SCALE_INIT, jnp.float32))
        self.dtype = dtype

    def encode_image(self, images_uint8: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """L2-normalised float32 image embeddings [B, E]; ``keep`` (training only) selects the kept patches."""
        return _l2_normalize(self.image_proj(self.image(images_uint8, keep).astype(self.dtype)))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return _l2_normalize(self.text_proj(self.text(tokens).astype(self.dtype)))

    def temperature(self) -> jax.Array:
        return temperature(self.logit_scale[...])


def temperature(logit_scale: jax.Array) -> jax.Array:
    """exp(logit_scale), with logit_scale clipped at log(100) (CLIP's cap); also for a bare parameter dict's
    ``logit_scale`` (the train step's loss)."""
    return jnp.exp(jnp.minimum(logit_scale, LOGIT_SCALE_MAX))


# --------------------------------------------------------------------------------------------------------------------
# functional API used by the training step and evaluation
# --------------------------------------------------------------------------------------------------------------------


def abstract_model(cfg: ModelConfig) -> CLIP:
    return nnx.eval_shape(lambda: CLIP(cfg, nnx.Rngs(0)))


def graphdef(cfg: ModelConfig):
    return nnx.split(abstract_model(cfg))[0]


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Freshly initialised parameters as a nested dict of float32 arrays (traceable: jit it with out_shardings)."""
    model = CLIP(cfg, nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def initialize(cfg: ModelConfig, key: jax.Array | int = 0, out_shardings=None, cache_key: tuple = ()) -> Params:
    """``init_params`` jitted (with ``out_shardings``, when given), compiled once per parameter signature."""
    if isinstance(key, int):
        key = jax.random.PRNGKey(key)
    init = compiled.cached(("init", cfg.param_signature, cache_key),
                           lambda: jax.jit(lambda rng: init_params(cfg, rng), out_shardings=out_shardings))
    return init(key)


def bind(cfg: ModelConfig, params: Params) -> CLIP:
    """The module for ``params`` (inside or outside jit)."""
    return nnx.merge(graphdef(cfg), params)


def abstract_params(cfg: ModelConfig) -> Params:
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def param_count(params: Params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def mask_for_batch(cfg: ModelConfig, mask: MaskConfig, keys: jax.Array | None) -> jax.Array | None:
    """Kept-patch indices for a training batch, or None (all tokens) when the stage does not mask or at eval."""
    if keys is None or not mask.active:
        return None
    return masking.keep_indices(mask.strategy, cfg.grid, mask.ratio, keys)


def forward(cfg: ModelConfig, params: Params, images: jax.Array, tokens: jax.Array, keep: jax.Array | None = None):
    """(image embeddings, text embeddings, temperature) for a batch; pure function of ``params``."""
    model = bind(cfg, params)
    return model.encode_image(images, keep), model.encode_text(tokens), model.temperature()


def adapt_params(params: Params, src: ModelConfig, dst: ModelConfig) -> Params:
    """Parameters of a model built for ``src`` carried over to ``dst`` (the next stage's resolution).

    Only learned image position embeddings depend on the resolution; they are resampled bilinearly (antialiased when
    shrinking). sincos2d embeddings are recomputed for the new grid by the model itself.
    """
    if (src.variant, src.vocab_size, src.pool, src.posemb) != (dst.variant, dst.vocab_size, dst.pool, dst.posemb):
        raise ClipaError(
            "init",
            f"cannot carry weights from {src.variant.name} (vocab {src.vocab_size}, pool {src.pool}, posemb "
            f"{src.posemb}) to {dst.variant.name} (vocab {dst.vocab_size}, pool {dst.pool}, posemb {dst.posemb})",
        )
    out = jax.tree.map(lambda x: x, params)  # a new container tree; arrays are shared, not copied
    if dst.posemb == "learn" and src.grid != dst.grid:
        pe = params["image"]["posemb"]
        out["image"]["posemb"] = jax.image.resize(
            jnp.asarray(pe, jnp.float32), (dst.grid, dst.grid, pe.shape[-1]), method="bilinear", antialias=True
        )
    return out
