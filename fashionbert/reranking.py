"""One ranking score from the search's two stages: the cross encoder's verdict and the dual encoder's cosine.

Why a sum of log-scores: both heads are trained as log-linear models. TIA's two logits give
the log-odds that a (text, image) pair matches; ITC's softmax over candidates gives
``logit_scale * cosine`` up to a per-query constant. Adding them ranks by the product of
the two experts' likelihoods, each on the scale its own training calibrated, so the weight
needs no re-tuning when a checkpoint's temperature moves. (BLIP and BLIP-2 rank their
re-ranked candidates the same way: the ITM logit plus the ITC similarity.) The earlier
``w * probability + (1 - w) * (cosine + 1) / 2`` mixed a bounded probability, which a
confident float32 softmax rounds to exactly 0 or 1, with an affine cosine: the fused order
was then mostly the cosine's among the saturated candidates.

``dual_weight`` scales the dual term: 0 ranks by the cross encoder alone, large values by
the cosine alone; :data:`DEFAULT_DUAL_WEIGHT` was chosen on a validation catalog
(docs/results.md, "The search's fused score").
"""

from __future__ import annotations

import numpy as np

DEFAULT_DUAL_WEIGHT = 1.0


def match_probability(log_odds: np.ndarray) -> np.ndarray:
    """The sigmoid of match log-odds in float64, without overflow for any margin."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(log_odds, dtype=np.float64)))


def fuse_stage_scores(match_log_odds: np.ndarray, cosine: np.ndarray, logit_scale: float,
                      dual_weight: float = DEFAULT_DUAL_WEIGHT) -> np.ndarray:
    """``match_log_odds + dual_weight * logit_scale * cosine``, float64, element-wise.

    ``match_log_odds``: the cross encoder's (``FashionBert.match_logits``); ``cosine``: the
    stage-1 similarity of the same query and candidate; ``logit_scale``: the checkpoint's
    ITC inverse temperature (``FashionBertModel.temperature_scale()``).
    """
    if dual_weight < 0 or logit_scale <= 0:
        raise ValueError(f"dual_weight must be >= 0 and logit_scale > 0, got {dual_weight} and {logit_scale}")
    lo = np.asarray(match_log_odds, dtype=np.float64)
    cos = np.asarray(cosine, dtype=np.float64)
    if lo.shape != cos.shape:
        raise ValueError(f"{lo.shape} log-odds but {cos.shape} cosines: they must pair up")
    return lo + dual_weight * float(logit_scale) * cos


def fuse_ranked_list(log_odds: np.ndarray, cosine: np.ndarray, logit_scale: float,
                     dual_weight: float = DEFAULT_DUAL_WEIGHT) -> np.ndarray:
    """Fused scores of a whole stage-1 list whose first ``len(log_odds)`` candidates were re-ranked.

    ``cosine``: stage 1's similarities, best first; ``log_odds``: the cross encoder's verdicts on
    the head of that list, NaN where a candidate could not be judged (no readable image). Such a
    candidate gets the mean verdict of the judged ones (neither promoted nor demoted for lacking a
    photo); a candidate beyond the re-ranked head gets the lowest judged verdict, so that - its
    cosine being no higher than any head candidate's - no score below the head exceeds one in it,
    and sorting by the fused score keeps the tail in stage-1 order. Without any verdict the
    fused order is stage 1's.
    """
    lo = np.asarray(log_odds, dtype=np.float64)
    cos = np.asarray(cosine, dtype=np.float64)
    if len(lo) > len(cos):
        raise ValueError(f"{len(lo)} verdicts for a list of {len(cos)} candidates")
    judged = lo[~np.isnan(lo)]
    neutral = float(judged.mean()) if judged.size else 0.0
    floor = float(judged.min()) if judged.size else 0.0
    verdicts = np.concatenate([np.where(np.isnan(lo), neutral, lo), np.full(len(cos) - len(lo), floor)])
    return fuse_stage_scores(verdicts, cos, logit_scale, dual_weight)
