"""Loading, training and fingerprinting the text tokenizer.

FashionBERT reads product titles that mix Chinese and English ("ins风 红色 T恤
long sleeve dress").  Whole-word masking needs character offsets, which only
the Rust-backed ("fast") tokenizers provide, so every tokenizer handed out here
is a fast one.  Nothing is ever fetched from a model hub: a tokenizer either
comes from a local folder (bert-base-chinese's vocab.txt, a MiniLM checkpoint,
a previously trained folder) or is trained here from the catalog's own titles
when the user has no pretrained one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

# A checkpoint folder holds our config.json next to the tokenizer; AutoTokenizer reads it, so the
# "fashionbert" model type must be registered before it does (imported for that side effect).
import fashionbert.configuration  # noqa: E402,F401

__all__ = [
    "SPECIAL_TOKENS",
    "TokenizerLoadError",
    "load_tokenizer",
    "tokenizer_fingerprint",
    "train_tokenizer",
]

logger = logging.getLogger(__name__)

#: BERT's special tokens in id order, so a trained vocabulary has [PAD] at id 0
#: (padding and attention masks elsewhere assume pad id 0, as in bert-base-*).
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Files that mark a folder as holding a tokenizer.  A tokenizer_config.json
# alone is not enough to build a fast tokenizer offline, but it is still a
# tokenizer file: we try and report the real error rather than "no files".
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


class TokenizerLoadError(FileNotFoundError, ValueError):
    """A tokenizer folder is missing, holds no tokenizer files, or cannot give a fast tokenizer.

    Subclasses both FileNotFoundError (the usual cause: a wrong path) and
    ValueError (the folder exists but its content is unusable), so callers may
    catch whichever matches their intent.
    """


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from a local folder, never from the network.

    Accepts a folder with a ``tokenizer.json`` (any fast tokenizer: a trained
    one from :func:`train_tokenizer`, MiniLM, a converted XLM-R Unigram...) or
    only a WordPiece ``vocab.txt`` (bert-base-chinese, cn-clip's vocabulary):
    transformers' ``AutoTokenizer`` cannot guess a class for a bare vocab.txt,
    so that case is built explicitly as a ``BertTokenizerFast``.

    Raises:
        TokenizerLoadError: the folder does not exist, holds none of the
            tokenizer files, or what it holds cannot be loaded as a fast
            tokenizer.  The message names the path.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TokenizerLoadError(f"tokenizer folder not found: {folder} (expected a local directory)")
    present = [name for name in _TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise TokenizerLoadError(
            f"no tokenizer files in {folder}: expected one of {', '.join(_TOKENIZER_FILES)}"
        )

    tokenizer: object
    try:
        if "tokenizer.json" in present or "tokenizer_config.json" in present:
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            except Exception:
                # e.g. a tokenizer_config.json naming a class that needs
                # sentencepiece, next to a usable vocab.txt.
                if "vocab.txt" not in present:
                    raise
                tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        elif "vocab.txt" in present:
            tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        else:  # only a sentencepiece model: needs the sentencepiece package to convert
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except TokenizerLoadError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/... by case
        raise TokenizerLoadError(f"could not load a tokenizer from {folder}: {exc}") from exc

    if not isinstance(tokenizer, PreTrainedTokenizerFast) or not getattr(tokenizer, "is_fast", False):
        raise TokenizerLoadError(
            f"tokenizer in {folder} is not a fast tokenizer ({type(tokenizer).__name__}); "
            "character offsets are needed for whole-word masking - add a tokenizer.json"
        )
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path | None = None,
    vocab_size: int = 8000,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``texts`` (e.g. catalog titles).

    Used when no pretrained tokenizer is at hand.  The pipeline matches
    bert-base-chinese's: lowercase BertNormalizer with ``handle_chinese_chars``
    (every CJK character becomes its own token, so Chinese words are formed by
    jieba at masking time, not by the vocabulary), BertPreTokenizer, WordPiece
    with ``##`` continuation, special tokens [PAD]=0 [UNK] [CLS] [SEP] [MASK],
    and the ``[CLS] A [SEP] (B [SEP])`` post-processor with token types.

    The trained vocabulary is re-wrapped as ``BertTokenizerFast(vocab=...)``,
    which rebuilds exactly this pipeline, so the result behaves like any other
    BERT tokenizer and ``save_pretrained``/``load_tokenizer`` round-trip.
    Training is deterministic for the same texts: the normalizer and
    pre-tokenizer come from ``tokenizers``, but the merges are learned by
    :func:`_learn_wordpiece_vocab`, because the Rust ``WordPieceTrainer``
    breaks frequency ties in hash-map order and so yields a different
    vocabulary in every process (checked with tokenizers 0.23).

    Args:
        texts: training texts; consumed once.
        out_dir: when given, the tokenizer is saved there (``save_pretrained``
            plus a ``vocab.txt`` for tools that read only that).
        vocab_size: upper bound on the vocabulary (small corpora give fewer).
        min_frequency: a merge must occur at least this often.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        if text:
            word_counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    tokens = _learn_wordpiece_vocab(word_counts, vocab_size - len(SPECIAL_TOKENS), min_frequency)
    if not tokens:
        raise ValueError("train_tokenizer got no usable text: the vocabulary would hold only special tokens")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *(t for t in tokens if t not in SPECIAL_TOKENS)])}

    tokenizer = BertTokenizerFast(
        vocab=vocab,
        do_lower_case=True,
        tokenize_chinese_chars=True,
        strip_accents=None,
    )
    if tokenizer.pad_token_id != 0:  # the trainer puts special tokens first, in order
        raise RuntimeError(f"trained tokenizer has pad id {tokenizer.pad_token_id}, expected 0")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out))
        _write_vocab_txt(vocab, out / "vocab.txt")
        logger.info("trained a WordPiece tokenizer of %d tokens, saved to %s", len(vocab), out)
    return tokenizer


def _learn_wordpiece_vocab(
    word_counts: dict[str, int], budget: int, min_frequency: int, prefix: str = "##"
) -> list[str]:
    """Learn a WordPiece vocabulary the way ``tokenizers`` does (BPE merges over "##" pieces), deterministically.

    Every word starts as its first character followed by ``##``-prefixed
    characters; the alphabet is always kept whole (so nothing seen in
    training becomes [UNK]); then the most frequent adjacent pair is merged
    until ``budget`` tokens exist or no pair occurs ``min_frequency`` times.
    Ties go to the lexicographically smallest pair, which is what makes the
    result independent of hash seeds.  Pair counts are updated incrementally
    (only words holding the merged pair are revisited), with a lazy heap.
    """
    words = sorted(word_counts)
    seqs: list[list[str]] = [[w[0], *(prefix + c for c in w[1:])] for w in words]
    freqs = [word_counts[w] for w in words]
    vocab = sorted({sym for seq in seqs for sym in seq})
    seen = set(vocab)

    pair_counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < budget and heap:
        neg, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg:  # stale entry: re-queue with its current count
            if count > 0:
                heapq.heappush(heap, (-count, a, b))
            continue
        if count < min_frequency:
            break
        merged = a + b[len(prefix):] if b.startswith(prefix) else a + b
        if merged not in seen:
            seen.add(merged)
            vocab.append(merged)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop((a, b), ())):
            seq, w = seqs[i], freqs[i]
            old_pairs = list(zip(seq, seq[1:]))
            out: list[str] = []
            j = 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            new_pairs = list(zip(out, out[1:]))
            for pair in old_pairs:
                pair_counts[pair] -= w
            for pair in new_pairs:
                pair_counts[pair] += w
                touched.add(pair)
            for pair in set(old_pairs) - set(new_pairs):
                where[pair].discard(i)
            for pair in new_pairs:
                where[pair].add(i)
        pair_counts.pop((a, b), None)
        for pair in sorted(touched):
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], *pair))
    return vocab


def _write_vocab_txt(vocab: dict[str, int], path: Path) -> None:
    """Write ``vocab.txt`` (one token per line, line number = id) beside tokenizer.json."""
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise RuntimeError("vocabulary ids are not contiguous; cannot write vocab.txt")
    path.write_text("".join(tok + "\n" for tok, _ in ordered), encoding="utf-8")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Return a sha256 hex digest of the tokenizer's vocabulary (token -> id, added tokens included).

    Checkpoints and feature/embedding caches store it so that loading them
    with a different vocabulary (whose ids would mean other words) is caught
    instead of silently producing garbage.  Only the vocabulary is hashed, not
    runtime settings such as truncation, so it is stable across sessions.
    """
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    payload = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
