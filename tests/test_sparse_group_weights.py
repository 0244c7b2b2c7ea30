"""Sparsemax group weights: the high-level attention can give a view exactly zero (design item 55)."""

from __future__ import annotations

import json

import pytest
import torch

from fashionbert.tagging import TaggerConfig, TaggerHead, masked_softmax, masked_sparsemax
from fashionbert.tagging.config import GROUP_WEIGHTINGS
from fashionbert.tagging.model import GroupAttention
from pipelines.tag_ablations import ABLATIONS, ablation_variants


def test_sparsemax_on_a_hand_computed_example():
    # sorted 1, 0.5, -1: the support is the first two (1 + 2 * 0.5 > 1.5, 1 + 3 * -1 < 0.5), tau = 0.25
    w = masked_sparsemax(torch.tensor([[0.5, 1.0, -1.0]]), torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(w, torch.tensor([[0.25, 0.75, 0.0]]))


def test_sparsemax_is_the_projection_onto_the_simplex():
    """KKT of min ||p - z||² on the simplex: z - p is one tau on the support, z <= tau off it."""
    torch.manual_seed(0)
    scores = torch.randn(64, 7) * 2
    w = masked_sparsemax(scores, torch.ones_like(scores, dtype=torch.bool))
    assert torch.allclose(w.sum(-1), torch.ones(64), atol=1e-6) and (w >= 0).all()
    for z, p in zip(scores, w):
        support = p > 0
        tau = (z - p)[support]
        assert torch.allclose(tau, tau[0].expand_as(tau), atol=1e-5)
        assert (z[~support] <= tau[0] + 1e-5).all()
    assert (w == 0).any()  # on scores this spread some entries are dropped (a softmax never does)
    assert (masked_softmax(scores, torch.ones_like(scores, dtype=torch.bool)) > 0).all()


def test_sparsemax_masks_padding_and_gives_zeros_when_all_are_masked():
    scores = torch.tensor([[5.0, 1.0, 100.0], [1.0, 2.0, 3.0], [2.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    w = masked_sparsemax(scores, mask)
    assert w[0, 2] == 0 and torch.isclose(w[0].sum(), torch.tensor(1.0))  # the masked 100 takes nothing
    assert torch.equal(w[1], torch.zeros(3))
    assert torch.equal(w[2], torch.tensor([1.0, 0.0, 0.0]))  # one unit left: all the weight
    (w * torch.arange(3.0)).sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_group_attention_with_sparsemax_can_drop_a_group():
    torch.manual_seed(0)
    groups = torch.randn(1, 4, 12)
    attention = GroupAttention(12, 8, consensus=True, weights="sparsemax")
    with torch.no_grad():
        attention.score.weight.mul_(50.0)  # confident scores: the weakest groups fall out of the support
        pooled, w = attention(groups, torch.ones(1, 4, dtype=torch.bool))
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and (w == 0).any()
    assert torch.allclose(pooled, (w.unsqueeze(-1) * groups).sum(1))


def test_config_checks_and_reads_the_group_weights(tmp_path):
    assert TaggerConfig().group_weights == "softmax"
    with pytest.raises(ValueError, match="group_weights"):
        TaggerConfig(group_weights="entmax")
    TaggerConfig(num_tags=3, group_weights="sparsemax").save(tmp_path)
    assert TaggerConfig.load(tmp_path).group_weights == "sparsemax"
    saved = json.loads((tmp_path / "tagger_config.json").read_text())
    saved.pop("group_weights")  # a tagger saved before the option: built with a softmax
    (tmp_path / "tagger_config.json").write_text(json.dumps(saved))
    assert TaggerConfig.load(tmp_path).group_weights == "softmax"
    for name in GROUP_WEIGHTINGS:  # every weighting the config accepts builds a head
        TaggerHead(TaggerConfig(num_tags=3, hidden_size=16, attention_dim=8, mfb_o=8, group_weights=name))
    with pytest.raises(ValueError, match="group weights"):
        GroupAttention(12, 8, weights="entmax")  # never silently a softmax
    assert ABLATIONS["sparse_group_weights"] == {"group_weights": "sparsemax"}
    assert ablation_variants(["sparse_group_weights"]) == ["full", "sparse_group_weights"]
