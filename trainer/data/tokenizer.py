"""The text tokenizer: byte-level BPE through the ``tokenizers`` library, with CLIP's conventions.

Conventions (as OpenAI CLIP / OpenCLIP): text is whitespace-cleaned and lower-cased; words are split with CLIP's
pre-tokenisation pattern; byte-level BPE, so no character is ever unknown; every caption is ``[SOT] tokens... [EOT]``
padded with id 0. One deliberate difference: CLIP marks word *ends* with a ``</w>`` suffix, we mark word *starts* with
the byte-level space symbol (GPT-2 style ``Ġ``). Both tell the model where words begin, but the ``tokenizers``
library's BPE trainer numbers suffix tokens in hash-map order, so training with ``</w>`` gives a different tokenizer
on every run (huggingface/tokenizers issue 1794); with the prefix it is deterministic. Tokenizers trained here put ``<pad>`` at id 0 and the start/end tokens at the two highest ids, so that the
end token has the top id in every row (text towers that pool at ``argmax(ids)``, as CLIP's does, rely on this).

A user-supplied ``tokenizer.json`` (for example OpenAI CLIP's, or a BERT one) is accepted: its start/end tokens are
found by name (``<|startoftext|>``/``<|endoftext|>``, ``[CLS]``/``[SEP]``, ...), its own post-processor is bypassed,
and padding is always id 0, as in CLIP.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from planner.errors import ClipaError

PAD = "<pad>"
SOT = "<start_of_text>"
EOT = "<end_of_text>"
_SOT_NAMES = (SOT, "<|startoftext|>", "<s>", "[CLS]", "<bos>")
_EOT_NAMES = (EOT, "<|endoftext|>", "</s>", "[SEP]", "<eos>")
# CLIP's pre-tokenisation regex (simple_tokenizer.py), in the tokenizers library's regex dialect.
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# The word-level fast path of ``ClipTokenizer.encode`` (see there): CLIP_PATTERN for lower-cased ASCII text, and the
# characters for which Python's and the tokenizers library's regex classes (\s, \p{L}, \p{N}) provably agree.
_ASCII_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
_ASCII_SAFE = re.compile(r"[\x20-\x7e\t\n\r]*")
WORD_CACHE_SIZE = 200_000  # distinct words whose ids are kept (a few tens of MB at most)

# Rust-side parallelism would fight the decode threads for the two cores, and forks after it has started warn loudly.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _new_clip_bpe():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            # byte-level alphabet (no unknown characters); the prefix space marks each word's start
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


class ClipTokenizer:
    """CLIP-convention wrapper around a ``tokenizers.Tokenizer``.

    ``encode(text)`` gives content ids only (no start/end); ``tokenize(texts, n)`` gives the truncated int32
    ``[len(texts), n]`` array with start/end tokens and zero padding (text reductions live in ``text_reduction``).
    """

    pad_id = 0

    def __init__(self, tokenizer, path: str | None = None):
        self._tok = tokenizer
        self.path = path
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.sot_id = next((vocab[n] for n in _SOT_NAMES if n in vocab), None)
        self.eot_id = next((vocab[n] for n in _EOT_NAMES if n in vocab), None)
        if self.sot_id is None or self.eot_id is None:
            raise ClipaError(
                "tokenizer", f"{path or 'tokenizer'} has no start/end tokens (looked for {_SOT_NAMES} / {_EOT_NAMES})"
            )
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._special = {self.sot_id, self.eot_id, self.pad_id}
        self._words: dict[str, list[int]] | None = {} if _is_clip_bpe(tokenizer) else None
        added = (tokenizer.get_added_tokens_decoder().values()
                 if hasattr(tokenizer, "get_added_tokens_decoder") else None)
        self._added = None if added is None else [a.content for a in added] + [a.content.lower() for a in added]
        # the id text outside the vocabulary maps to (WordLevel/WordPiece models); None for byte-level BPE, which
        # encodes any text. Used to tell a tokenizer made for other data (clipa rehearse).
        unk = getattr(tokenizer.model, "unk_token", None)
        self.unknown_id = tokenizer.token_to_id(unk) if isinstance(unk, str) else None

    # --- loading / saving -------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> ClipTokenizer:
        from tokenizers import Tokenizer

        path = str(path)
        try:
            if "://" in path:
                import fsspec

                with fsspec.open(path, "r") as f:
                    tok = Tokenizer.from_str(f.read())
            else:
                if not os.path.exists(path):
                    raise FileNotFoundError(path)
                tok = Tokenizer.from_file(path)
        except FileNotFoundError:
            raise ClipaError("tokenizer", f"file not found: {path}") from None
        except Exception as e:  # tokenizers raises plain Exception on malformed JSON
            raise ClipaError("tokenizer", f"cannot load {path}: {str(e).splitlines()[0] if str(e) else e}") from None
        return cls(tok, path)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self._tok.save(str(tmp))
        os.replace(tmp, path)
        return path

    # --- encoding ---------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Content token ids of one text (no start/end tokens; the file's own post-processor is bypassed).

        Fast path (tokenizers trained here, printable-ASCII text): the library's pipeline is normalise (NFC, collapse
        whitespace, strip, lower-case), split into words with CLIP_PATTERN, then BPE each word on its own. For such
        text that is exactly ``lower()`` + a plain-``re`` split + per-word ids, and the ids of a word never change, so
        they are cached (the library's own cache only covers the BPE merges; its per-call normalisation,
        pre-tokenisation and ``Encoding`` construction cost ~8x the cached lookup). Any other text, a text containing
        an added token's literal (``<pad>``...), or a tokenizer with another pipeline goes through the library.
        ``tests/data/test_data_text.py`` checks the two paths give identical ids.
        """
        words = self._words
        if words is None or not _ASCII_SAFE.fullmatch(text) or self._has_added(text):
            return self._tok.encode(text, add_special_tokens=False).ids
        pieces = _ASCII_PATTERN.findall(text.lower())
        got = [words.get(w) for w in pieces]
        if None in got:
            missing = list(dict.fromkeys(w for w, g in zip(pieces, got) if g is None))
            fresh = {w: e.ids for w, e in zip(missing, self._tok.encode_batch(missing, add_special_tokens=False))}
            if len(words) + len(fresh) > WORD_CACHE_SIZE:
                words.clear()
            words.update(fresh)  # (decode threads share the cache; each call reads only its own `got`/`fresh`)
            got = [g if g is not None else fresh[w] for w, g in zip(pieces, got)]
        out: list[int] = []
        for g in got:
            out += g
        return out

    def _has_added(self, text: str) -> bool:
        if self._added is None:
            return True
        for a in self._added:
            if a in text:
                return True
        low = text.lower()
        return any(a in low for a in self._added)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) not in self._special]
        return " ".join(self._tok.decode(ids).replace("</w>", " ").split())

    def tokenize(self, texts: str | Sequence[str], text_len: int) -> np.ndarray:
        """``[SOT] content [EOT]`` truncated to ``text_len`` (the end token kept last), zero-padded, int32."""
        from trainer.data.text_reduction import reduce_texts

        if isinstance(texts, str):
            texts = [texts]
        return reduce_texts(texts, self, text_len, "truncate")


