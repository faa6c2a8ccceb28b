"""open_clip interchange: a run's weights as an open_clip model folder (``clipa export``), and such a folder as the
starting point of a stage (``init: checkpoint:open_clip:DIR``).

An exported folder is what ``open_clip.create_model("local-dir:DIR")`` reads:

* ``open_clip_config.json``: ``model_cfg`` in open_clip's own keys (widths, depths, heads, patch, pooling, LayerNorm
  placement and eps, tanh GELU, causal mask or not, vocabulary, context length, embed dim), ``preprocess_cfg`` (our
  image mean/std), and a ``clipa`` block (``ClipaModelInfo``) with what open_clip has no key for;
* ``open_clip_model.safetensors``: open_clip's state-dict names and layouts (fused ``in_proj`` weights transposed to
  torch's [out, in], the patch Dense as a bias-free Conv2d kernel, a class-token row in the position embeddings);
* ``clipa_extra.safetensors``: the few of our tensors that open_clip folds into others (see below), so that export
  then import gives bitwise-equal parameters; open_clip ignores the file;
* the run's tokenizer (when it has one) as ``tokenizer.json`` + ``tokenizer_config.json``, which
  ``open_clip.get_tokenizer("local-dir:DIR")`` loads through transformers (``write_hf_tokenizer``), and ``README.md``
  with the load snippet.

The mapping is exact, not approximate: every option of ours maps to an open_clip option computing the same function,
or the export is refused with one line naming the option (``export_blockers``). Two of our tensors have no own slot
in open_clip and are folded: the patch-embedding bias goes into the image position embeddings (open_clip's conv has no
bias; ``x W + b + pos == x W + (pos + b)``), and fixed sincos2d position embeddings are written as open_clip's
learnable ones with the same values. Our text tower has ``max_text_len`` positions but its pooling (``last``) and
bidirectional attention depend on the sequence length it was trained at, so the context length exported is the last
stage's ``text_len`` and only those rows go to open_clip; the full table rides in ``clipa_extra.safetensors``.

Import reads any open_clip ViT CLIP folder whose architecture ours can express (the same check, run on the folder's
config): class token, no ln_pre, LayerNorm before pooling, eps 1e-6, tanh GELU, no layer scale. Other open_clip
models are refused with the first option that differs. The extra file is used only when it still agrees bit for bit
with the open_clip weights (a folder fine-tuned in open_clip afterwards is read from its open_clip weights alone).
Learned position embeddings are then resampled to the stage's resolution exactly as between our own stages
(``trainer.model.adapt_params``).

This module needs numpy and safetensors only (no torch); JAX is imported where resampling needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from planner.errors import ClipaError
from planner.variants import ModelVariant

FORMAT = "open_clip"
INIT_PREFIX = "checkpoint:open_clip:"  # a stage's ``init`` that starts from an open_clip folder
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
EXTRA_FILE = "clipa_extra.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
README_FILE = "README.md"

Params = dict[str, Any]


class ClipaModelInfo(BaseModel):
    """What an export records about our model beyond open_clip's config (the ``clipa`` block of the config file)."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    image_res: int
    vocab_size: int
    posemb: Literal["sincos2d", "learn"]
    pool: Literal["tok", "gap"]
    eot_id: int | None
    text_len: int
    run_id: str | None = None
    global_step: int | None = None


# --------------------------------------------------------------------------------------------------------------------
# architecture: our configuration <-> open_clip's model_cfg
# --------------------------------------------------------------------------------------------------------------------

# open_clip's defaults (CLIPVisionCfg / CLIPTextCfg / CLIP, open_clip 3.x) for every key that changes the function.
# An imported config must agree with what we would export on each of them (missing keys take these values).
_VISION_DEFAULTS: dict[str, Any] = {
    "layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "ls_init_value": None,
    "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False,
    "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
    "scale_fc": False, "timm_model_name": None,
}
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0, "ls_init_value": None,
    "embed_cls": False, "pad_id": 0, "eos_id": 2, "no_causal_mask": False, "final_ln_after_pool": False,
    "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "hf_model_name": None, "use_pad_mask": False,
}
_TOP_DEFAULTS: dict[str, Any] = {"quick_gelu": False, "init_logit_bias": None, "custom_text": False}
# keys that do not change the function: sizes we read from the tensors, tokenizer and training-only settings
_NEUTRAL = {"image_size", "context_length", "patch_dropout", "hf_tokenizer_name", "tokenizer_mode",
            "tokenizer_kwargs", "output_tokens", "init_logit_scale", "cast_dtype", "hf_model_pretrained",
            "timm_model_pretrained"}


