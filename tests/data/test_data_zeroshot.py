"""Zero-shot classification and retrieval with known embeddings: an oracle scores 1.0, random scores chance."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from data_helpers import image_bytes

from planner.errors import ClipaError
from trainer.data.pipeline import make_eval_source
from trainer.data.prompts import imagenet_classnames, load_classnames, load_templates, openai_templates
from trainer.data.zeroshot import build_classifier, retrieval_recall, zero_shot_classify


def test_shipped_imagenet_names_and_templates():
    names = imagenet_classnames()
    assert len(names) == 1000 and len(set(names)) == 999  # "missile" appears twice in OpenAI's list
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet paper"
    assert names[207] == "Golden Retriever" and names[281] == "tabby cat" and names[948] == "Granny Smith apple"
    templates = openai_templates()
    assert len(templates) == 80 and len(set(templates)) == 80
    assert all(t.count("{}") == 1 for t in templates)
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."


class Oracle:
    """Embeddings that know the answer: an image maps to its class's one-hot, a prompt to the class it names."""

    def __init__(self, eval_source, classnames, tokenizer, strict: bool = True):
        self.strict = strict
        self.by_image: dict[str, int] = {}
        for b in eval_source:
            for img, label in zip(b["images"], b["labels"], strict=True):
                self.by_image[hashlib.sha256(img.tobytes()).hexdigest()] = int(label)
        self.classnames = classnames
        self.tokenizer = tokenizer
        self.text_calls = 0

    def images(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), len(self.classnames)), np.float32)
        for i, img in enumerate(images):
            out[i, self.by_image[hashlib.sha256(img.tobytes()).hexdigest()]] = 3.0  # scale must not matter
        return out

    def texts(self, tokens: np.ndarray) -> np.ndarray:
        self.text_calls += 1
        out = np.zeros((len(tokens), len(self.classnames)), np.float32)
        for i, row in enumerate(tokens):
            text = f" {self.tokenizer.decode(row)} "
            # the longest class name contained in the prompt ("red star" beats "star")
            hits = [c for c, name in enumerate(self.classnames) if f" {name} " in text.replace(".", " ")]
            assert hits or not self.strict, text
            if hits:
                out[i, max(hits, key=lambda c: len(self.classnames[c]))] = 1.0
        return out


def test_oracle_gets_top1_of_one_on_the_synth_eval_split(synth_dir, synth_tokenizer):
    src = make_eval_source(str(synth_dir), 32, batch_size=16, decode_threads=1)
    assert src.classnames and len(src.classnames) == 64 and src.templates
    oracle = Oracle(src, src.classnames, synth_tokenizer)
    res = zero_shot_classify(oracle.images, oracle.texts, src, src.classnames, src.templates, synth_tokenizer,
                             text_len=16, class_batch=10)
    assert res == {"top1": 1.0, "top5": 1.0, "n": 64}
    assert oracle.text_calls == 7  # 64 classes in batches of 10
    limited = zero_shot_classify(oracle.images, oracle.texts, src, src.classnames, src.templates, synth_tokenizer,
                                 text_len=16, limit=20)
    assert limited["n"] == 20


def test_random_embeddings_score_chance(synth_tokenizer):
    rng = np.random.default_rng(0)
    classes = [f"class {i}" for i in range(64)]
    n = 4000
    labels = rng.integers(0, 64, n)
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    source = [{"images": images[i : i + 500], "labels": labels[i : i + 500]} for i in range(0, n, 500)]
    proj = rng.normal(size=(48, 32))
    text_proj = rng.normal(size=(16, 32))

    def embed_images(x):
        return (x.reshape(len(x), -1).astype(np.float32) - 127.5) @ proj

    def embed_texts(t):
        return t.astype(np.float32) @ text_proj + rng.normal(size=(len(t), 32)) * 50

    res = zero_shot_classify(embed_images, embed_texts, source, classes, ["a {}", "the {}"], synth_tokenizer, 16)
    assert res["n"] == n
    assert abs(res["top1"] - 1 / 64) < 0.012  # chance is 1.6%
    assert abs(res["top5"] - 5 / 64) < 0.025  # chance is 7.8%


