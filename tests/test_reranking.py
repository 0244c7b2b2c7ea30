"""The fused stage-1 + stage-2 score, and random-100 ranked by log-odds and by the fused score.

Known-answer scorers as in tests/test_evaluation.py: each product's features carry its number in
``features[i, 0, 0]`` and its title ends with it, so the right ranking is known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from fashionbert.evaluation import MemoisedPairScorer, cross_encoder_pair_scorer, evaluate_random100
from fashionbert.reranking import fuse_ranked_list, fuse_stage_scores, match_probability
from tests.test_evaluation import make_items, marker, title_number


class ConfidentCrossEncoder:
    """Log-odds 40 for a product's own pair, 30 for its partner (k ^ 1), 20 otherwise: every
    probability rounds to 1.0 in float32, and it cannot tell partners apart when ``blind``."""

    def __init__(self, blind: bool = False) -> None:
        self.blind, self.calls = blind, 0

    def match_logits(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        self.calls += 1
        t, m = title_number(texts), marker(patch_features)
        own = np.where(t == m, 40.0, np.where(t == (m ^ 1), 30.0, 20.0))
        return np.where(self.blind & (t == (m ^ 1)), 40.0, own)

    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        return (1 / (1 + np.exp(-self.match_logits(texts, patch_features)))).astype(np.float32)


def test_fused_score_is_the_sum_of_log_scores() -> None:
    fused = fuse_stage_scores(np.array([2.0, -1.0]), np.array([0.5, 0.9]), logit_scale=10.0, dual_weight=0.5)
    np.testing.assert_allclose(fused, [2.0 + 2.5, -1.0 + 4.5])
    assert fuse_stage_scores(np.array([2.0, -1.0]), np.array([0.5, 0.9]), 10.0, dual_weight=0.0).tolist() == [2.0, -1.0]
    with pytest.raises(ValueError, match="pair up"):
        fuse_stage_scores(np.zeros(2), np.zeros(3), 10.0)
    with pytest.raises(ValueError, match="dual_weight"):
        fuse_stage_scores(np.zeros(2), np.zeros(2), 10.0, dual_weight=-1.0)


def test_a_ranked_list_fills_unjudged_candidates_and_keeps_its_tail_below_the_head() -> None:
    cosine = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    fused = fuse_ranked_list(np.array([-1.0, np.nan, 3.0]), cosine, logit_scale=10.0, dual_weight=1.0)
    np.testing.assert_allclose(fused, [-1 + 9, 1 + 8, 3 + 7, -1 + 6, -1 + 5])  # NaN -> mean 1; tail -> min -1
    rng = np.random.default_rng(0)
    for _ in range(200):  # whatever the verdicts, the tail never outranks the head and stays in stage-1 order
        cos = np.sort(rng.uniform(-1, 1, 30))[::-1]
        head = rng.normal(0, 5, rng.integers(0, 30))
        head[rng.random(len(head)) < 0.2] = np.nan
        f = fuse_ranked_list(head, cos, logit_scale=float(rng.uniform(1, 50)), dual_weight=float(rng.uniform(0, 3)))
        tail = f[len(head):]
        assert (np.diff(tail) <= 1e-12).all() and (len(head) == 0 or tail.max(initial=-np.inf) <= f[:len(head)].min() + 1e-9)
    np.testing.assert_allclose(fuse_ranked_list(np.array([]), cosine, 10.0), 10.0 * cosine)  # no verdict: stage 1's order
    with pytest.raises(ValueError, match="verdicts for a list"):
        fuse_ranked_list(np.zeros(6), cosine, 10.0)


def test_match_probability_never_overflows() -> None:
    with np.errstate(over="raise"):
        p = match_probability(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(p, [0.0, 0.5, 1.0])


def test_log_odds_rank_what_a_saturated_probability_ties() -> None:
    items, features = make_items({"a": 150})
    model = ConfidentCrossEncoder()
    by_probability = evaluate_random100(model, items, features, n_queries=40)
    assert by_probability["sum_r"] == 0.0  # 101 candidates at 1.0: the positive ranks last
    by_log_odds = evaluate_random100(None, items, features, n_queries=40, tia_threshold=0.0,
                                     pair_scorer=cross_encoder_pair_scorer(model, features, batch_size=101))
    assert by_log_odds["sum_r"] == 600.0
    assert by_log_odds["tia_accuracy"] == 0.5  # log-odds > 0 everywhere: "match" for every pair


def test_fusion_breaks_the_cross_encoders_ties_with_the_cosine() -> None:
    """Blind to partners, the cross encoder ties k with k ^ 1; the cosine tells partners apart but
    prefers product k + 2 to k, which the cross encoder rejects; their sum ranks every positive first."""
    items, features = make_items({"a": 150})
    model = ConfidentCrossEncoder(blind=True)
    cross = MemoisedPairScorer(cross_encoder_pair_scorer(model, features, batch_size=10_000))

    def cosine(texts: list[str], rows: np.ndarray) -> np.ndarray:
        t, m = title_number(texts), marker(features[rows])
        return np.where(t == m, 0.5, np.where(t == (m ^ 1), 0.45, np.where(m == (t + 2) % 150, 0.55, 0.0)))

    def run(scorer, threshold=0.0) -> dict:
        return evaluate_random100(None, items, features, n_queries=150, pair_scorer=scorer, tia_threshold=threshold)

    alone = run(cross)
    calls = model.calls
    dual = run(cosine)
    fused = run(lambda t, rows: fuse_stage_scores(cross(t, rows), cosine(t, rows), logit_scale=20.0, dual_weight=1.0))
    assert alone["sum_r"] < 600 and dual["sum_r"] < 600 and fused["sum_r"] == 600.0
    assert model.calls == calls  # the same pairs again: the memo answered, the cross encoder was not re-run
    cross(["a title 1"], np.array([0]))
    assert model.calls == calls + 1  # other pairs are scored afresh