def _mlp_ratio(width: int, mlp: int, field: str) -> float:
    ratio = mlp / width
    if int(width * ratio) != mlp:  # open_clip builds the MLP with int(width * mlp_ratio) units
        raise ClipaError(field, f"MLP width {mlp} is not int({width} x mlp_ratio) for any float ratio open_clip uses")
    return ratio


def export_blockers(cfg) -> list[str]:
    """Why open_clip cannot compute this model exactly (empty when it can): one line per option."""
    from trainer.model import GELU_APPROXIMATE, LAYER_NORM_EPS

    v: ModelVariant = cfg.variant
    out = []
    if cfg.pool != "tok":
        out.append(f"train.pool: image pooling {cfg.pool!r} has no class token, and open_clip's VisionTransformer "
                   "always attends over one (train with train.pool: tok to export)")
    for tower, shape in (("image", v.image), ("text", v.text)):
        if shape.width % shape.heads:
            out.append(f"model: {tower} width {shape.width} is not divisible by {shape.heads} heads")
        try:
            _mlp_ratio(shape.width, shape.mlp, "model")
        except ClipaError as e:
            out.append(f"model: {tower} {e.message}")
    if not GELU_APPROXIMATE or LAYER_NORM_EPS <= 0:
        out.append("model: activation/normalisation differ from what this exporter writes")
    return out


def model_cfg_for(cfg, text_len: int) -> dict[str, Any]:
    """open_clip's ``model_cfg`` for our model at ``cfg.image_res`` with context length ``text_len``."""
    from trainer.model import LAYER_NORM_EPS

    blockers = export_blockers(cfg)
    if blockers:
        field, _, message = blockers[0].partition(": ")
        raise ClipaError(field, f"cannot export to open_clip: {message}")
    v: ModelVariant = cfg.variant
    act = {"approximate": "tanh"}
    norm = {"eps": LAYER_NORM_EPS}
    vision = {
        "image_size": cfg.image_res, "layers": v.image.depth, "width": v.image.width,
        "head_width": v.image.width // v.image.heads, "mlp_ratio": _mlp_ratio(v.image.width, v.image.mlp, "model"),
        "patch_size": v.patch, "no_ln_pre": True, "pool_type": "tok", "final_ln_after_pool": False,
        "pos_embed_type": "learnable", "act_kwargs": act, "norm_kwargs": norm,
    }
    text = {
        "context_length": text_len, "vocab_size": cfg.vocab_size, "width": v.text.width, "heads": v.text.heads,
        "layers": v.text.depth, "mlp_ratio": _mlp_ratio(v.text.width, v.text.mlp, "model"),
        "no_causal_mask": not v.text_causal, "pad_id": 0, "act_kwargs": act, "norm_kwargs": norm,
    }
    if v.text_pool == "last":
        text["pool_type"] = "last"
    elif cfg.eot_id is not None:
        text.update(pool_type="eos", eos_id=int(cfg.eot_id))
    else:
        text["pool_type"] = "argmax"  # our EOT pooling without an id is argmax(tokens), as CLIP's
    return {"embed_dim": v.embed_dim, "quick_gelu": False, "vision_cfg": vision, "text_cfg": text}


