"""Model variant table: the one decoder from a variant string ("B/16", "H/14", "bigG/14", "mu/8") to tower shapes.

Image towers follow big_vision's ``decode_variant`` (Ti, S, M, B, L, H, g, bigG, e) plus tiny towers for local runs
and tests (mu, mini, xs). The text tower that goes with each image size follows the CLIPA convention (the text size
follows the image letter; CLIPA's JAX text tower, 32k BERT vocabulary) by default. The OpenCLIP convention (49,408 BPE
vocabulary, context 77, its own text widths) is available as ``convention="openclip"`` for comparing with OpenCLIP's
published architecture table. Token counts (resolution, text length) are never part of a variant: they belong to the
run spec's stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Convention = Literal["clipa", "openclip"]


class VariantError(ValueError):
    """A variant string that the table cannot decode."""


@dataclass(frozen=True)
class TowerShape:
    width: int
    depth: int
    mlp: int
    heads: int


@dataclass(frozen=True)
class ModelVariant:
    """Everything about a CLIP model that does not depend on the token counts of a stage."""

    name: str  # canonical name, e.g. "bigG/14"
    size: str  # image tower letter, e.g. "bigG"
    patch: int
    image: TowerShape
    text: TowerShape
    embed_dim: int
    vocab_size: int
    pool: Literal["gap", "tok"]  # image pooling: global average or class token
    text_pool: Literal["last", "eot"]
    text_causal: bool
    max_text_len: int

    @property
    def image_params(self) -> int:
        """Image tower parameters at resolution 224 (learned position embeddings), as OpenCLIP counts them."""
        return image_params(self, 224)

    @property
    def text_params(self) -> int:
        return text_params(self)

    @property
    def params(self) -> int:
        return self.image_params + self.text_params + 1  # + temperature


# width, depth, mlp, heads. big_vision's table (arXiv 2106.04560 Table 2) plus tiny towers for local work.
IMAGE_TOWERS: dict[str, TowerShape] = {
    "mu": TowerShape(32, 1, 128, 2),
    "mini": TowerShape(64, 2, 256, 2),
    "xs": TowerShape(128, 4, 512, 4),
    "Ti": TowerShape(192, 12, 768, 3),
    "S": TowerShape(384, 12, 1536, 6),
    "M": TowerShape(512, 12, 2048, 8),
    "B": TowerShape(768, 12, 3072, 12),
    "L": TowerShape(1024, 24, 4096, 16),
    "H": TowerShape(1280, 32, 5120, 16),
    "g": TowerShape(1408, 40, 6144, 16),
    "bigG": TowerShape(1664, 48, 8192, 16),
    "e": TowerShape(1792, 56, 15360, 16),
}

# Text towers and embedding dimension per image letter: clipa_jax text_transformer decode_variant and the converted
# open_clip "-CLIPA" configs (bigG uses the released 1280/32/20 tower). OpenCLIP's model_configs use the same widths
# for these sizes; the conventions differ in vocabulary, context length, causal mask and pooling.
TEXT_TOWERS: dict[str, tuple[TowerShape, int]] = {
    "mu": (TowerShape(32, 1, 128, 2), 32),
    "mini": (TowerShape(64, 2, 256, 2), 64),
    "xs": (TowerShape(128, 4, 512, 4), 128),
    "Ti": (TowerShape(192, 12, 768, 3), 192),
    "S": (TowerShape(384, 12, 1536, 6), 384),
    "M": (TowerShape(512, 12, 2048, 8), 512),
    "B": (TowerShape(512, 12, 2048, 8), 512),
    "L": (TowerShape(768, 12, 3072, 12), 768),
    "H": (TowerShape(1024, 24, 4096, 16), 1024),
    "g": (TowerShape(1024, 24, 4096, 16), 1024),
    "bigG": (TowerShape(1280, 32, 5120, 20), 1280),
    "e": (TowerShape(1280, 36, 5120, 20), 1280),
}

_ALIASES = {"G": "bigG", "BIGG": "bigG", "MU": "mu", "MINI": "mini", "XS": "xs", "TI": "Ti"}
_VARIANT_RE = re.compile(r"^\s*([A-Za-z]+)\s*/\s*(\d+)\s*$")
TINY_SIZES = ("mu", "mini", "xs")
PATCHES = (8, 14, 16, 32)


def canonical_size(letter: str) -> str:
    if letter in IMAGE_TOWERS:
        return letter
    alias = _ALIASES.get(letter.upper()) or _ALIASES.get(letter)
    if alias is None:
        known = ", ".join(list(IMAGE_TOWERS) + ["G"])
        raise VariantError(f"unknown model size {letter!r} (known: {known})")
    return alias


def decode_variant(name: str, convention: Convention = "clipa") -> ModelVariant:
    """Decode "SIZE/PATCH" (e.g. "H/14", "G/14", "mu/8") into a ModelVariant."""
    m = _VARIANT_RE.match(name)
    if not m:
        raise VariantError(f"model {name!r} is not of the form SIZE/PATCH, e.g. 'B/16' or 'H/14'")
    size = canonical_size(m.group(1))
    patch = int(m.group(2))
    if patch not in PATCHES:
        raise VariantError(f"model {name!r}: patch {patch} is not one of {', '.join(map(str, PATCHES))}")
    text, embed = TEXT_TOWERS[size]
    large = size in ("L", "H", "g", "bigG", "e")
    return ModelVariant(
        name=f"{size}/{patch}",
        size=size,
        patch=patch,
        image=IMAGE_TOWERS[size],
        text=text,
        embed_dim=embed,
        vocab_size=32000 if convention == "clipa" else 49408,
        # CLIPA: class-token pooling for S/B, GAP for L and larger (configs, see clipa-recipes.md 2.1).
        pool="gap" if (large and convention == "clipa") else "tok",
        text_pool="last" if convention == "clipa" else "eot",
        text_causal=convention == "openclip",
        max_text_len=77,
    )


def size_rank(size: str) -> float:
    """A model-size coordinate for the accuracy model: log10 of the image tower's parameter count."""
    import math

    t = IMAGE_TOWERS[canonical_size(size)]
    return math.log10(t.depth * (4 * t.width**2 + 2 * t.width * t.mlp))


def image_params(v: ModelVariant, resolution: int) -> int:
    """Image tower parameters with learned position embeddings at ``resolution`` (OpenCLIP's count)."""
    w, d, m = v.image.width, v.image.depth, v.image.mlp
    n = (resolution // v.patch) ** 2 + 1
    block = 4 * w * w + 4 * w + 2 * w * m + m + w + 4 * w  # qkv+out (+bias), mlp (+bias), 2 layer norms
    patch_embed = 3 * v.patch**2 * w
    return patch_embed + w + n * w + d * block + 4 * w + w * v.embed_dim  # + cls, pos, ln_pre/post, proj


def text_params(v: ModelVariant) -> int:
    w, d, m = v.text.width, v.text.depth, v.text.mlp
    block = 4 * w * w + 4 * w + 2 * w * m + m + w + 4 * w
    return v.vocab_size * w + v.max_text_len * w + d * block + 2 * w + w * v.embed_dim


def all_variant_names(include_tiny: bool = True) -> list[str]:
    names = []
    for size in IMAGE_TOWERS:
        if size in TINY_SIZES and not include_tiny:
            continue
        for p in (14, 16, 32) if size not in TINY_SIZES else (8, 16):
            names.append(f"{size}/{p}")
    return names
