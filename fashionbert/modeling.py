"""The FashionBERT network: one BERT over ``[CLS] text [SEP] patches`` with four heads.

Built on transformers' ``BertModel`` (no hand-written attention). Text
tokens use BERT's word, position and segment embeddings; each of the 64
patch tokens is ``Linear(feature -> hidden)`` plus its own patch-position
row, with segment I, and both go through BERT's embedding LayerNorm. The
patches enter as ``inputs_embeds`` with position id 0, so BERT's text
position table is untouched by images and a text-only BERT checkpoint loads
unchanged into ``bert.*``.

Heads: MLM (tied to the word embeddings), MPM (bias-free linear back to the
feature space), TIA (pooler -> 2 logits, plus - with ``tia_match_features`` -
a linear read of the product of the joint pass's text and image means in the
ITC space), ITC (mean-pooled single-side encoding -> projection,
L2-normalised, learnable temperature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.models.bert.modeling_bert import BertOnlyMLMHead
from transformers.utils import ModelOutput

from fashionbert.configuration import SEGMENT_I, FashionBertConfig
from fashionbert.precision import full_precision


@dataclass
class FashionBertOutput(ModelOutput):
    """Hidden states of one joint/single-side pass, split back into text and patch parts."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    text_length: int | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class FashionBertModel(BertPreTrainedModel):
    """Trunk + heads. The task code (losses) lives in :mod:`fashionbert.pretraining`."""

    config_class = FashionBertConfig
    base_model_prefix = "bert"
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: FashionBertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.patch_projection = nn.Linear(config.patch_feature_dim, config.hidden_size)
        self.patch_position = nn.Embedding(config.num_patches, config.hidden_size)
        self.cls = BertOnlyMLMHead(config)
        self.mpm_head = nn.Linear(config.hidden_size, config.patch_feature_dim, bias=False)
        self.tia_head = nn.Linear(config.hidden_size, 2)
        self.tia_match_head = nn.Linear(config.itc_dim, 2) if config.tia_match_features else None
        self.itc_projection = nn.Linear(config.hidden_size, config.itc_dim)
        # CLIP's initial temperature 0.07, learnable in log space (clamped when used).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    # ------------------------------------------------------------------ sequences
    def embed_patches(self, patch_features: torch.Tensor) -> torch.Tensor:
        """[B, 64, D] features (zero rows for masked patches) -> [B, 64, H] input embeddings."""
        x = self.patch_projection(patch_features.to(self.patch_projection.weight.dtype))
        return x + self.patch_position.weight.unsqueeze(0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        patch_features: torch.Tensor | None = None,
        patch_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> FashionBertOutput:
        """Encode ``[CLS] text [SEP]`` followed by 64 patch tokens (either part may be absent).

        ``patch_attention_mask`` [B] or [B, 64] lets rows without an image attend to no patch.
        """
        parts, types, positions, masks = [], [], [], []
        device = self.patch_position.weight.device
        text_length = 0
        if input_ids is not None:
            b, text_length = input_ids.shape
            parts.append(self.bert.embeddings.word_embeddings(input_ids))
            types.append(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
            positions.append(torch.arange(text_length, device=device).expand(b, -1))
            masks.append(attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        if patch_features is not None:
            b, n, _ = patch_features.shape
            parts.append(self.embed_patches(patch_features))
            types.append(torch.full((b, n), SEGMENT_I, dtype=torch.long, device=device))
            positions.append(torch.zeros((b, n), dtype=torch.long, device=device))
            if patch_attention_mask is None:
                pmask = torch.ones((b, n), dtype=torch.long, device=device)
            elif patch_attention_mask.dim() == 1:
                pmask = patch_attention_mask.long().unsqueeze(1).expand(b, n)
            else:
                pmask = patch_attention_mask.long()
            masks.append(pmask)
        if not parts:
            raise ValueError("give input_ids, patch_features or both")
        mask = torch.cat(masks, dim=1)
        out = self.bert(
            inputs_embeds=torch.cat(parts, dim=1),
            token_type_ids=torch.cat(types, dim=1),
            position_ids=torch.cat(positions, dim=1),
            attention_mask=mask,
            output_attentions=output_attentions,
        )
        return FashionBertOutput(
            last_hidden_state=out.last_hidden_state,
            pooler_output=out.pooler_output,
            attention_mask=mask,
            text_length=text_length,
            attentions=getattr(out, "attentions", None),
        )

    def encode_image_only(self, patch_features: torch.Tensor) -> FashionBertOutput:
        """``[CLS] [SEP] patches`` with segment I: the image side of ITC and image search."""
        n = patch_features.shape[0]
        ids = torch.tensor([[self.config.cls_token_id, self.config.sep_token_id]], device=patch_features.device)
        ids = ids.expand(n, -1)
        return self(input_ids=ids, token_type_ids=torch.full_like(ids, SEGMENT_I), patch_features=patch_features)

    # ------------------------------------------------------------------ heads
    def mlm_logits(self, text_hidden: torch.Tensor) -> torch.Tensor:
        return self.cls(text_hidden)

    def mpm_logits(self, patch_hidden: torch.Tensor) -> torch.Tensor:
        return self.mpm_head(patch_hidden)

    def tia_logits(self, output: FashionBertOutput, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[no match, match] logits of joint passes (``rows`` selects some of them).

        Why the match features: a pooler-only head learns nothing until the trunk
        has discovered cross-modal attention, which took ~350 of the ~600 steps a
        20-minute CPU budget allows (docs/results.md). The product of the two
        segments' means in the ITC space - the space ITC aligns early - gives the
        head a direct path to "do the words and the picture agree", while the
        pooler keeps the cross-attention's finer evidence.
        """
        pooled = output.pooler_output if rows is None else output.pooler_output[rows]
        with full_precision(pooled):  # a bf16 logit moves in steps of ~0.03: enough to tie re-ranked candidates
            logits = self.tia_head(pooled.to(self.tia_head.weight.dtype))
            if self.tia_match_head is not None:
                logits = logits + self.tia_match_head(self._segment_agreement(output, rows))
        return logits

    def _segment_agreement(self, output: FashionBertOutput, rows: torch.Tensor | None) -> torch.Tensor:
        """d * (text mean ⊙ image mean), both projected into the ITC space and unit length.

        Scaled by d so that the elements are O(1) and their sum is d x cosine.
        """
        hidden, mask, t = output.last_hidden_state, output.attention_mask, output.text_length
        if rows is not None:
            hidden, mask = hidden[rows], mask[rows]
        text, image = self._itc_vector(hidden[:, :t], mask[:, :t]), self._itc_vector(hidden[:, t:], mask[:, t:])
        return (text * image * text.shape[-1]).to(self.tia_match_head.weight.dtype)

    def itc_embedding(self, output: FashionBertOutput) -> torch.Tensor:
        """Masked mean of the last layer -> projection -> unit vector (what FAISS indexes)."""
        return self._itc_vector(output.last_hidden_state, output.attention_mask)

    def _itc_vector(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of ``hidden`` over its positions -> ITC projection -> unit float32 vector.

        In the projection's precision even under bf16 autocast: the mean sums ~100 positions and
        the vector is what FAISS indexes and the contrastive losses compare at a temperature of up to 100.
        """
        with full_precision(hidden):
            hidden = hidden.to(self.itc_projection.weight.dtype)
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            return F.normalize(self.itc_projection(pooled).float(), dim=-1)

    def temperature_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0, math.log(100)).exp()