def check_importable(model_cfg: dict[str, Any], cfg, field: str) -> tuple[int, int]:
    """(image_size, context_length) of an open_clip ``model_cfg`` that our ``cfg`` computes exactly; a ClipaError
    naming the first option that differs otherwise."""
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg"), dict) \
            or not isinstance(model_cfg.get("text_cfg"), dict):
        raise ClipaError(field, "open_clip config has no model_cfg with vision_cfg and text_cfg")
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    image_size, context_length = vision.get("image_size", 224), text.get("context_length", 77)
    if not isinstance(image_size, int):
        raise ClipaError(field, f"vision_cfg.image_size {image_size!r}: only square images are supported")
    if context_length > cfg.variant.max_text_len:
        raise ClipaError(field, f"text_cfg.context_length {context_length} exceeds {cfg.variant.name}'s "
                                f"{cfg.variant.max_text_len} text positions")
    want = model_cfg_for(cfg.with_resolution(image_size) if image_size != cfg.image_res else cfg, context_length)
    for section, defaults, got, exp in (("vision_cfg", _VISION_DEFAULTS, vision, want["vision_cfg"]),
                                        ("text_cfg", _TEXT_DEFAULTS, text, want["text_cfg"]),
                                        ("", _TOP_DEFAULTS | {"embed_dim": None}, model_cfg, want)):
        keys = (set(got) | set(exp) | set(defaults)) - _NEUTRAL - {"vision_cfg", "text_cfg"}
        for key in sorted(keys):
            name = f"{section}.{key}" if section else key
            if key not in defaults and key not in exp:
                raise ClipaError(field, f"open_clip option {name}={got[key]!r} has no counterpart in our model")
            have = got.get(key, defaults.get(key))
            should = exp.get(key, defaults.get(key))
            if not _same(have, should):
                raise ClipaError(field, f"open_clip option {name}={have!r} differs from {cfg.variant.name} here "
                                        f"({should!r}); our model cannot compute it exactly")
    return image_size, context_length


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


# --------------------------------------------------------------------------------------------------------------------
# weights: our parameter tree <-> open_clip's state dict
# --------------------------------------------------------------------------------------------------------------------


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _blocks_to(prefix: str, blocks: dict, state: dict[str, np.ndarray]) -> None:
    for i in sorted(blocks, key=int):
        b = blocks[i]
        p = f"{prefix}.resblocks.{int(i)}"
        state[f"{p}.ln_1.weight"] = _f32(b["ln1"]["scale"])
        state[f"{p}.ln_1.bias"] = _f32(b["ln1"]["bias"])
        # our fused [W, 3W] kernel (outputs q|k|v, heads contiguous) is torch's in_proj_weight [3W, W] transposed
        state[f"{p}.attn.in_proj_weight"] = _f32(np.asarray(b["attn"]["qkv"]["kernel"]).T)
        state[f"{p}.attn.in_proj_bias"] = _f32(b["attn"]["qkv"]["bias"])
        state[f"{p}.attn.out_proj.weight"] = _f32(np.asarray(b["attn"]["out"]["kernel"]).T)
        state[f"{p}.attn.out_proj.bias"] = _f32(b["attn"]["out"]["bias"])
        state[f"{p}.ln_2.weight"] = _f32(b["ln2"]["scale"])
        state[f"{p}.ln_2.bias"] = _f32(b["ln2"]["bias"])
        state[f"{p}.mlp.c_fc.weight"] = _f32(np.asarray(b["fc1"]["kernel"]).T)
        state[f"{p}.mlp.c_fc.bias"] = _f32(b["fc1"]["bias"])
        state[f"{p}.mlp.c_proj.weight"] = _f32(np.asarray(b["fc2"]["kernel"]).T)
        state[f"{p}.mlp.c_proj.bias"] = _f32(b["fc2"]["bias"])


def _blocks_from(prefix: str, depth: int, state: dict[str, np.ndarray]) -> dict:
    out = {}
    for i in range(depth):
        p = f"{prefix}.resblocks.{i}"
        out[i] = {
            "ln1": {"scale": state[f"{p}.ln_1.weight"], "bias": state[f"{p}.ln_1.bias"]},
            "attn": {"qkv": {"kernel": _f32(state[f"{p}.attn.in_proj_weight"].T),
                             "bias": state[f"{p}.attn.in_proj_bias"]},
                     "out": {"kernel": _f32(state[f"{p}.attn.out_proj.weight"].T),
                             "bias": state[f"{p}.attn.out_proj.bias"]}},
            "ln2": {"scale": state[f"{p}.ln_2.weight"], "bias": state[f"{p}.ln_2.bias"]},
            "fc1": {"kernel": _f32(state[f"{p}.mlp.c_fc.weight"].T), "bias": state[f"{p}.mlp.c_fc.bias"]},
            "fc2": {"kernel": _f32(state[f"{p}.mlp.c_proj.weight"].T), "bias": state[f"{p}.mlp.c_proj.bias"]},
        }
    return out


