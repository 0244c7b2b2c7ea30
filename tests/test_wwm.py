"""Tests for fashionbert.text.wwm: jieba/WordPiece whole-word masking for MLM."""

from __future__ import annotations

import os
import pickle
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from fashionbert.text import IGNORE_INDEX, WholeWordMasker, train_tokenizer
from tests.text_corpus import COLOURS, ITEMS, MARKETING, PATTERNS, make_titles

# Words unseen in training split into "##" pieces with the trained vocabulary.
RARE = ["blueshirtdress", "hoodiedresses", "zebra"]
WORDS = COLOURS + ITEMS + MARKETING + PATTERNS + RARE
USER_WORDS = ["连衣裙", "卫衣", "波点", "衬衫", "T恤"]

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)
texts_st = st.lists(
    st.tuples(st.sampled_from(WORDS), st.sampled_from(["", " "])), min_size=1, max_size=14
).map(lambda parts: "".join(w + sep for w, sep in parts).strip())



@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(make_titles(400))


@pytest.fixture(scope="session")
def masker(tokenizer: PreTrainedTokenizerFast) -> WholeWordMasker:
    return WholeWordMasker(tokenizer, user_words=USER_WORDS, seed=0)


@pytest.fixture(scope="session")
def heavy(tokenizer: PreTrainedTokenizerFast) -> WholeWordMasker:
    """Masks half the words, so property tests see many masked words per example."""
    return WholeWordMasker(tokenizer, mlm_probability=0.5, user_words=USER_WORDS, seed=0)


def _groups(word_ids: list[int | None]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for pos, w in enumerate(word_ids):
        if w is not None:
            groups.setdefault(w, []).append(pos)
    return groups


@SETTINGS
@given(text=texts_st, seed=st.integers(0, 2**32 - 1))
def test_masking_invariants(heavy: WholeWordMasker, text: str, seed: int) -> None:
    ids, wids = heavy.encode(text, max_length=64)
    masked, labels = heavy.mask_encoded(ids, wids, np.random.default_rng(seed))
    assert len(masked) == len(labels) == len(ids)
    special = heavy.special_ids
    for pos, (orig, new, lab, w) in enumerate(zip(ids, masked, labels, wids)):
        if orig in special:  # [CLS]/[SEP]: never a word, never masked or labelled
            assert w is None and lab == IGNORE_INDEX and new == orig
        if lab == IGNORE_INDEX:
            assert new == orig
        else:
            assert lab == orig  # labels hold the original ids
            assert new not in special or new == heavy.mask_token_id
    for positions in _groups(wids).values():  # a word is masked whole or not at all
        flags = {labels[p] != IGNORE_INDEX for p in positions}
        assert len(flags) == 1
        if flags == {True}:  # one decision per word
            kinds = {
                "mask" if masked[p] == heavy.mask_token_id else "keep" if masked[p] == ids[p] else "random"
                for p in positions
            }
            assert kinds in ({"mask"}, {"keep"}) or "mask" not in kinds


@SETTINGS
@given(text=texts_st)
def test_word_ids_follow_jieba_and_wordpiece(masker: WholeWordMasker, text: str) -> None:
    ids, wids = masker.encode(text)
    tokens = masker.tokenizer.convert_ids_to_tokens(ids)
    assert wids[0] is None and wids[-1] is None
    seen = [w for w in wids if w is not None]
    assert seen == sorted(seen) and set(seen) == set(range(len(set(seen))))  # dense, in order
    for i in range(1, len(tokens) - 1):
        if tokens[i].startswith("##"):
            assert wids[i] == wids[i - 1], (text, tokens)


def test_user_word_is_one_word(masker: WholeWordMasker) -> None:
    ids, wids = masker.encode("红色连衣裙")
    assert masker.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "红", "色", "连", "衣", "裙", "[SEP]"]
    assert wids == [None, 0, 0, 1, 1, 1, None]
    rng = np.random.default_rng(1)
    dress_masked = 0
    for _ in range(300):
        _, labels = masker.mask_encoded(ids, wids, rng)
        flags = [lab != IGNORE_INDEX for lab in labels[3:6]]
        assert all(flags) or not any(flags)
        dress_masked += all(flags)
    assert 0 < dress_masked < 300


def test_english_pieces_join_their_head(masker: WholeWordMasker) -> None:
    ids, wids = masker.encode("新款 blueshirtdress 卫衣")
    tokens = masker.tokenizer.convert_ids_to_tokens(ids)
    head, end = 3, tokens.index("卫")  # [CLS] 新 款 | blue ##... | 卫 衣 [SEP]
    assert end - head > 1 and all(t.startswith("##") for t in tokens[head + 1 : end])
    assert len({wids[i] for i in range(head, end)}) == 1
    assert wids[1] == wids[2] != wids[head] != wids[end] == wids[end + 1]
    rng = np.random.default_rng(0)
    for _ in range(100):
        _, labels = masker.mask_encoded(ids, wids, rng)
        flags = {labels[i] != IGNORE_INDEX for i in range(head, end)}
        assert len(flags) == 1


def test_private_jieba_leaves_global_untouched(tokenizer: PreTrainedTokenizerFast) -> None:
    import jieba

    m = WholeWordMasker(tokenizer, user_words=["奶油风开衫"], seed=0)
    _, wids = m.encode("奶油风开衫")
    assert len(set(w for w in wids if w is not None)) == 1
    assert "奶油风开衫" not in jieba.dt.FREQ  # the global dictionary never sees user words


