"""The offline English part-of-speech tagger behind CLIPA's syntax text reduction.

CLIPA tags captions with NLTK's averaged-perceptron tagger, whose model is a separate download (``nltk.download``),
which this project cannot do at run time. We use TextBlob's ``PatternTagger`` instead: the pattern.en Brill-style
tagger (a 100k-word lexicon from the Penn Treebank / Brown corpora, morphological rules for unknown words and
contextual rules), whose model files ship inside the ``textblob`` wheel from PyPI (MIT licence), so ``pip install``
is all it needs. It emits Penn Treebank tags like NLTK's, which is all the syntax reduction looks at
(NN* > JJ* > VB* > rest). On the 30 hand-labelled captions (308 words) in ``tests/data/pos_sample.py`` it gets
the coarse class (noun / adjective / verb / other) right for 98.1% of words as shipped by textblob, and 99.4% with
our one rule (a capitalised first word is looked up lower-cased); that sample also chose the rule, so take the
second number as optimistic. ``tests/data/test_data_postag.py`` measures it.

Words are split here (not by the tagger) with a regex close to NLTK's ``word_tokenize`` for captions: words with
inner apostrophes or hyphens stay whole, punctuation runs are separate tokens. Results are cached per caption, since
captions repeat every epoch.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

_WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[^\w\s]+|_+")
_lock = threading.Lock()
_parser = None


def split_words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _get_parser():
    global _parser
    if _parser is None:
        with _lock:  # the lexicon is loaded lazily by textblob on first use; do it once, not once per thread
            if _parser is None:
                from textblob.en import parser

                parser.find_tags(["warm", "up"])
                _parser = parser
    return _parser


@lru_cache(maxsize=1 << 16)
def _tag_cached(text: str) -> tuple[tuple[str, str], ...]:
    words = split_words(text)
    if not words:
        return ()
    # A capital on the first word says nothing about proper nouns; the lexicon tagger would read "Black and white
    # photo" as NNP and so rank a colour word as a noun. Lower-case it (only plain capitalised words, not "NASA").
    query = list(words)
    if query[0][:1].isupper() and query[0][1:].islower():
        query[0] = query[0].lower()
    tagged = _get_parser().find_tags(query)
    # The parser returns one [word, tag] per input token (it does not re-tokenise a list).
    return tuple((w, t) for w, (_, t) in zip(words, tagged, strict=True))


def pos_tag(text: str) -> list[tuple[str, str]]:
    """``[(word, penn_tag), ...]`` for a caption, in order."""
    return list(_tag_cached(text))


def priority(tag: str) -> int:
    """CLIPA's syntax-masking priority: nouns 1, adjectives 2, verbs 3, everything else 4 (lower is kept first)."""
    if tag.startswith("NN"):
        return 1
    if tag.startswith("JJ"):
        return 2
    if tag.startswith("VB"):
        return 3
    return 4


def coarse(tag: str) -> str:
    """The four classes the syntax reduction distinguishes: N, J, V, O."""
    return "NJVO"[priority(tag) - 1]