def _image_positions(params: Params, cfg) -> np.ndarray:
    """Our image position embeddings, [grid*grid, W] in raster order (the learned table, or the fixed sincos2d)."""
    from trainer.model import posemb_sincos_2d

    w = cfg.variant.image.width
    if cfg.posemb == "learn":
        return _f32(params["image"]["posemb"]).reshape(cfg.grid * cfg.grid, w)
    return posemb_sincos_2d(cfg.grid, w)


def to_open_clip(params: Params, cfg, text_len: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(open_clip state dict, extra tensors) for our parameters at ``cfg``'s resolution; see the module docstring."""
    model_cfg_for(cfg, text_len)  # refuses what open_clip cannot express
    v: ModelVariant = cfg.variant
    p, w = v.patch, v.image.width
    img, txt = params["image"], params["text"]
    bias = _f32(img["embed"]["bias"])
    patch_pos = _image_positions(params, cfg) + bias  # the conv has no bias: it rides on every patch's position
    state: dict[str, np.ndarray] = {
        # flattened patches are (row, col, channel); torch's conv kernel is [out, channel, row, col]
        "visual.conv1.weight": _f32(np.asarray(img["embed"]["kernel"]).reshape(p, p, 3, w).transpose(3, 2, 0, 1)),
        "visual.class_embedding": _f32(img["cls"]).reshape(w),
        # the class token gets no position in our model: its row is zero
        "visual.positional_embedding": _f32(np.concatenate([np.zeros((1, w), np.float32), patch_pos])),
        "visual.ln_post.weight": _f32(img["norm"]["scale"]),
        "visual.ln_post.bias": _f32(img["norm"]["bias"]),
        "visual.proj": _f32(params["image_proj"]["kernel"]),
        "token_embedding.weight": _f32(txt["token_embed"]["embedding"]),
        "positional_embedding": _f32(np.asarray(txt["posemb"])[:text_len]),
        "ln_final.weight": _f32(txt["norm"]["scale"]),
        "ln_final.bias": _f32(txt["norm"]["bias"]),
        "text_projection": _f32(params["text_proj"]["kernel"]),
        "logit_scale": _f32(params["logit_scale"]).reshape(()),
    }
    _blocks_to("visual.transformer", img["blocks"], state)
    _blocks_to("transformer", txt["blocks"], state)
    extra = {"image.embed.bias": bias, "text.posemb": _f32(txt["posemb"])}
    if cfg.posemb == "learn":
        extra["image.posemb"] = _f32(img["posemb"])
    return state, extra


def _split_patch_positions(state: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None, cfg, grid: int,
                           field: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(patch-embedding bias, learned position table [grid, grid, W] or None for sincos2d) from open_clip's
    folded position embeddings: the extra file's originals when they still fold to the same bits, else unfolded."""
    from trainer.model import posemb_sincos_2d

    w = cfg.variant.image.width
    folded = state["visual.positional_embedding"][1:]
    if extra is not None and "image.embed.bias" in extra:
        bias = extra["image.embed.bias"]
        learned = extra.get("image.posemb")
        base = learned.reshape(grid * grid, w) if learned is not None else posemb_sincos_2d(grid, w)
        if cfg.posemb == ("learn" if learned is not None else "sincos2d") and base.shape == folded.shape \
                and np.array_equal(base + bias, folded):
            return bias, learned
    if cfg.posemb == "learn":
        return np.zeros((w,), np.float32), _f32(folded.reshape(grid, grid, w))
    # a fixed-sincos2d stage: what remains after removing sincos2d must be one vector, the patch bias
    rest = folded - posemb_sincos_2d(grid, w)
    bias = _f32(rest.mean(axis=0))
    if float(np.max(np.abs(rest - bias))) > 1e-5:
        raise ClipaError(field, "the open_clip position embeddings are not sincos2d plus a constant; start this "
                                "stage with train.posemb: learn")
    return bias, None


def from_open_clip(state: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None, cfg, image_size: int,
                   context_length: int, field: str = "init") -> Params:
    """Our parameter tree for ``cfg`` at ``image_size`` (the folder's resolution) from an open_clip state dict."""
    v: ModelVariant = cfg.variant
    p, w = v.patch, v.image.width
    grid = image_size // p
    expected = set(to_open_clip_keys(v))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ClipaError(field, f"open_clip weights do not match {v.name}: {what}")
    shapes = {"visual.positional_embedding": (grid * grid + 1, w),
              "token_embedding.weight": (cfg.vocab_size, v.text.width),
              "positional_embedding": (context_length, v.text.width), "visual.proj": (w, v.embed_dim)}
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise ClipaError(field, f"open_clip tensor {key} has shape {list(state[key].shape)}, {v.name} here needs "
                                    f"{list(shape)}")
    bias, learned = _split_patch_positions(state, extra, cfg, grid, field)
    cls_pos = state["visual.positional_embedding"][0]
    cls = state["visual.class_embedding"] if not np.any(cls_pos) else state["visual.class_embedding"] + cls_pos
    text_pos = np.zeros((v.max_text_len, v.text.width), np.float32)  # rows past the context were never trained
    text_pos[:context_length] = state["positional_embedding"]
    if extra is not None and "text.posemb" in extra and extra["text.posemb"].shape == text_pos.shape \
            and np.array_equal(extra["text.posemb"][:context_length], state["positional_embedding"]):
        text_pos = extra["text.posemb"]
    image: dict[str, Any] = {
        "embed": {"kernel": _f32(state["visual.conv1.weight"].transpose(2, 3, 1, 0).reshape(p * p * 3, w)),
                  "bias": _f32(bias)},
        "cls": _f32(cls).reshape(1, 1, w),
        "blocks": _blocks_from("visual.transformer", v.image.depth, state),
        "norm": {"scale": state["visual.ln_post.weight"], "bias": state["visual.ln_post.bias"]},
    }
    if learned is not None:
        image["posemb"] = _f32(learned)
    return {
        "image": image,
        "text": {
            "token_embed": {"embedding": state["token_embedding.weight"]},
            "posemb": _f32(text_pos),
            "blocks": _blocks_from("transformer", v.text.depth, state),
            "norm": {"scale": state["ln_final.weight"], "bias": state["ln_final.bias"]},
        },
        "image_proj": {"kernel": state["visual.proj"]},
        "text_proj": {"kernel": state["text_projection"]},
        "logit_scale": _f32(state["logit_scale"]).reshape(()),
    }


def to_open_clip_keys(v: ModelVariant) -> list[str]:
    """The state-dict keys open_clip's CLIP has for ``v`` (our export writes exactly these)."""
    keys = ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_post.weight",
            "visual.ln_post.bias", "visual.proj", "token_embedding.weight", "positional_embedding",
            "ln_final.weight", "ln_final.bias", "text_projection", "logit_scale"]
    per_block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                 "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    for prefix, depth in (("visual.transformer", v.image.depth), ("transformer", v.text.depth)):
        keys += [f"{prefix}.resblocks.{i}.{k}" for i in range(depth) for k in per_block]
    return keys


# --------------------------------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------------------------------


def write_folder(out: str | Path, params: Params, cfg, text_len: int, tokenizer: str | Path | None = None,
                 run_id: str | None = None, global_step: int | None = None) -> Path:
    """Write an open_clip model folder for ``params`` (at ``cfg``'s resolution); returns the folder."""
    from safetensors.numpy import save_file

    from trainer.model import IMAGE_MEAN, IMAGE_STD

    model_cfg = model_cfg_for(cfg, text_len)
    state, extra = to_open_clip(params, cfg, text_len)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = ClipaModelInfo(variant=cfg.variant.name, image_res=cfg.image_res, vocab_size=cfg.vocab_size,
                          posemb=cfg.posemb, pool=cfg.pool, eot_id=cfg.eot_id, text_len=text_len, run_id=run_id,
                          global_step=global_step)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"size": cfg.image_res, "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
        "clipa": info.model_dump(mode="json"),
    }
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    save_file(extra, str(out / EXTRA_FILE), metadata={"format": "clipa"})
    if tokenizer is not None:
        # open_clip.get_tokenizer("local-dir:DIR") then tokenizes as we do (through transformers)
        model_cfg["text_cfg"]["hf_tokenizer_name"] = "."
        write_hf_tokenizer(tokenizer, out, text_len)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / README_FILE).write_text(_readme(cfg, text_len, info, tokenizer is not None), encoding="utf-8")
    return out


