"""Text side of FashionBERT: local/trained fast tokenizers and jieba-based whole-word masking."""

from fashionbert.text.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerLoadError,
    load_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from fashionbert.text.vocab_extension import (
    extend_tokenizer,
    find_new_words,
    grow_vocabulary,
    init_new_embeddings,
    is_wordpiece,
)
from fashionbert.text.wwm import IGNORE_INDEX, WholeWordMasker

__all__ = [
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "TokenizerLoadError",
    "WholeWordMasker",
    "extend_tokenizer",
    "find_new_words",
    "grow_vocabulary",
    "init_new_embeddings",
    "is_wordpiece",
    "load_tokenizer",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
