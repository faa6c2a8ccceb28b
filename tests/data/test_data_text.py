"""Tokenizer conventions, the four text reductions, and the offline part-of-speech tagger's accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pos_sample import parsed

from planner.errors import ClipaError
from trainer.data.postag import coarse, pos_tag, priority
from trainer.data.text_reduction import reduce_ids, reduce_one, reduce_texts, syntax_select, syntax_text
from trainer.data.tokenizer import ClipTokenizer, find_tokenizer, load_tokenizer, train_tokenizer

CAPTIONS = [
    "A small red circle next to a big blue square on a gray background.",
    "the camera captured a huge striped green star at the top left",
    "Two dogs are playing with a red ball in the park.",
    "Café crème, naïve façade — 東京 at night!",
] * 20


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return train_tokenizer(CAPTIONS, vocab_size=400, min_frequency=1)


# --- tokenizer ------------------------------------------------------------------------------------------------------
def test_tokenizer_conventions(tok, tmp_path):
    assert tok.pad_id == 0
    assert tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.vocab_size - 2  # EOT has the top id
    rows = tok.tokenize(CAPTIONS[:4], 16)
    assert rows.dtype == np.int32 and rows.shape == (4, 16)
    for r in rows:
        assert r[0] == tok.sot_id
        content_end = int(np.nonzero(r == tok.eot_id)[0][0])
        assert (r[content_end + 1 :] == 0).all()  # zero padding after EOT
        assert r.argmax() == content_end  # argmax pooling finds the end token
    # lower-casing: case does not change ids
    assert tok.encode("A BIG Red Circle") == tok.encode("a big red circle")
    # any unicode is encodable (byte-level), and decodes back (modulo case/spacing)
    ids = tok.encode("Café 東京 🙂")
    assert ids and all(0 < i < tok.sot_id for i in ids)
    assert "café" in tok.decode(ids)
    # round trip through a file
    path = tok.save(tmp_path / "tok.json")
    again = load_tokenizer(path)
    assert again.encode(CAPTIONS[0]) == tok.encode(CAPTIONS[0])
    assert (again.sot_id, again.eot_id, again.vocab_size) == (tok.sot_id, tok.eot_id, tok.vocab_size)


def test_foreign_tokenizer_file_is_accepted(tmp_path):
    """A tokenizer.json with OpenAI-CLIP-style special token names and its own post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "cat": 3, "[UNK]": 4}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                     special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    t.save(str(tmp_path / "tokenizer.json"))
    ct = load_tokenizer(tmp_path / "tokenizer.json")
    assert (ct.sot_id, ct.eot_id) == (0, 1)
    assert ct.encode("a cat") == [2, 3]  # its own post-processor is bypassed
    assert ct.tokenize("a cat", 6).tolist() == [[0, 2, 3, 1, 0, 0]]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ClipaError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ClipaError, match="cannot load"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ClipaError, match="no tokenizer"):
        find_tokenizer(None, str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    assert find_tokenizer(None, str(tmp_path / "train")) == str(tmp_path / "tokenizer.json")  # parent folder
    assert find_tokenizer("x.json", str(tmp_path)) == "x.json"


# --- reductions -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["truncate", "random", "block", "syntax"])
@pytest.mark.parametrize("text_len", [2, 3, 5, 8, 16, 77])
def test_every_reduction_gives_exactly_text_len(tok, method, text_len):
    rng = np.random.default_rng(0)
    out = reduce_texts(CAPTIONS[:4] + ["", "x"], tok, text_len, method, rng)
    assert out.shape == (6, text_len) and out.dtype == np.int32
    for row, text in zip(out, CAPTIONS[:4] + ["", "x"], strict=True):
        assert row[0] == tok.sot_id
        n_content = int(np.nonzero(row == tok.eot_id)[0][0]) - 1
        full = len(tok.encode(syntax_text(text, text_len - 2) if method == "syntax" else text))
        assert n_content == min(full, text_len - 2)  # N-2 content slots, filled whenever the caption is long enough


def test_truncate_keeps_the_first_tokens(tok):
    ids = tok.encode(CAPTIONS[0])
    row = reduce_one(CAPTIONS[0], tok, 8, "truncate")
    assert row.tolist() == [tok.sot_id, *ids[:6], tok.eot_id]
    short = reduce_one("red", tok, 8, "truncate")
    assert short.tolist()[: len(tok.encode("red")) + 2] == [tok.sot_id, *tok.encode("red"), tok.eot_id]


def test_random_keeps_order_and_block_is_contiguous(tok):
    ids = list(range(100, 130))
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(50):
        r = reduce_ids(ids, 6, "random", rng)
        assert len(r) == 6 and r == sorted(r) and set(r) <= set(ids)  # subset, original order
        seen.add(tuple(r))
        b = reduce_ids(ids, 6, "block", rng)
        assert b == list(range(b[0], b[0] + 6))  # one contiguous span
    assert len(seen) > 40  # really random
    assert reduce_ids(ids[:4], 6, "random", rng) == ids[:4]  # short captions untouched
    # deterministic given the seed
    a = reduce_texts(CAPTIONS[:8], tok, 6, "random", np.random.default_rng(5))
    b = reduce_texts(CAPTIONS[:8], tok, 6, "random", np.random.default_rng(5))
    assert (a == b).all()
    with pytest.raises(ValueError):
        reduce_texts(CAPTIONS[:1], tok, 6, "random", None)


def test_syntax_prefers_nouns_then_adjectives_then_verbs():
    words = ["the", "dog", "is", "running", "in", "a", "green", "park", "quickly"]
    tags = ["DT", "NN", "VBZ", "VBG", "IN", "DT", "JJ", "NN", "RB"]
    assert syntax_select(words, tags, 2) == ["dog", "park"]
    assert syntax_select(words, tags, 3) == ["dog", "green", "park"]  # original order restored
    assert syntax_select(words, tags, 4) == ["dog", "is", "green", "park"]  # stable: first verb wins the tie
    assert syntax_select(words, tags, 20) == words
    assert [priority(t) for t in ("NNS", "JJR", "VBD", "IN")] == [1, 2, 3, 4]


def test_syntax_reduction_on_real_captions_keeps_nouns(tok):
    text = "Two dogs are playing with a red ball in the park."
    row = reduce_one(text, tok, 5, "syntax")  # 3 content slots: the three nouns
    assert tok.decode(row) == "dogs ball park"
    truncated = reduce_one(text, tok, 5, "truncate")
    assert "park" not in tok.decode(truncated)
    # tags shipped by a dataset are used instead of the tagger
    tagged = [("two", "NN"), ("dogs", "CD")] + [(w, "DT") for w in "are playing with a red ball in the park .".split()]
    assert syntax_text("two dogs are playing with a red ball in the park .", 1, tagged) == "two"


def test_unknown_reduction_is_a_clipa_error(tok):
    with pytest.raises(ClipaError, match="unknown text reduction"):
        reduce_one("a cat", tok, 8, "middle")


# --- the tagger -----------------------------------------------------------------------------------------------------
def test_pos_tagger_accuracy_on_hand_labelled_captions():
    total = correct = 0
    per_class: dict[str, list[int]] = {c: [0, 0] for c in "NJVO"}
    for text, words, labels in parsed():
        tagged = pos_tag(text)
        assert [w for w, _ in tagged] == words
        for (_, tag), label in zip(tagged, labels, strict=True):
            total += 1
            hit = coarse(tag) == label
            correct += hit
            per_class[label][0] += hit
            per_class[label][1] += 1
    accuracy = correct / total
    print(json.dumps({"words": total, "accuracy": round(accuracy, 4),
                      "per_class": {c: round(a / n, 4) for c, (a, n) in per_class.items()}}))
    assert total > 300
    assert accuracy >= 0.95  # measured 0.994 (see trainer/data/postag.py)
    assert per_class["N"][0] / per_class["N"][1] >= 0.95


def test_tagger_is_offline_and_deterministic():
    a = pos_tag("A man riding a horse on a sandy beach.")
    b = pos_tag("A man riding a horse on a sandy beach.")
    assert a == b and a[1] == ("man", "NN") and a[2][1].startswith("VB")
    assert pos_tag("") == []


def test_tokenizer_training_is_deterministic(tmp_path):
    """The same captions give a byte-identical tokenizer (CLIP's </w> suffix would not: see tokenizer.py)."""
    paths = [train_tokenizer(CAPTIONS * 3, vocab_size=350).save(tmp_path / f"t{i}.json") for i in range(3)]
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()


def test_word_cache_fast_path_matches_the_library(tok):
    """``encode``'s word-level fast path (printable ASCII) gives exactly the library's ids, for every kind of text."""
    rng = np.random.default_rng(3)
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                + list(" \t\n\r.,;:!?'\"-()[]{}<>/\\@#$%^&*_+=~`|"))
    texts = list(CAPTIONS) + [
        "", " ", "  leading and trailing  ", "multi\t\twhite \n\r space", "it's the dog's ball, isn't it? I'LL go",
        "''s 's 'S 'sa x'sy 're've'm'll'd", "r2d2 and c3po: 1,234.5 -- 99%", "<pad> a <start_of_text> b <end_of_text>",
        "A <PAD> in capitals", "no<pad>space", "Café crème", "tab\x0bvertical\x0cfeed", "ctrl\x1fsep",
        "emoji 🙂 here",
        "ALL CAPS SENTENCE WITH NUMBERS 42", "....!!!???", "a" * 300,
    ]
    for _ in range(300):
        n = int(rng.integers(0, 60))
        texts.append("".join(rng.choice(alphabet, n)))
    for t in texts:
        lib = tok._tok.encode(t, add_special_tokens=False).ids
        assert tok.encode(t) == lib, repr(t)
        assert tok.encode(t) == lib, repr(t)  # again, now from the word cache
    assert tok._words  # the trained tokenizer uses the fast path (and filled the cache)
    assert tok.encode_batch(texts[:10]) == [tok._tok.encode(t, add_special_tokens=False).ids for t in texts[:10]]


def test_word_cache_is_off_for_other_pipelines(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    t = Tokenizer(models.WordLevel({"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "cat": 3, "[UNK]": 4},
                                   unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    ct = ClipTokenizer(t)
    assert ct._words is None
    assert ct.encode("a cat") == [2, 3]
