"""The two baselines the tagger must beat, so its attention and fusion are shown to earn their keep.

* :class:`MostFrequentTags`: every product gets the training catalog's most frequent tags.
  What a tag box pre-filled with "popular tags" gives a merchant.
* :class:`LateFusionLinear`: a linear multi-label classifier (logistic regression per tag,
  trained with torch) on the concatenation of the mean-pooled text token states and the
  mean-pooled patch states of the same frozen trunk, each modality encoded on its own
  (a text-only and an image-only pass): late fusion, nothing crosses between text and image
  before the linear layer. Fed the joint pass's states instead, the same classifier is a
  *linear probe of the cross encoder* (reported too): there the trunk's 4 layers of joint
  attention have already fused the modalities, so it is not a late-fusion model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fashionbert.encoder import FashionBert
from fashionbert.tagging.model import HeadInputs, masked_mean
from fashionbert.tagging.tagger import encode_states
from fashionbert.tagging.training import TagDataset
from fashionbert.tagging.vocabulary import TagVocabulary


class MostFrequentTags:
    """Scores = the tags' frequencies in the training catalog, the same for every product."""

    def __init__(self, vocabulary: TagVocabulary):
        self.vocabulary = vocabulary
        self.frequencies = vocabulary.frequencies().astype(np.float32)

    def scores(self, n: int) -> np.ndarray:
        return np.tile(self.frequencies, (n, 1))


def pooled_inputs(x: HeadInputs) -> torch.Tensor:
    """[B, 2H]: mean of the real token states and mean of the real patch states over all views."""
    b, v, t, h = x.text.shape
    text = masked_mean(x.text.reshape(b, v * t, h), x.text_mask.reshape(b, v * t))
    patches = masked_mean(x.patches.reshape(b, -1, h), x.patch_mask.reshape(b, -1))
    return torch.cat([text, patches], dim=-1)


@torch.no_grad()
def pooled_features(trunk: FashionBert, data: TagDataset, rows: Sequence[int] | None = None, max_views: int = 1,
                    batch_size: int = 64, passes: str = "separate") -> np.ndarray:
    """Mean-pooled features of ``rows`` of ``data``: float32 [n, 2H] from the frozen trunk's
    ``passes`` (:func:`~fashionbert.tagging.tagger.encode_states`; views are loaded one batch at a time)."""
    trunk.model.eval()
    rows = list(range(len(data))) if rows is None else list(rows)
    parts = [pooled_inputs(encode_states(trunk, *data.inputs(rows[i:i + batch_size]), max_views, passes)).cpu()
             for i in range(0, len(rows), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 2 * trunk.config.hidden_size), np.float32)


class LateFusionLinear:
    """Standardised features -> one linear layer -> a sigmoid per tag (full-batch AdamW, BCE)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, weight: torch.Tensor, bias: torch.Tensor):
        self.mean, self.std, self.weight, self.bias = mean, std, weight, bias

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, *, pos_weight: torch.Tensor | None = None, epochs: int = 300,
            lr: float = 1e-2, weight_decay: float = 1e-3, seed: int = 0) -> LateFusionLinear:
        if len(features) != len(targets) or len(features) == 0:
            raise ValueError(f"need as many feature rows as target rows (> 0), got {len(features)} and {len(targets)}")
        mean = features.mean(0, keepdims=True)
        std = features.std(0, keepdims=True) + 1e-6
        x = torch.from_numpy(((features - mean) / std).astype(np.float32))
        y = torch.from_numpy(targets.astype(np.float32))
        gen = torch.Generator().manual_seed(seed)
        weight = (torch.randn(x.shape[1], y.shape[1], generator=gen) * 0.01).requires_grad_(True)
        prior = y.mean(0).clamp(1e-4, 1 - 1e-4)
        bias = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(x @ weight + bias, y, pos_weight=pos_weight).backward()
            optimizer.step()
        return cls(mean, std, weight.detach(), bias.detach())

    def scores(self, features: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(((features - self.mean) / self.std).astype(np.float32))
        return torch.sigmoid(x @ self.weight + self.bias).numpy()
