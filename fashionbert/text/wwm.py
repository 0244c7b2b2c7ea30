"""Whole-word masking (WWM) for FashionBERT's masked language modelling on mixed zh/en titles.

FashionBERT masks 15 % of *words*, not of word pieces: masking one piece of
"连衣裙" (dress) or of "hood ##ie" lets the model recover it from its
neighbours and learn little.  A BERT tokenizer splits Chinese into single
characters, and transformers' whole-word collator finds words from gaps in
the character offsets, so a run of unspaced Chinese would become one giant
"word".  Here Chinese words come from jieba segmentation mapped onto the
fast tokenizer's character offsets, and English words from the WordPiece
``##`` continuation.  :meth:`WholeWordMasker.mask_encoded` works on
pre-tokenised ids so the text+image collator can reuse the same policy.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

__all__ = ["IGNORE_INDEX", "WholeWordMasker"]

#: Label value ignored by torch's cross-entropy (and by transformers' heads).
IGNORE_INDEX = -100

# CJK ideographs (basic, extensions A/B..., compatibility), as BERT's
# _is_chinese_char: each such character is a token on its own, so adjacency of
# two CJK tokens says nothing about them being one word.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Reserved-looking vocabulary entries ([unused1], [PAD]...): never used as random replacements.
_BRACKETED = re.compile(r"^\[[^\[\]]+\]$")


_JIEBA_CACHE: dict[tuple[str, ...], Any] = {}
_JIEBA_LOCK = threading.Lock()


def _private_jieba(user_words: tuple[str, ...]) -> Any:
    """A ``jieba.Tokenizer`` of our own holding ``user_words``, one per distinct word set and process.

    A private instance keeps domain words out of the global ``jieba.dt`` that
    other code may use; it is shared between maskers with the same words
    (never mutated after creation) because loading the dictionary takes
    ~0.5 s.  jieba's "Building prefix dict" chatter is silenced.
    """
    key = tuple(sorted(set(user_words)))
    with _JIEBA_LOCK:
        seg = _JIEBA_CACHE.get(key)
        if seg is None:
            import jieba

            logging.getLogger("jieba").setLevel(logging.WARNING)
            seg = jieba.Tokenizer()
            seg.initialize()
            for word in key:
                seg.add_word(word)
            _JIEBA_CACHE[key] = seg
    return seg


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_word_char(ch: str) -> bool:
    """Alphanumeric and not CJK: the characters a sub-word split can fall between."""
    return ch.isalnum() and not _is_cjk(ch)


class WholeWordMasker:
    """Masks ``mlm_probability`` of the words of each text, all pieces of a word together.

    Args:
        tokenizer: a fast tokenizer (character offsets are required).
        mlm_probability: expected fraction of words masked per text (FashionBERT: 0.15).
        mask_replace_prob: fraction of chosen words whose tokens all become [MASK].
        random_replace_prob: fraction whose tokens become random vocabulary tokens;
            the rest (1 - both) keep their tokens but are still predicted.
        user_words: domain vocabulary (连衣裙, 卫衣, 波点...) added to a private
            jieba dictionary so it is segmented as one word.
        seed: seed of the internal ``numpy.random.Generator`` used when no rng is
            passed; ``None`` means a fresh, unpredictable seed.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        user_words: Iterable[str] = (),
        seed: int | None = 0,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("WholeWordMasker needs a fast tokenizer (character offsets)")
        if tokenizer.mask_token_id is None:
            raise ValueError("tokenizer has no mask token")
        for name, value in (
            ("mlm_probability", mlm_probability),
            ("mask_replace_prob", mask_replace_prob),
            ("random_replace_prob", random_replace_prob),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
            raise ValueError("mask_replace_prob + random_replace_prob must not exceed 1")
        self.tokenizer = tokenizer
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.user_words: tuple[str, ...] = tuple(w for w in user_words if w and w.strip())
        self.seed = seed
        self.rng = np.random.default_rng(seed)

        self.mask_token_id: int = int(tokenizer.mask_token_id)
        self.pad_token_id: int = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.special_ids: frozenset[int] = frozenset(int(i) for i in tokenizer.all_special_ids)
        vocab = tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        self._prefix = self._continuation_prefix(tokenizer)
        self._is_continuation = np.zeros(size, dtype=bool)
        if self._prefix:
            for tok, i in vocab.items():
                if tok.startswith(self._prefix) and len(tok) > len(self._prefix):
                    self._is_continuation[i] = True
        candidates = sorted(
            i for tok, i in vocab.items() if i not in self.special_ids and not _BRACKETED.match(tok)
        )
        if not candidates:
            raise ValueError("tokenizer vocabulary has no non-special tokens")
        self._random_candidates = np.asarray(candidates, dtype=np.int64)
        self._jieba: Any = None

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _continuation_prefix(tokenizer: PreTrainedTokenizerFast) -> str | None:
        """The WordPiece continuation prefix ("##"), or None for BPE/Unigram tokenizers."""
        model = tokenizer.backend_tokenizer.model
        prefix = getattr(model, "continuing_subword_prefix", None)
        return prefix or None

    def _segmenter(self) -> Any:
        """The private jieba tokenizer for this masker's user words, created lazily."""
        if self._jieba is None:
            self._jieba = _private_jieba(self.user_words)
        return self._jieba

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers pickle the collator: the jieba instance holds a
        # lock and a large dictionary, so it is rebuilt lazily in the worker.
        state = self.__dict__.copy()
        state["_jieba"] = None
        return state

    # ------------------------------------------------------------- word ids
    def word_ids(
        self,
        text: str,
        offsets: Sequence[tuple[int, int]],
        input_ids: Sequence[int] | None = None,
        special_tokens_mask: Sequence[int] | None = None,
    ) -> list[int | None]:
        """Map each token to the index of its word (0, 1, ... in order of appearance); None for special tokens.

        A token belongs to the jieba word whose character span contains the
        token's start offset.  A token that continues the previous one joins
        its word: a ``##`` piece (needs ``input_ids``), or, for tokenizers
        without ``##``, a token starting exactly where the previous one ended
        between two non-CJK alphanumerics.  A token whose span straddles two
        jieba words (possible with BPE/Unigram pieces) fuses them into one.
        Special tokens are those flagged in ``special_tokens_mask``, those
        whose id is in ``all_special_ids`` ([CLS] [SEP] [PAD] [MASK], and
        [UNK]: an unknown piece is nothing worth predicting, as in
        transformers' collators), zero-width tokens such as (0, 0), and
        tokens covering only whitespace.
        """
        n = len(offsets)
        spans = [(w, s, e) for w, s, e in self._segmenter().tokenize(text) if w.strip()]
        starts = [s for _, s, _ in spans]
        parent = list(range(len(spans)))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(x: int, y: int) -> None:
            rx, ry = find(x), find(y)
            if rx != ry:
                parent[max(rx, ry)] = min(rx, ry)

        token_word: list[int | None] = [None] * n
        prev: int | None = None  # index of the previous non-special token
        for i, (s, e) in enumerate(offsets):
            s, e = int(s), int(e)
            special = (
                e <= s
                or not text[s:e].strip()  # e.g. a lone SentencePiece "▁": nothing to predict
                or (special_tokens_mask is not None and bool(special_tokens_mask[i]))
                or (input_ids is not None and int(input_ids[i]) in self.special_ids)
            )
            if special or not spans:
                prev = None
                continue
            k = max(0, bisect_right(starts, s) - 1)  # jieba word containing the start
            last = max(k, bisect_right(starts, e - 1) - 1)
            for j in range(k + 1, last + 1):  # token straddles several jieba words
                union(k, j)
            prev_word = token_word[prev] if prev is not None else None
            if prev is not None and prev_word is not None and self._continues(text, offsets, input_ids, prev, i):
                union(prev_word, k)
            token_word[i] = k
            prev = i

        # Renumber union-find roots densely in order of first appearance.
        dense: dict[int, int] = {}
        out: list[int | None] = []
        for k in token_word:
            if k is None:
                out.append(None)
            else:
                out.append(dense.setdefault(find(k), len(dense)))
        return out

    def _continues(
        self,
        text: str,
        offsets: Sequence[tuple[int, int]],
        input_ids: Sequence[int] | None,
        prev: int,
        i: int,
    ) -> bool:
        """Whether token i is a sub-word continuation of token prev."""
        if self._prefix is not None and input_ids is not None:
            tid = int(input_ids[i])
            return 0 <= tid < len(self._is_continuation) and bool(self._is_continuation[tid])
        s, prev_end = int(offsets[i][0]), int(offsets[prev][1])
        return s == prev_end and 0 < s < len(text) and _is_word_char(text[s - 1]) and _is_word_char(text[s])

    def encode(self, text: str, max_length: int = 64) -> tuple[list[int], list[int | None]]:
        """Tokenise one text (with [CLS]/[SEP], truncated) and return (input_ids, word_ids)."""
        enc = self.tokenizer(
            text,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        ids = list(enc["input_ids"])
        return ids, self.word_ids(text, enc["offset_mapping"], ids, enc["special_tokens_mask"])

    # -------------------------------------------------------------- masking
    def mask_encoded(
        self,
        input_ids: Sequence[int],
        word_ids: Sequence[int | None],
        rng: np.random.Generator | None = None,
    ) -> tuple[list[int], list[int]]:
        """Whole-word mask one pre-tokenised sequence; returns (masked_ids, labels).

        Positions with word id None (special tokens, padding, image patches in
        the joint sequence) and special-token ids are never chosen.  The
        number of words masked is ``floor(p*n)`` plus a Bernoulli draw of the
        remainder, so the expected rate is exactly ``mlm_probability`` even
        for short titles where plain rounding would be biased.  Each chosen
        word draws once: all its tokens get [MASK] (80 %), random tokens
        (10 %) or stay (10 %); labels hold the original ids of all its tokens.
        """
        if len(input_ids) != len(word_ids):
            raise ValueError(f"input_ids ({len(input_ids)}) and word_ids ({len(word_ids)}) differ in length")
        rng = self.rng if rng is None else rng
        masked = [int(t) for t in input_ids]
        labels = [IGNORE_INDEX] * len(masked)
        groups: dict[int, list[int]] = {}
        for pos, (tid, wid) in enumerate(zip(masked, word_ids)):
            if wid is not None and tid not in self.special_ids:
                groups.setdefault(wid, []).append(pos)
        n = len(groups)
        if n == 0:
            return masked, labels
        expected = self.mlm_probability * n
        k = math.floor(expected)
        k = min(n, k + int(rng.random() < expected - k))
        if k == 0:
            return masked, labels
        words = list(groups.values())  # in order of first appearance
        for w in sorted(rng.choice(n, size=k, replace=False).tolist()):
            positions = words[w]
            u = rng.random()
            if u < self.mask_replace_prob:
                replacement = [self.mask_token_id] * len(positions)
            elif u < self.mask_replace_prob + self.random_replace_prob:
                replacement = rng.choice(self._random_candidates, size=len(positions)).tolist()
            else:
                replacement = [masked[p] for p in positions]
            for p, r in zip(positions, replacement):
                labels[p] = masked[p]
                masked[p] = int(r)
        return masked, labels

    def mask(
        self,
        texts: Sequence[str],
        max_length: int = 64,
        rng: np.random.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise and whole-word mask a batch of texts, padded to its longest sequence.

        Returns ``input_ids`` (masked), ``attention_mask``, ``token_type_ids``
        (zeros: segment T) and ``labels`` (original id where masked, -100
        elsewhere), all int64 of shape (batch, length).  Without ``rng`` the
        masker's own seeded generator is used (and advanced).
        """
        if isinstance(texts, str):
            raise TypeError("mask() takes a sequence of texts, not a single string")
        rng = self.rng if rng is None else rng
        texts = list(texts)
        if not texts:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {k: empty.clone() for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
        enc = self.tokenizer(  # one batched call: the Rust side tokenises in parallel
            texts,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        rows: list[tuple[list[int], list[int]]] = []
        for b, text in enumerate(texts):
            ids = list(enc["input_ids"][b])
            wids = self.word_ids(text, enc["offset_mapping"][b], ids, enc["special_tokens_mask"][b])
            rows.append(self.mask_encoded(ids, wids, rng))
        length = max((len(ids) for ids, _ in rows), default=0)
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        for b, (ids, labs) in enumerate(rows):
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[b, : len(labs)] = torch.tensor(labs, dtype=torch.long)
            attention[b, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "token_type_ids": torch.zeros((batch, length), dtype=torch.long),
            "labels": labels,
        }
