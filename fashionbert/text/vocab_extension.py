"""Growing a WordPiece vocabulary for a new category, and the model's embeddings with it.

A tokenizer trained on the old categories' titles has never seen "tote" or
"托特包": English words fall apart into generic pieces ("to", "##te") and
unseen Chinese characters become ``[UNK]``, so the new category's most
telling words are either shared with unrelated ones or lost. Continue-
pretraining adds them as whole tokens:

* :func:`find_new_words` - words of the new texts (after the tokenizer's own
  normaliser and pre-tokenizer) that occur at least ``min_count`` times and
  that the tokenizer splits into several pieces or maps to ``[UNK]``;
* :func:`extend_tokenizer` - the same WordPiece pipeline with those words
  appended, so every old token keeps its id (old embeddings stay valid);
* :func:`init_new_embeddings` - the model's word-embedding matrix (and with
  it the tied MLM decoder and its bias) grown to the new size, each new row
  set to the mean of the rows of the pieces the old tokenizer used for that
  word. The new token starts where the model's understanding of the word
  already was, instead of at a random point it must first be pulled from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

__all__ = ["extend_tokenizer", "find_new_words", "grow_vocabulary", "init_new_embeddings", "is_wordpiece"]


def is_wordpiece(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether the tokenizer is a WordPiece one that :func:`extend_tokenizer` can grow in place."""
    return isinstance(tokenizer, BertTokenizerFast) and type(tokenizer.backend_tokenizer.model).__name__ == "WordPiece"


def _words(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> Counter[str]:
    backend = tokenizer.backend_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        if not text:
            continue
        normal = backend.normalizer.normalize_str(text) if backend.normalizer else text
        if backend.pre_tokenizer:
            counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normal))
        else:
            counts.update(normal.split())
    return counts


def find_new_words(
    tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], min_count: int = 3, max_new: int = 1000
) -> list[str]:
    """Frequent words the tokenizer does not hold whole, most frequent first (ties: alphabetical).

    Punctuation and digits-only words are skipped: a new token for "2024"
    or "!" teaches nothing about the category.
    """
    vocab = tokenizer.get_vocab()
    candidates = []
    for word, count in _words(tokenizer, texts).items():
        if count < min_count or word in vocab or not any(ch.isalpha() for ch in word):
            continue
        pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
        if len(pieces) > 1 or tokenizer.unk_token_id in pieces:
            candidates.append((-count, word))
    return [w for _, w in sorted(candidates)[:max_new]]


def extend_tokenizer(tokenizer: PreTrainedTokenizerFast, words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A copy of a WordPiece tokenizer with ``words`` appended to its vocabulary (old ids unchanged).

    Only WordPiece vocabularies are grown as real vocabulary entries (found
    by the WordPiece model inside the normal pipeline); for anything else
    the caller should not extend - added tokens would bypass normalisation
    and match inside other words.
    """
    if not is_wordpiece(tokenizer):
        raise ValueError(f"can only extend a WordPiece tokenizer, not {type(tokenizer).__name__}")
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
    if list(vocab.values()) != list(range(len(vocab))):
        raise ValueError("the tokenizer's vocabulary ids are not contiguous; cannot append to it")
    for word in words:
        if word not in vocab:
            vocab[word] = len(vocab)
    grown = BertTokenizerFast(
        vocab=vocab,
        do_lower_case=tokenizer.do_lower_case,
        tokenize_chinese_chars=tokenizer.init_kwargs.get("tokenize_chinese_chars", True),
        strip_accents=tokenizer.init_kwargs.get("strip_accents"),
        model_max_length=tokenizer.model_max_length,
    )
    if [grown.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens] != tokenizer.all_special_ids:
        raise RuntimeError("extending the vocabulary moved a special token")
    return grown


def init_new_embeddings(
    model: torch.nn.Module, old_tokenizer: PreTrainedTokenizerFast, new_tokenizer: PreTrainedTokenizerFast
) -> list[str]:
    """Resize ``model``'s token embeddings to ``new_tokenizer`` and set each new row to its sub-token mean.

    ``model`` is a transformers model with tied input/output embeddings
    (FashionBERT's MLM decoder); the decoder bias of a new token is the mean
    of its pieces' biases, so its prior probability starts near theirs.
    Returns the new tokens in id order.
    """
    old_size, new_size = len(old_tokenizer), len(new_tokenizer)
    if new_size <= old_size:
        return []
    added = new_tokenizer.convert_ids_to_tokens(list(range(old_size, new_size)))
    model.resize_token_embeddings(new_size, mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    bias = getattr(output, "bias", None) if output is not None else None
    with torch.no_grad():
        for new_id, token in zip(range(old_size, new_size), added):
            pieces = old_tokenizer.encode(token, add_special_tokens=False) or [old_tokenizer.unk_token_id]
            embeddings[new_id] = embeddings[pieces].mean(0)
            if bias is not None:
                bias[new_id] = bias[pieces].mean()
    return added


def grow_vocabulary(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], min_count: int = 3,
    max_new: int = 1000,
) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """:func:`find_new_words` + :func:`extend_tokenizer` + :func:`init_new_embeddings` in one go.

    Returns the grown tokenizer (``tokenizer`` itself when nothing was missing) and the new tokens.
    """
    words = find_new_words(tokenizer, texts, min_count, max_new)
    if not words:
        return tokenizer, []
    grown = extend_tokenizer(tokenizer, words)
    return grown, init_new_embeddings(model, tokenizer, grown)