def test_offsets_only_fallback_and_straddling_tokens(masker: WholeWordMasker) -> None:
    # No input_ids: continuation is inferred from adjacent offsets between
    # non-CJK alphanumerics (BPE/Unigram tokenizers have no "##").
    text = "hoodies红色 dress"
    offsets = [(0, 0), (0, 4), (4, 7), (7, 8), (8, 9), (10, 15), (0, 0)]
    assert masker.word_ids(text, offsets) == [None, 0, 0, 1, 1, 2, None]
    # A piece spanning two jieba words ("色连" across 红色|连衣裙) fuses them.
    assert masker.word_ids("红色连衣裙", [(0, 1), (1, 3), (3, 5)]) == [0, 0, 0]


def test_masking_rate_is_fifteen_percent_of_words(masker: WholeWordMasker) -> None:
    rng = np.random.default_rng(123)
    words = masked_words = 0
    for text in make_titles(2000, seed=7):
        ids, wids = masker.encode(text)
        _, labels = masker.mask_encoded(ids, wids, rng)
        groups = _groups(wids)
        words += len(groups)
        masked_words += sum(labels[pos[0]] != IGNORE_INDEX for pos in groups.values())
    rate = masked_words / words
    assert abs(rate - 0.15) < 0.02, rate


def test_80_10_10_split(heavy: WholeWordMasker) -> None:
    rng = np.random.default_rng(5)
    counts = {"mask": 0, "random": 0, "keep": 0}
    for text in make_titles(1500, seed=3):
        ids, wids = heavy.encode(text)
        masked, labels = heavy.mask_encoded(ids, wids, rng)
        for positions in _groups(wids).values():
            if labels[positions[0]] == IGNORE_INDEX:
                continue
            if all(masked[p] == heavy.mask_token_id for p in positions):
                counts["mask"] += 1
            elif all(masked[p] == ids[p] for p in positions):
                counts["keep"] += 1
            else:
                counts["random"] += 1
    total = sum(counts.values())
    assert total > 3000
    assert abs(counts["mask"] / total - 0.8) < 0.03, counts
    assert abs(counts["random"] / total - 0.1) < 0.02, counts
    assert abs(counts["keep"] / total - 0.1) < 0.02, counts


def test_mask_batch_padding_and_consistency(masker: WholeWordMasker) -> None:
    texts = ["红色连衣裙", "ins风 新款 韩版 蓝色 波点 卫衣 long sleeve hoodie oversize vintage", "dress"]
    batch = masker.mask(texts, max_length=64, rng=np.random.default_rng(9))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [len(masker.encode(t)[0]) for t in texts]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["attention_mask"].sum(1).tolist() == lengths
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == masker.pad_token_id).all()
    assert (batch["labels"][pad] == IGNORE_INDEX).all()
    assert (batch["token_type_ids"] == 0).all()
    # mask() == encode + mask_encoded with the same rng stream
    rng = np.random.default_rng(9)
    for b, t in enumerate(texts):
        masked, labels = masker.mask_encoded(*masker.encode(t), rng)
        assert batch["input_ids"][b, : len(masked)].tolist() == masked
        assert batch["labels"][b, : len(labels)].tolist() == labels


def test_truncation(masker: WholeWordMasker) -> None:
    long_text = " ".join(["红色 连衣裙 dress"] * 40)
    batch = masker.mask([long_text, "卫衣"], max_length=16)
    assert batch["input_ids"].shape == (2, 16)
    sep = masker.tokenizer.sep_token_id
    assert batch["labels"][0, -1] == IGNORE_INDEX and batch["input_ids"][0, -1] == sep


def test_determinism_per_seed(tokenizer: PreTrainedTokenizerFast) -> None:
    texts = make_titles(64, seed=11)
    a = WholeWordMasker(tokenizer, user_words=USER_WORDS, seed=42).mask(texts)
    b = WholeWordMasker(tokenizer, user_words=USER_WORDS, seed=42).mask(texts)
    c = WholeWordMasker(tokenizer, user_words=USER_WORDS, seed=43).mask(texts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])
    m = WholeWordMasker(tokenizer, seed=None)
    x = m.mask(texts, rng=np.random.default_rng(3))
    y = m.mask(texts, rng=np.random.default_rng(3))
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_mask_encoded_skips_none_positions(masker: WholeWordMasker) -> None:
    # Joint text+image sequences: patch positions carry word id None.
    ids = [2, 10, 11, 3] + [0] * 8
    wids: list[int | None] = [None, 0, 1, None] + [None] * 8
    everything = WholeWordMasker(masker.tokenizer, mlm_probability=1.0, seed=0)
    masked, labels = everything.mask_encoded(ids, wids, np.random.default_rng(0))
    assert labels[:4] == [IGNORE_INDEX, 10, 11, IGNORE_INDEX]
    assert labels[4:] == [IGNORE_INDEX] * 8 and masked[4:] == ids[4:]
    with pytest.raises(ValueError):
        masker.mask_encoded(ids, wids[:3])


def test_pickle_and_validation(masker: WholeWordMasker, tokenizer: PreTrainedTokenizerFast) -> None:
    clone = pickle.loads(pickle.dumps(masker))
    assert clone.encode("波点连衣裙") == masker.encode("波点连衣裙")
    for kwargs in ({"mlm_probability": 1.5}, {"mask_replace_prob": 0.95, "random_replace_prob": 0.1}):
        with pytest.raises(ValueError):
            WholeWordMasker(tokenizer, **kwargs)
    with pytest.raises(TypeError):
        masker.mask("红色连衣裙")
