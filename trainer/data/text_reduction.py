"""Text token reduction: captions -> exactly ``text_len`` token ids, as CLIPA's torch code does it.

Every row is ``[SOT] content... [EOT] 0 0 ...``: two slots go to the start/end tokens, so at most ``text_len - 2``
content tokens are kept (CLIPA torch, ``open_clip/tokenizer.py``).
- ``truncate``: the first ``text_len - 2`` content tokens (OpenCLIP's default ``tokenize``).
- ``random``: a random subset of ``text_len - 2`` content tokens, original order kept (``random_mask_tokenize``).
- ``block``: one random contiguous span of ``text_len - 2`` content tokens (``simple_mask_tokenize``).
- ``syntax``: words are part-of-speech tagged and ranked nouns > adjectives > verbs > others; a *stable* sort keeps
  the top ``text_len - 2`` words, which are put back in their original order, joined, tokenized and truncated again
  (one word can give several sub-word tokens) (``syntax_mask_tokenize``). CLIPA used ``np.argsort``'s default
  (unstable) sort; we use a stable one so equal-priority words are kept left to right, deterministically.
Randomness comes from a ``numpy.random.Generator`` the caller passes, so results are deterministic given a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from planner.errors import ClipaError

if TYPE_CHECKING:
    from trainer.data.tokenizer import ClipTokenizer

METHODS = ("truncate", "random", "block", "syntax")


def _method_name(method) -> str:
    name = getattr(method, "value", method)
    if name not in METHODS:
        raise ClipaError("text_reduction", f"unknown text reduction {name!r} (known: {', '.join(METHODS)})")
    return name


def reduce_ids(ids: Sequence[int], keep: int, method: str, rng: np.random.Generator | None = None) -> list[int]:
    """At most ``keep`` of the content ids, chosen by ``truncate``, ``random`` or ``block``."""
    ids = list(ids)
    if len(ids) <= keep:
        return ids
    if method in ("truncate", "syntax"):
        return ids[:keep]
    if rng is None:
        raise ValueError(f"text reduction {method!r} needs a random generator")
    if method == "random":
        pick = np.sort(rng.permutation(len(ids))[:keep])
        return [ids[i] for i in pick]
    if method == "block":
        start = int(rng.integers(0, len(ids) - keep + 1))
        return ids[start : start + keep]
    raise ClipaError("text_reduction", f"unknown text reduction {method!r}")


def syntax_select(words: Sequence[str], tags: Sequence[str], keep: int) -> list[str]:
    """The ``keep`` highest-priority words (nouns, adjectives, verbs, rest; stable), in their original order."""
    from trainer.data.postag import priority

    if len(words) <= keep:
        return list(words)
    order = np.fromiter((priority(t) for t in tags), dtype=np.int8, count=len(tags))
    chosen = np.sort(np.argsort(order, kind="stable")[:keep])
    return [words[i] for i in chosen]


def syntax_text(text: str, keep: int, tagged: Sequence[tuple[str, str]] | None = None) -> str:
    """The caption reduced to its ``keep`` most important words (CLIPA syntax masking), words joined by spaces."""
    from trainer.data.postag import pos_tag

    if tagged is None:
        tagged = pos_tag(text)
    words = [w for w, _ in tagged]
    tags = [t for _, t in tagged]
    return " ".join(syntax_select(words, tags, keep))


def reduce_one(
    text: str,
    tokenizer: ClipTokenizer,
    text_len: int,
    method: str,
    rng: np.random.Generator | None = None,
    tagged: Sequence[tuple[str, str]] | None = None,
) -> np.ndarray:
    """One caption -> int32 ``[text_len]``: ``[SOT] content [EOT]`` zero-padded, content reduced by ``method``."""
    method = _method_name(method)
    if text_len < 2:
        raise ClipaError("text_len", f"{text_len} leaves no room for the start and end tokens")
    keep = text_len - 2
    if method == "syntax":
        text = syntax_text(text, keep, tagged)
    content = reduce_ids(tokenizer.encode(text), keep, method, rng)
    row = np.zeros(text_len, dtype=np.int32)
    row[0] = tokenizer.sot_id
    row[1 : 1 + len(content)] = content
    row[1 + len(content)] = tokenizer.eot_id
    return row


def reduce_texts(
    texts: Sequence[str],
    tokenizer: ClipTokenizer,
    text_len: int,
    method: str = "truncate",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A batch of captions -> int32 ``[len(texts), text_len]`` (one generator drives all random choices)."""
    method = _method_name(method)
    if method in ("random", "block") and rng is None:
        raise ValueError(f"text reduction {method!r} needs a random generator")
    out = np.zeros((len(texts), text_len), dtype=np.int32)
    for i, t in enumerate(texts):
        out[i] = reduce_one(t, tokenizer, text_len, method, rng)
    return out