def write_hf_tokenizer(tokenizer: str | Path, out: Path, text_len: int) -> None:
    """Our tokenizer as a folder ``transformers.AutoTokenizer`` loads (what open_clip's HFTokenizer uses):
    ``tokenizer.json`` with a post-processor that adds the start and end tokens (our ``ClipTokenizer`` bypasses it,
    so clipa reads the file as before), and ``tokenizer_config.json`` naming the special tokens, with padding by id 0.
    transformers' truncation keeps room for the added tokens, so captions come out as ``[start] content... [end]``
    truncated to the context length, zero-padded: ``ClipTokenizer.tokenize``'s ids (the export test checks it)."""
    from tokenizers import Tokenizer

    from trainer.data.reader import open_binary
    from trainer.data.tokenizer import ClipTokenizer

    with open_binary(str(tokenizer).removeprefix("file://")) as f:  # a local file or a bucket object
        text = f.read().decode("utf-8")
    raw = Tokenizer.from_str(text)
    ours = ClipTokenizer(raw, str(tokenizer))
    sot, eot, pad = (raw.id_to_token(i) for i in (ours.sot_id, ours.eot_id, ours.pad_id))
    data = json.loads(text)
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": sot, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": eot, "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": sot, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eot, "type_id": 0}}],
        "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]}
                           for t, i in ((sot, ours.sot_id), (eot, ours.eot_id))},
    }
    data["padding"] = data["truncation"] = None
    (out / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": sot, "eos_token": eot, "pad_token": pad,
              "model_max_length": text_len, "clean_up_tokenization_spaces": False}
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_folder(path: str | Path, field: str = "init") -> tuple[dict, dict[str, np.ndarray], dict | None]:
    """(open_clip config, state dict, extra tensors or None) of an open_clip model folder."""
    from safetensors.numpy import load_file

    folder = Path(str(path)).expanduser()
    check_folder(folder, field)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        state = load_file(str(folder / WEIGHTS_FILE))
        extra = load_file(str(folder / EXTRA_FILE)) if (folder / EXTRA_FILE).is_file() else None
    except (OSError, ValueError) as e:  # unreadable JSON or safetensors header
        raise ClipaError(field, f"{folder}: cannot read the open_clip folder ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise ClipaError(field, f"{folder / CONFIG_FILE} has no model_cfg")
    return config, {k: _f32(v) for k, v in state.items()}, extra


def check_folder(folder: str | Path, field: str = "init") -> None:
    """A ClipaError unless ``folder`` holds an open_clip config and safetensors weights (cheap: no reading)."""
    folder = Path(str(folder)).expanduser()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ClipaError(field, f"{folder} is not an open_clip model folder (no {name})")


def import_params(path: str | Path, cfg, field: str = "init") -> Params:
    """Parameters for ``cfg`` (a stage's model) from an open_clip folder: the inverse mapping, then learned position
    embeddings resampled to the stage's resolution as between our own stages."""
    from trainer.model import adapt_params

    config, state, extra = read_folder(path, field)
    image_size, context_length = check_importable(config["model_cfg"], cfg, f"{field}: {path}")
    src = cfg.with_resolution(image_size) if image_size != cfg.image_res else cfg
    params = from_open_clip(state, extra, src, image_size, context_length, field)
    return adapt_params(params, src, cfg) if src is not cfg else params


# --------------------------------------------------------------------------------------------------------------------
# exporting a run
# --------------------------------------------------------------------------------------------------------------------


def export_run(checkpoint: str | Path, out: str | Path, image_res: int | None = None) -> dict[str, Any]:
    """Export a run directory (or one checkpoint) as an open_clip folder; returns a summary for the CLI."""
    from planner.spec import load_spec
    from trainer.checkpoint import load_params
    from trainer.run_layout import SPEC_FILE
    from trainer.model import adapt_params
    from trainer.run_layout import run_dir_of

    cfg, params, meta = load_params(checkpoint, field="run_dir")
    blockers = export_blockers(cfg)
    if blockers:
        field, _, message = blockers[0].partition(": ")
        raise ClipaError(field, f"cannot export to open_clip: {message}")
    rd = run_dir_of(Path(str(checkpoint)))
    spec = load_spec(rd / SPEC_FILE) if rd is not None else None
    stage = int(meta.get("stage", 0))
    text_len = spec.stages[min(stage, len(spec.stages) - 1)].text_len if spec else cfg.variant.max_text_len
    if image_res is not None and image_res != cfg.image_res:
        dst = cfg.with_resolution(image_res)
        params, cfg = adapt_params(params, cfg, dst), dst
    tokenizer = None
    if spec is not None and (spec.tokenizer or spec.data):
        from trainer.data.tokenizer import find_tokenizer

        try:
            tokenizer = find_tokenizer(spec.tokenizer, spec.data)
        except ClipaError:
            tokenizer = None  # e.g. a synthetic run: the export says it has no tokenizer
    folder = write_folder(out, params, cfg, text_len, tokenizer, run_id=meta.get("run_id"),
                          global_step=meta.get("global_step"))
    return {"out": str(folder), "format": FORMAT, "variant": cfg.variant.name, "image_res": cfg.image_res,
            "text_len": text_len, "tokenizer": str(tokenizer) if tokenizer else None,
            "global_step": meta.get("global_step")}


def _readme(cfg, text_len: int, info: ClipaModelInfo, has_tokenizer: bool) -> str:
    tok = (f"""Tokens: `tokenizer = open_clip.get_tokenizer("local-dir:DIR")` (needs `transformers`), then
`tokenize = tokenizer`. Without transformers, `tokenizer.json` (byte-level BPE) gives the same ids with the
`tokenizers` library alone: captions are `[start] tokens... [end]`, truncated to {text_len} tokens and padded with
id 0, as in training:

```python
import numpy as np, torch
from tokenizers import Tokenizer

tok = Tokenizer.from_file("DIR/tokenizer.json")
vocab = tok.get_vocab()
sot = next(vocab[n] for n in ("<start_of_text>", "<|startoftext|>", "[CLS]") if n in vocab)
eot = next(vocab[n] for n in ("<end_of_text>", "<|endoftext|>", "[SEP]") if n in vocab)

def tokenize(texts, n={text_len}):
    out = np.zeros((len(texts), n), np.int64)
    for i, t in enumerate(texts):
        ids = [sot] + tok.encode(t, add_special_tokens=False).ids[: n - 2] + [eot]
        out[i, : len(ids)] = ids
    return torch.from_numpy(out)
```
""" if has_tokenizer else "This run had no tokenizer file (synthetic data): bring token ids of length "
                         f"{text_len} padded with 0.\n")
    return f"""# {cfg.variant.name} CLIP exported by clipa

Run {info.run_id or '?'}, step {info.global_step if info.global_step is not None else '?'}: image tower
{cfg.variant.name} at {cfg.image_res} px, text context {text_len} tokens, vocabulary {cfg.vocab_size}.

```python
import open_clip, torch

model = open_clip.create_model("local-dir:DIR")  # DIR: this folder
model.eval()
# images: float [N, 3, {cfg.image_res}, {cfg.image_res}], RGB in [0, 1] normalised with the mean/std of
# open_clip_config.json's preprocess_cfg (open_clip.create_model_and_transforms("local-dir:DIR") gives a transform)
with torch.no_grad():
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(tokenize(["a photo of a dog"]), normalize=True)
    logits = model.logit_scale.exp() * image_features @ text_features.T
```

{tok}
Files: `open_clip_config.json` (open_clip model config; the `clipa` block is ignored by open_clip),
`open_clip_model.safetensors` (the weights), `clipa_extra.safetensors` (lets clipa read the folder back bit for bit:
`init: checkpoint:open_clip:DIR` in a run spec's stage).
"""
