"""FashionBERT's configuration: a BERT config plus the image side and named sizes.

It subclasses :class:`transformers.BertConfig` so that the trunk is a plain
``BertModel`` and a local BERT checkpoint (bert-base-chinese, MiniLM, ...)
initialises it; the extra fields describe the patch tokens and the heads.
"""

from __future__ import annotations

from typing import Any

from transformers import BertConfig

# Segment (token type) ids, ARCHITECTURE.md §2. Q is the row a 2-type BERT checkpoint lacks.
SEGMENT_T = 0  # title / description
SEGMENT_I = 1  # image patch
SEGMENT_Q = 2  # user query
SEGMENTS = {"T": SEGMENT_T, "I": SEGMENT_I, "Q": SEGMENT_Q}

# Trunk shapes. `tiny` trains on a 2-core CPU in minutes; `small` matches the packaged MiniLM-L6
# (all-MiniLM-L6-v2, 6x384) so its weights can initialise the trunk; `base` is BERT-base.
# `tiny` has no dropout: it only ever trains for minutes, far from over-fitting, where dropout
# slows learning down and its masks cost ~20 % of a CPU step (as "Cramming", Geiping &
# Goldstein 2022, found for BERT on a one-day budget); docs/design.md item 40.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}

# Peak pretraining learning rate per named config (AdamW, warm-up + linear decay). Smaller trunks
# take larger steps: tiny at 1e-3 reached SumR 293 in 20 CPU minutes against 260 at 5e-4
# (docs/results.md, r4 vs r1); base keeps BERT's usual 1e-4.
DEFAULT_LEARNING_RATES: dict[str, float] = {"tiny": 1e-3, "small": 5e-4, "base": 1e-4}


class FashionBertConfig(BertConfig):
    """BERT trunk + 8x8 patch tokens + MLM/MPM/TIA/ITC heads."""

    model_type = "fashionbert"

    def __init__(
        self,
        patch_feature_dim: int = 1280,
        num_patches: int = 64,
        itc_dim: int = 256,
        max_text_length: int = 48,
        image_encoder: str = "efficientnet_lite0",
        patch_mode: str = "grid",
        cls_token_id: int = 2,
        sep_token_id: int = 3,
        tia_match_features: bool = False,
        **kwargs: Any,
    ):
        kwargs.setdefault("type_vocab_size", 3)
        kwargs.setdefault("max_position_embeddings", 128)
        super().__init__(**kwargs)
        if self.type_vocab_size < 3:
            raise ValueError("FashionBERT needs 3 segment types (T, I, Q); type_vocab_size must be >= 3")
        self.patch_feature_dim = patch_feature_dim
        self.num_patches = num_patches
        self.itc_dim = itc_dim
        self.max_text_length = max_text_length
        self.image_encoder = image_encoder
        self.patch_mode = patch_mode
        # The image-only sequence is "[CLS] [SEP] patches"; the model builds it, so it keeps the ids.
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        # TIA reads the [CLS] pooler plus the product of the joint pass's two segment means in
        # the ITC space (docs/design.md item 35). False keeps the pooler-only head of checkpoints
        # saved before it existed; named configs switch it on.
        self.tia_match_features = tia_match_features


def named_config(name: str, tokenizer: Any, patch_feature_dim: int = 1280, **overrides: Any) -> FashionBertConfig:
    """A named size (``tiny``/``small``/``base``) for a tokenizer and a CNN's feature dim."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    fields = {
        **NAMED_CONFIGS[name],
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "tia_match_features": True,
        **overrides,
    }
    return FashionBertConfig(patch_feature_dim=patch_feature_dim, **fields)


# Let transformers' Auto* classes (AutoTokenizer reads config.json beside the tokenizer) know the type.
try:
    from transformers import AutoConfig

    AutoConfig.register(FashionBertConfig.model_type, FashionBertConfig)
except ValueError:  # already registered (module reloaded)
    pass
