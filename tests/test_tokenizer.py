"""Tests for fashionbert.text.tokenizer: local loading, offline training, fingerprints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from fashionbert.text import (
    SPECIAL_TOKENS,
    TokenizerLoadError,
    load_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from tests.text_corpus import COLOURS, ITEMS, MARKETING, PATTERNS, make_titles

WORDS = COLOURS + ITEMS + MARKETING + PATTERNS
TITLES = make_titles(400)
TRAIN_SNIPPET = (
    "import sys, json; from fashionbert.text import train_tokenizer, tokenizer_fingerprint; "
    "print(tokenizer_fingerprint(train_tokenizer(json.load(sys.stdin))))"
)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "trained"
    train_tokenizer(TITLES, out_dir=out)
    return out


@pytest.fixture(scope="session")
def trained(trained_dir: Path) -> PreTrainedTokenizerFast:
    return load_tokenizer(trained_dir)


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bert-base-chinese-like folder holding only a hand-written vocab.txt."""
    folder = tmp_path_factory.mktemp("vocab_only")
    tokens = [*SPECIAL_TOKENS, "红", "色", "连", "衣", "裙", "red", "dress", "##es", "long", "sleeve", "##s"]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


def test_round_trip_encodes_identically(trained_dir: Path) -> None:
    fresh = train_tokenizer(TITLES)
    loaded = load_tokenizer(trained_dir)
    assert loaded.is_fast and isinstance(loaded, PreTrainedTokenizerFast)
    probes = [*TITLES[:50], "全新 unseen 词 zebra-print", "RED Dress", ""]
    for text in probes:
        assert loaded(text)["input_ids"] == fresh(text)["input_ids"]
    assert loaded("红色", "dress")["input_ids"] == fresh("红色", "dress")["input_ids"]
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(fresh)
    assert (trained_dir / "tokenizer.json").is_file() and (trained_dir / "vocab.txt").is_file()


def test_special_tokens_and_pad_id(trained: PreTrainedTokenizerFast) -> None:
    vocab = trained.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert trained.pad_token_id == 0 and trained.mask_token == "[MASK]"
    enc = trained("红色", "dress")
    tokens = trained.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "红", "色", "[SEP]", "dress", "[SEP]"]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1]


def test_cjk_characters_are_single_tokens(trained: PreTrainedTokenizerFast) -> None:
    for text in TITLES[:100]:
        enc = trained(text, return_offsets_mapping=True, add_special_tokens=False)
        for (s, e), tok in zip(enc["offset_mapping"], trained.convert_ids_to_tokens(enc["input_ids"])):
            if any("\u4e00" <= ch <= "\u9fff" for ch in text[s:e]):
                assert e - s == 1 and tok == text[s:e], (text, tok)
    assert trained.tokenize("红色连衣裙") == list("红色连衣裙")


def test_lowercase_and_wordpiece_continuation(trained: PreTrainedTokenizerFast) -> None:
    assert trained("RED Dress")["input_ids"] == trained("red dress")["input_ids"]
    pieces = trained.tokenize("blueshirtdress")
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])


def test_training_is_deterministic_across_processes() -> None:
    """The Rust WordPiece trainer is not (hash-map tie order); ours must be."""
    texts = TITLES[:200]
    here = tokenizer_fingerprint(train_tokenizer(texts))
    assert tokenizer_fingerprint(train_tokenizer(list(reversed(texts)))) == here
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_SNIPPET],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        timeout=120,
    )
    assert proc.stdout.strip() == here


def test_vocab_size_is_respected() -> None:
    small = train_tokenizer(TITLES, vocab_size=80)
    alphabet = {ch for t in TITLES for ch in t.lower() if not ch.isspace()}
    assert len(small) <= max(80, len(SPECIAL_TOKENS) + 2 * len(alphabet))
    assert len(small) < len(train_tokenizer(TITLES))


def test_train_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        train_tokenizer(["", ""])
    with pytest.raises(ValueError):
        train_tokenizer(TITLES, vocab_size=3)


def test_load_vocab_txt_only_folder(vocab_dir: Path) -> None:
    tok = load_tokenizer(vocab_dir)
    assert tok.is_fast and tok.pad_token_id == 0 and tok.mask_token_id == 4
    enc = tok("红色连衣裙 red dresses long sleeves", return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
        "[CLS]", "红", "色", "连", "衣", "裙", "red", "dress", "##es", "long", "sleeve", "##s", "[SEP]",
    ]
    assert enc["offset_mapping"][7:9] == [(10, 15), (15, 17)]


def test_missing_folder_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(TokenizerLoadError, match="no_such_tokenizer") as info:
        load_tokenizer(missing)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_empty_and_unusable_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerLoadError, match="empty"):
        load_tokenizer(empty)
    only_config = tmp_path / "model_only"
    only_config.mkdir()
    (only_config / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(only_config)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_tokenizer(corrupt)


def test_fingerprint(trained: PreTrainedTokenizerFast, vocab_dir: Path) -> None:
    fp = tokenizer_fingerprint(trained)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == tokenizer_fingerprint(load_tokenizer(trained.name_or_path))
    assert fp != tokenizer_fingerprint(load_tokenizer(vocab_dir))
    assert fp != tokenizer_fingerprint(train_tokenizer(TITLES, vocab_size=80))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(["", " "])), min_size=1, max_size=10))
def test_offsets_cover_the_text(trained: PreTrainedTokenizerFast, parts: list[tuple[str, str]]) -> None:
    text = "".join(w + sep for w, sep in parts)
    enc = trained(text, return_offsets_mapping=True, add_special_tokens=False)
    covered = "".join(text[s:e] for s, e in enc["offset_mapping"])
    assert covered == text.replace(" ", "")
