"""The best random-100 score any model could reach, when the texts' generating process is known.

Why: a SumR means little without its ceiling. On the synthetic catalog a title
names only some attributes (one is sometimes left out, a solid pattern often
left implicit) and two products of a sub-category can share every attribute,
so no reader of titles and pictures can rank every positive first. With the
likelihood P(text | the candidate product's attributes), the Bayes-optimal
ranker orders candidates by it; its expected Rank@K, with exact ties broken at
random, is the ceiling. It assumes a perfect eye (every attribute read off the
picture), so it is an upper bound for any model on the same groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fashionbert.evaluation.protocols import DIRECTIONS, RANDOM100_KS, EvalItem, build_random100_groups


def expected_recall_at(scores: Sequence[float], positive: int, k: int) -> float:
    """P(the positive is in the top ``k``) when exact ties are ordered uniformly at random."""
    s = np.asarray(scores, dtype=np.float64)
    others = np.delete(s, positive)
    above = int(np.count_nonzero(others > s[positive]))
    tied = int(np.count_nonzero(others == s[positive]))
    return float(np.clip((k - above) / (tied + 1), 0.0, 1.0))


def random100_ceiling(
    items: Sequence[EvalItem],
    likelihood: Callable[[int, int], float],
    n_queries: int = 1000,
    n_candidates: int = 100,
    seed: int = 0,
) -> dict[str, object]:
    """Expected Rank@K of the ranker ordering by ``likelihood(text_item, image_item)``, on the very groups
    :func:`~fashionbert.evaluation.protocols.evaluate_random100` builds for the same arguments.

    Returns ``{"t2i": {"r1", "r5", "r10"}, "i2t": {...}, "sum_r"}``.
    """
    result: dict[str, object] = {}
    total = 0.0
    for d in DIRECTIONS:
        groups = build_random100_groups(items, n_queries=n_queries, n_candidates=n_candidates, seed=seed, direction=d)
        recalls: dict[int, list[float]] = {k: [] for k in RANDOM100_KS}
        for g in groups:
            pairs = [(g.query, c) if d == "t2i" else (c, g.query) for c in g.candidates]
            scores = [likelihood(text, image) for text, image in pairs]
            for k in RANDOM100_KS:
                recalls[k].append(expected_recall_at(scores, g.positive, k))
        block = {f"r{k}": float(np.mean(v)) if v else float("nan") for k, v in recalls.items()}
        result[d] = block
        total += sum(block.values())
    result["sum_r"] = 100.0 * total
    return result