def test_classifier_averages_normalised_prompt_embeddings(synth_tokenizer):
    def embed_texts(tokens):
        # prompt "a x" -> (1, 0) scaled by 10; "the x" -> (0, 1): averaging before normalising would be dominated
        return np.array([[10.0, 0.0] if synth_tokenizer.decode(r).startswith("a ") else [0.0, 1.0] for r in tokens])

    w = build_classifier(embed_texts, ["red"], ["a {}", "the {}"], synth_tokenizer, 8)
    np.testing.assert_allclose(w, [[np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-6)
    with pytest.raises(ClipaError):
        build_classifier(embed_texts, [], ["a {}"], synth_tokenizer, 8)


def test_labels_out_of_range_and_empty_sources_are_errors(synth_tokenizer):
    def e(x):
        return np.ones((len(x), 2))

    with pytest.raises(ClipaError, match="out of range"):
        zero_shot_classify(e, e, [(np.zeros((1, 2, 2, 3), np.uint8), [5])], ["a", "b"], ["{}"], synth_tokenizer, 4)
    with pytest.raises(ClipaError, match="no labelled"):
        zero_shot_classify(e, e, [], ["a", "b"], ["{}"], synth_tokenizer, 4)


def test_retrieval_oracle_random_and_collapsed(synth_dir, synth_tokenizer):
    src = make_eval_source(str(synth_dir / "eval"), 16, batch_size=20, decode_threads=0)
    captions = {}
    for b in src:
        for img, text in zip(b["images"], b["texts"], strict=True):
            captions[hashlib.sha256(img.tobytes()).hexdigest()] = text

    def key_vec(s: str) -> np.ndarray:
        return np.random.default_rng(int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)).normal(size=64)

    def oracle_images(x):
        return np.stack([key_vec(synth_tokenizer.decode(synth_tokenizer.tokenize(
            captions[hashlib.sha256(i.tobytes()).hexdigest()], 77)[0])) for i in x])

    def oracle_texts(t):
        return np.stack([key_vec(synth_tokenizer.decode(r)) for r in t])

    res = retrieval_recall(oracle_images, oracle_texts, src, synth_tokenizer, text_len=77)
    assert res["n"] == 64 and res["i2t_r1"] == res["t2i_r1"] == 1.0
    rng = np.random.default_rng(1)
    rand = retrieval_recall(lambda x: rng.normal(size=(len(x), 16)), lambda t: rng.normal(size=(len(t), 16)), src,
                            synth_tokenizer, text_len=16)
    assert rand["i2t_r5"] < 0.35 and rand["t2i_r5"] < 0.35  # chance is 5/64
    flat = retrieval_recall(lambda x: np.ones((len(x), 4)), lambda t: np.ones((len(t), 4)), src, synth_tokenizer, 16)
    assert flat["i2t_r1"] == 0.0 and flat["t2i_r5"] == 0.0  # ties count against a collapsed model


def test_imagenet_style_folder_source(tmp_path):
    root = tmp_path / "val"
    for c, name in enumerate(["golden_retriever", "tabby_cat", "zebra"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"img{i}.JPEG").write_bytes(image_bytes(30, 20, seed=c * 10 + i))
    (root / "zebra" / "broken.jpg").write_bytes(b"")
    (root / "zebra" / "notes.txt").write_text("ignored")
    src = make_eval_source(str(root), 24, batch_size=4, decode_threads=2)
    assert src.classnames == ["golden retriever", "tabby cat", "zebra"]
    batches = list(src)
    labels = np.concatenate([b["labels"] for b in batches]).tolist()
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(b["images"].shape[1:] == (24, 24, 3) for b in batches)
    assert src.stats()["bad_image"] == 1
    # two hosts split the files
    parts = [make_eval_source(str(root), 24, process_index=p, process_count=2, decode_threads=0) for p in (0, 1)]
    assert sum(len(b["labels"]) for p in parts for b in p) == 9


def test_class_and_template_files(tmp_path):
    (tmp_path / "c.txt").write_text("red star\n\nblue ring\n")
    assert load_classnames(tmp_path / "c.txt") == ["red star", "blue ring"]
    (tmp_path / "t.txt").write_text("a photo of a {}.\nno placeholder\n")
    with pytest.raises(ClipaError, match="exactly one"):
        load_templates(tmp_path / "t.txt")


def test_evaluate_is_what_clipa_eval_runs(synth_dir, synth_tokenizer):
    """``evaluate`` finds classes, templates and the tokenizer beside the data, and adds retrieval for captions."""
    from trainer.data.zeroshot import evaluate

    src = make_eval_source(str(synth_dir), 24, batch_size=32, decode_threads=0)
    oracle = Oracle(src, src.classnames, synth_tokenizer, strict=False)  # captions name no single class
    res = evaluate(str(synth_dir), oracle.images, oracle.texts, image_res=24, text_len=16)
    assert (res["top1"], res["top5"], res["n"], res["classes"]) == (1.0, 1.0, 64, 64)
    assert res["templates"] == len(src.templates)
    assert set(res["retrieval"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "n"}
    assert res["attributes"] == {"colour": 1.0, "shape": 1.0}  # the generated set names its class-name words
    with pytest.raises(ClipaError, match="not found"):
        evaluate(str(synth_dir / "nowhere"), oracle.images, oracle.texts, image_res=24)


def test_attribute_accuracy_scores_each_word_of_a_class_name(synth_dir, synth_tokenizer):
    """A model that knows every colour and no shape (it always answers the next shape) scores top-1 0 and colour 1."""
    from trainer.data.zeroshot import attribute_accuracy, evaluate

    names = ["red circle", "red ring", "blue circle", "blue ring"]
    got = attribute_accuracy(np.array([1, 1, 2, 3]), np.array([0, 1, 2, 2]), names, ["colour", "shape"])
    assert got == {"colour": 1.0, "shape": 0.5}
    assert attribute_accuracy(np.array([0]), np.array([0]), ["red circle", "ring"], ["colour", "shape"]) == {}

    src = make_eval_source(str(synth_dir), 24, batch_size=32, decode_threads=0)
    assert src.attributes == ["colour", "shape"]
    oracle = Oracle(src, src.classnames, synth_tokenizer, strict=False)
    shapes = len({n.split()[1] for n in src.classnames})

    def colour_only(images):
        right = oracle.images(images)
        row = np.argmax(right, axis=1)
        wrong = (row // shapes) * shapes + (row % shapes + 1) % shapes  # same colour, the next shape
        return np.eye(len(src.classnames), dtype=np.float32)[wrong]

    res = evaluate(str(synth_dir), colour_only, oracle.texts, image_res=24, text_len=16, retrieval=False)
    assert res["top1"] == 0.0 and res["attributes"] == {"colour": 1.0, "shape": 0.0}