def _pipeline_config(tok) -> dict:
    d = json.loads(tok.to_str())
    model = d.get("model") or {}
    return {"normalizer": d.get("normalizer"), "pre_tokenizer": d.get("pre_tokenizer"), "model": model.get("type"),
            "dropout": model.get("dropout"), "padding": d.get("padding"), "truncation": d.get("truncation")}


_CLIP_BPE_CONFIG: dict | None = None


def _is_clip_bpe(tok) -> bool:
    """Whether ``tok`` normalises and pre-tokenises exactly as ``_new_clip_bpe`` (deterministic BPE, no padding or
    truncation): only then is the word-level fast path of ``ClipTokenizer.encode`` the same function."""
    global _CLIP_BPE_CONFIG
    try:
        if _CLIP_BPE_CONFIG is None:
            _CLIP_BPE_CONFIG = _pipeline_config(_new_clip_bpe())
        return _pipeline_config(tok) == _CLIP_BPE_CONFIG
    except Exception:  # an exotic tokenizer object: use the library for everything
        return False


def train_tokenizer(captions: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> ClipTokenizer:
    """Train a CLIP-convention BPE on captions: ``<pad>`` = 0, start/end tokens at the two highest ids.

    Deterministic: the same captions give a byte-identical tokenizer."""
    from tokenizers import pre_tokenizers, trainers

    if vocab_size < 300:
        raise ClipaError("vocab_size", f"{vocab_size} is too small (the byte alphabet alone is 256 tokens)")
    tok = _new_clip_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,  # the start/end tokens are added after training, at the top of the id range
        min_frequency=min_frequency,
        special_tokens=[PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    tok.add_special_tokens([SOT, EOT])
    if tok.token_to_id(PAD) != 0:  # pragma: no cover - guarded by the trainer's contract
        raise RuntimeError("BPE trainer did not put <pad> at id 0")
    return ClipTokenizer(tok)


def load_tokenizer(path: str | Path) -> ClipTokenizer:
    return ClipTokenizer.from_file(path)


def find_tokenizer(explicit: str | None, data: str | None) -> str:
    """The tokenizer file a run uses: the spec's ``tokenizer``, else ``tokenizer.json`` in (or above) the data folder."""
    if explicit:
        return explicit
    if data and "{" not in data and "://" not in data:
        p = Path(data)
        folder = p if p.is_dir() else p.parent
        for cand in (folder / "tokenizer.json", folder.parent / "tokenizer.json"):
            if cand.exists():
                return str(cand)
    elif data and "://" in data:
        base = data.rstrip("/")
        if "{" in base or base.endswith(".tar"):
            base = base.rsplit("/", 1)[0]
        return base + "/tokenizer.json"
    raise ClipaError(
        "tokenizer", f"no tokenizer given and no tokenizer.json beside the data ({data}); "
        "train one with: clipa data tokenizer --data DIR"
    )


def captions_from_shards(data: str, limit: int | None = None, seen: dict[str, int] | None = None) -> Iterable[str]:
    """Every caption in a dataset's shards (any source ``list_shards`` reads: folder, brace pattern, bucket URL), in
    shard order, up to ``limit`` (for tokenizer training). ``seen`` counts the shards opened and of how many."""
    from trainer.data.reader import iter_shard_samples, list_shards

    n = 0
    urls = list_shards(data)
    if seen is not None:
        seen.update(shards=0, of=len(urls))
    for url in urls:
        if seen is not None:
            seen["shards"] += 1
        for sample in iter_shard_samples(url, stats=None):
            raw = sample.get("txt")
            if raw is None:
                continue
            yield raw.decode("utf-8", errors="replace")
            n += 1
            if limit is not None and n >= limit:
                return


def tokenizer_info(tok: ClipTokenizer) -> dict:
    return {"path": tok.path, "vocab_size": tok.vocab_size, "sot_id": tok.sot_id, "eot_id": tok.eot_id, "pad_id": 0}
