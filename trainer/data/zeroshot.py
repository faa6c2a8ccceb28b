"""Zero-shot classification and image-text retrieval, written against embedding callables (no model code here).

``embed_images(uint8 [N, R, R, 3]) -> float [N, D]`` and ``embed_texts(int32 [N, text_len]) -> float [N, D]`` are
supplied by the caller (the trainer wraps its jitted towers); outputs need not be normalised, we L2-normalise them.

Classification (CLIP's prompt ensembling): every class name is put into every template, the text embeddings are
normalised, averaged per class and normalised again; an image's prediction is its highest cosine similarity; top-1
and top-5 accuracy are reported with the number of images ``n`` (so hosts can combine their parts), and, when the
data names the words of its class names (``attributes.txt``: "colour", "shape"), the top-1 of each word on its own.
Classes are embedded ``class_batch`` at a time to bound memory. Prompts are tokenized with plain truncation to
``text_len``.

Retrieval: one caption per image on a held-out split; recall@K in both directions. ``evaluate`` reads and embeds
the evaluation images once for both.

Class names and prompt templates (the package's ImageNet ones, a dataset's own files) come from
``trainer.data.prompts``, which the evaluation source reads too (so this module and ``pipeline`` do not import each
other in a cycle: zeroshot -> pipeline -> prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from planner.errors import ClipaError
from trainer.data.pipeline import make_eval_source
from trainer.data.prompts import openai_templates

EmbedFn = Callable[[np.ndarray], Any]


# --- maths ---------------------------------------------------------------------------------------------------------
def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def build_classifier(
    embed_texts: EmbedFn,
    classnames: Sequence[str],
    templates: Sequence[str],
    tokenizer,
    text_len: int,
    class_batch: int = 64,
) -> np.ndarray:
    """Zero-shot weights ``[C, D]``: per class, the re-normalised mean of its normalised prompt embeddings."""
    if not classnames:
        raise ClipaError("classnames", "no class names")
    if not templates:
        raise ClipaError("templates", "no prompt templates")
    rows = []
    for start in range(0, len(classnames), class_batch):
        chunk = classnames[start : start + class_batch]
        texts = [t.format(c) for c in chunk for t in templates]
        tokens = tokenizer.tokenize(texts, text_len)
        emb = _normalise(np.asarray(embed_texts(tokens)))
        emb = emb.reshape(len(chunk), len(templates), -1).mean(axis=1)
        rows.append(_normalise(emb))
    return np.concatenate(rows, axis=0)


def _batches(source: Iterable) -> Iterable[tuple[np.ndarray, np.ndarray, list[str] | None]]:
    for b in source:
        if isinstance(b, dict):
            yield b["images"], np.asarray(b.get("labels", []), np.int64), b.get("texts")
        else:
            images, labels = b[0], b[1]
            yield images, np.asarray(labels, np.int64), (b[2] if len(b) > 2 else None)


def _embed_eval_set(embed_images: EmbedFn, eval_source: Iterable, *, classes: int | None, limit: int | None,
                    captions_limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """One pass over ``eval_source``: the normalised features [N, D], labels [N] (-1: unlabelled) and captions
    (None when the source has none) of the images read, so that classification and retrieval share one decode and
    one embedding of every image. Reading stops once ``limit`` labelled images (classification) and
    ``captions_limit`` captioned ones (retrieval; 0 = none wanted) are in, or at the end of the source."""
    feats, labels, captions = [], [], []
    has_captions = captions_limit != 0
    rows = labelled = 0
    for images, labs, texts in _batches(eval_source):
        images = np.asarray(images)
        if len(labs) != len(images):  # a source without labels (retrieval only)
            labs = np.full(len(images), -1, np.int64)
        if classes is not None and (labs >= classes).any():
            raise ClipaError("labels", f"label {int(labs.max())} is out of range for {classes} classes")
        if texts is None:
            has_captions = False
        if len(images) == 0:
            continue
        feats.append(_normalise(np.asarray(embed_images(images))))
        labels.append(labs)
        if has_captions:
            captions.extend(list(texts))
        rows += len(images)
        labelled += int((labs >= 0).sum())
        classified = limit is not None and labelled >= limit
        retrieved = not has_captions or (captions_limit is not None and rows >= captions_limit)
        if classified and retrieved:
            break
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64), (captions if has_captions else None)
    return np.concatenate(feats), np.concatenate(labels), (captions if has_captions else None)


def attribute_accuracy(predicted: np.ndarray, labels: np.ndarray, classnames: Sequence[str],
                       attributes: Sequence[str]) -> dict[str, float]:
    """How often the predicted class has the true class's word for each attribute: class names are the attributes'
    values in order ("red circle" with attributes colour, shape). A top-1 that stalls while one attribute is learned and
    the other guessed shows here (issue 19: 8 colours x 8 shapes, top-1 flat at 16% while colour rose and shape did
    not). Empty when some class name does not have one word per attribute."""
    words = [name.split() for name in classnames]
    if len(attributes) < 2 or any(len(w) != len(attributes) for w in words):
        return {}
    table = np.array(words, dtype=object)
    return {a: float((table[predicted, k] == table[labels, k]).mean()) for k, a in enumerate(attributes)}


def _classify(feats: np.ndarray, labels: np.ndarray, weights: np.ndarray, limit: int | None,
              classnames: Sequence[str] | None = None,
              attributes: Sequence[str] | None = None) -> dict[str, Any]:
    keep = np.nonzero(labels >= 0)[0][:limit]
    if len(keep) == 0:
        raise ClipaError("eval_data", "no labelled evaluation images were read")
    logits = feats[keep] @ weights.T
    y = labels[keep]
    k = min(5, weights.shape[0])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] else np.argsort(-logits, axis=1)[:, :k]
    hit5 = int((topk == y[:, None]).any(axis=1).sum())
    predicted = logits.argmax(axis=1)
    hit1 = int((predicted == y).sum())
    out: dict[str, Any] = {"top1": hit1 / len(y), "top5": hit5 / len(y), "n": int(len(y))}
    if classnames is not None and attributes:
        if per := attribute_accuracy(predicted, y, classnames, attributes):
            out["attributes"] = per
    return out


def _retrieve(img_feats: np.ndarray, captions: list[str], embed_texts: EmbedFn, tokenizer, text_len: int,
              ks: Sequence[int]) -> dict[str, float | int]:
    n = min(len(img_feats), len(captions))
    if n == 0:
        raise ClipaError("eval_data", "no evaluation images were read")
    im = img_feats[:n]
    tx = _normalise(np.asarray(embed_texts(tokenizer.tokenize(list(captions[:n]), text_len))))
    sim = im @ tx.T
    # rank of the true partner: how many other candidates score at least as high (ties count against the model,
    # so a collapsed embedding scores 0, not 1)
    diag = np.diag(sim)
    i2t_rank = (sim >= diag[:, None]).sum(axis=1) - 1
    t2i_rank = (sim >= diag[None, :]).sum(axis=0) - 1
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).mean())
        out[f"t2i_r{k}"] = float((t2i_rank < k).mean())
    out["n"] = n
    return out


def zero_shot_classify(
    embed_images: EmbedFn,
    embed_texts: EmbedFn,
    eval_source: Iterable,
    classnames: Sequence[str],
    templates: Sequence[str],
    tokenizer,
    text_len: int,
    class_batch: int = 64,
    limit: int | None = None,
) -> dict[str, float | int]:
    """Top-1/top-5 accuracy of zero-shot classification over ``eval_source``.

    ``eval_source`` yields ``{"images": uint8 [B,R,R,3], "labels": int [B]}`` (or ``(images, labels)``); samples
    labelled -1 (unlabelled) are ignored. Returns ``{"top1", "top5", "n"}`` with accuracies in 0..1.
    """
    weights = build_classifier(embed_texts, classnames, templates, tokenizer, text_len, class_batch)
    feats, labels, _ = _embed_eval_set(embed_images, eval_source, classes=len(classnames), limit=limit,
                                       captions_limit=0)
    return _classify(feats, labels, weights, limit)


RETRIEVAL_LIMIT = 5000  # bounds the N x N similarity matrix


def retrieval_recall(
    embed_images: EmbedFn,
    embed_texts: EmbedFn,
    eval_source: Iterable,
    tokenizer,
    text_len: int,
    ks: Sequence[int] = (1, 5),
    limit: int | None = RETRIEVAL_LIMIT,
) -> dict[str, float | int]:
    """Image->text and text->image recall@K with one caption per image (the held-out split's own captions).

    Returns ``{"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "n"}`` (one key per K). ``limit`` bounds the N x N similarity.
    """
    feats, _, captions = _embed_eval_set(embed_images, eval_source, classes=None, limit=0, captions_limit=limit)
    if captions is None:
        raise ClipaError("eval_data", "retrieval needs captions (txt) with the evaluation images")
    return _retrieve(feats, captions, embed_texts, tokenizer, text_len, ks)


def evaluate(
    data: str,
    embed_images: EmbedFn,
    embed_texts: EmbedFn,
    image_res: int,
    text_len: int | None = None,
    tokenizer: str | None = None,
    spec: Any = None,
    batch_size: int = 256,
    limit: int | None = None,
    retrieval: bool = True,
) -> dict[str, Any]:
    """Zero-shot evaluation of a model on an evaluation set: what ``clipa eval`` runs.

    ``data``: a folder of class subfolders, shards with class labels, or a synth dataset (its ``eval/`` split);
    class names and templates come from the data (``classes.txt``, ``templates.txt``), else ImageNet's for an
    ImageNet folder, else the folder names with the CLIP templates. The tokenizer is ``tokenizer`` (a path), else the
    one beside the spec's training data, else the one beside ``data``. Returns ``top1``/``top5``/``n`` and, when the
    set has captions, retrieval recall (``retrieval``); ``attributes`` (each class-name word's top-1) when the data
    has an ``attributes.txt``.
    """
    from trainer.data.tokenizer import load_tokenizer

    text_len = int(text_len or 32)
    tok = load_tokenizer(_eval_tokenizer_path(tokenizer, spec, data))
    source = make_eval_source(str(data), image_res, batch_size=batch_size, limit=limit)
    classnames = source.classnames
    if not classnames:
        raise ClipaError("eval_data", f"{data} has no class names (add a classes.txt, one name per line)")
    templates = source.templates or openai_templates()
    weights = build_classifier(embed_texts, classnames, templates, tok, text_len)
    feats, labels, captions = _embed_eval_set(
        embed_images, source, classes=len(classnames), limit=limit,
        captions_limit=RETRIEVAL_LIMIT if retrieval and source.has_captions else 0)
    result: dict[str, Any] = dict(_classify(feats, labels, weights, limit, classnames, source.attributes))
    result.update(classes=len(classnames), templates=len(templates), image_res=image_res, text_len=text_len,
                  data=str(data))
    if captions:
        result["retrieval"] = _retrieve(feats, captions, embed_texts, tok, text_len, (1, 5))
    skipped = {k: v for k, v in source.stats().items() if k not in ("samples",)}
    if skipped:
        result["data_stats"] = skipped
    return result


def _eval_tokenizer_path(tokenizer: str | None, spec: Any, data: str) -> str:
    from trainer.data.tokenizer import find_tokenizer

    for explicit in (tokenizer, getattr(spec, "tokenizer", None)):
        if explicit:
            return str(explicit)
    for folder in (getattr(spec, "data", None), str(data)):
        if folder:
            try:
                return find_tokenizer(None, folder)
            except ClipaError:
                continue
    raise ClipaError("tokenizer", f"no tokenizer given and no tokenizer.json beside {data} or the run's training data")
