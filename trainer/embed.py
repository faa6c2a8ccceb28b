"""Embedding for evaluation: a trained model (configuration + parameters) turned into batched, jitted
``embed_images`` / ``embed_texts`` functions over numpy arrays, the callables ``trainer.data.zeroshot`` works on.

Inputs are cut into fixed-size batches (a short tail padded) so that a call compiles each shape once
(``trainer.compiled``); images at another resolution than the model's are embedded by a copy of the model adapted to
it (``model.adapt_params``). No masking: evaluation sees every token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from planner.errors import ClipaError
from trainer import compiled
from trainer.model import CLIP, ModelConfig, Params, adapt_params, bind


@dataclasses.dataclass
class TrainedModel:
    """A model configuration with its parameters: what ``embed_images`` / ``embed_texts`` and eval work on."""

    cfg: ModelConfig
    params: Params


def _embed_fn(cfg: ModelConfig, kind: str) -> Callable:
    if kind == "image":
        return compiled.cached(("embed", cfg, kind), lambda: jax.jit(lambda p, x: bind(cfg, p).encode_image(x)))
    return compiled.cached(("embed", cfg, kind), lambda: jax.jit(lambda p, x: bind(cfg, p).encode_text(x)))


def _as_trained(model_or_state: TrainedModel | CLIP | tuple) -> TrainedModel:
    if isinstance(model_or_state, TrainedModel):
        return model_or_state
    if isinstance(model_or_state, tuple) and len(model_or_state) == 2:
        return TrainedModel(*model_or_state)
    raise TypeError("expected a TrainedModel (trainer.checkpoint.load_trained) or a (ModelConfig, params) pair")


def _batched(fn, params, x: np.ndarray, batch: int) -> np.ndarray:
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        # pad to the batch size (or, for short inputs, the next power of two) so that a short tail or a
        # different-sized call reuses a compiled shape instead of compiling another one
        size = batch if len(x) > batch else min(batch, 1 << max(n - 1, 0).bit_length())
        if n < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
        outs.append(np.asarray(fn(params, chunk))[:n])
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def embed_images(model_or_state, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2-normalised image embeddings [N, E] (float32) for uint8 images [N, R, R, 3]; all tokens (no masking).

    ``model_or_state``: a ``CLIP`` module, a ``TrainedModel`` or a ``(ModelConfig, params)`` pair.
    """
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
        raise ClipaError("images", f"expected uint8 [N, R, R, 3] images, got {images_uint8.dtype} {images_uint8.shape}")
    if isinstance(model_or_state, CLIP):
        return np.asarray(model_or_state.encode_image(jnp.asarray(images_uint8)))
    tm = _as_trained(model_or_state)
    res = images_uint8.shape[1]
    cfg = tm.cfg
    params = tm.params
    if res != cfg.image_res:  # evaluate at the data's resolution (e.g. a fine-tune at 224 evaluated at 224)
        dst = cfg.with_resolution(res)
        params, cfg = adapt_params(params, cfg, dst), dst
    return _batched(_embed_fn(cfg, "image"), params, images_uint8, batch_size)


def embed_texts(model_or_state, tokens: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """L2-normalised text embeddings [N, E] (float32) for int32 token ids [N, L]."""
    tokens = np.asarray(tokens, dtype=np.int32)
    if tokens.ndim != 2:
        raise ClipaError("tokens", f"expected int32 [N, L] token ids, got shape {tokens.shape}")
    if isinstance(model_or_state, CLIP):
        return np.asarray(model_or_state.encode_text(jnp.asarray(tokens)))
    tm = _as_trained(model_or_state)
    return _batched(_embed_fn(tm.cfg, "text"), tm.params, tokens, batch_size)
