"""Ranking metrics of tag recommendation: precision, recall, F1 and hit rate at k.

The convention (the usual one in tag recommendation, e.g. hashtag and product-tag papers) is
averaging over products:

* ``P@k``   = mean over products of |top-k ∩ truth| / k   (k, not the number returned: a
  product with fewer than k candidates is not rewarded for it);
* ``R@k``   = mean over products of |top-k ∩ truth| / |truth|;
* ``F1@k``  = 2·P@k·R@k / (P@k + R@k), computed from the two means (not a mean of per-product
  F1s, which would reward getting a few products right over being right on average);
* ``hit@k`` = share of products with at least one true tag in their top k.
* ``map``   = macro mean over the vocabulary of each tag's average precision, ranking the
  *products* by that tag's score. Why beside F1@k: F1@3 only counts a product's three best
  tags, so a tag a method is unsure of but which always ranks below three confident true
  tags never costs it anything; AP scores every tag on its own, the rare and the hard ones
  too (``ap:<tag>`` keys from :func:`tag_average_precision` say which).

Truth is every tag the catalog lists for the product, including tags outside the model's
vocabulary: those are real tags the model could not suggest, and dropping them would
flatter every method equally but hide the vocabulary's coverage. Products without any tag
are skipped (recall is undefined for them) and counted in ``n``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    scores = np.asarray(scores)
    k = min(int(k), scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def ranking_metrics(ranked: Sequence[Sequence[str]], truth: Sequence[Collection[str]],
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``p@k``, ``r@k``, ``f1@k``, ``hit@k`` for each k, plus ``n`` (products scored).

    ``ranked[i]`` is product i's suggestions, best first (at least max(ks) long to be fair);
    ``truth[i]`` its true tags.
    """
    if len(ranked) != len(truth):
        raise ValueError(f"{len(ranked)} rankings but {len(truth)} truth sets")
    keep = [i for i, t in enumerate(truth) if len(set(t)) > 0]
    out: dict[str, float] = {"n": float(len(keep))}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not keep:
            out.update({f"p@{k}": 0.0, f"r@{k}": 0.0, f"f1@{k}": 0.0, f"hit@{k}": 0.0})
            continue
        precision, recall, hit = [], [], []
        for i in keep:
            true = set(truth[i])
            found = len(set(list(ranked[i])[:k]) & true)
            precision.append(found / k)
            recall.append(found / len(true))
            hit.append(1.0 if found else 0.0)
        p, r = float(np.mean(precision)), float(np.mean(recall))
        out[f"p@{k}"] = p
        out[f"r@{k}"] = r
        out[f"f1@{k}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out[f"hit@{k}"] = float(np.mean(hit))
    return out


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one ranking: the mean, over the positives, of the precision at each one's rank.

    Ties are broken pessimistically (negatives first), so a constant score earns the base rate,
    not a lucky order.
    """
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        raise ValueError("average precision needs at least one positive")
    order = np.lexsort((positive, -np.asarray(scores, dtype=np.float64)))  # by score desc, then negatives first
    hits = positive[order]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def tag_average_precision(scores: np.ndarray, tags: Sequence[str],
                          truth: Sequence[Collection[str]]) -> dict[str, float]:
    """``ap:<tag>`` for every vocabulary tag with a positive among the products, and ``map``, their mean."""
    scores = np.asarray(scores)
    if scores.shape != (len(truth), len(tags)):
        raise ValueError(f"scores {scores.shape} do not match {len(truth)} products x {len(tags)} tags")
    keep = [i for i, t in enumerate(truth) if len(set(t)) > 0]
    out: dict[str, float] = {}
    for j, tag in enumerate(tags):
        positive = np.array([tag in truth[i] for i in keep], dtype=bool)
        if positive.any():
            out[f"ap:{tag}"] = average_precision(scores[keep, j], positive)
    out["map"] = float(np.mean(list(out.values()))) if out else 0.0
    return out


def score_metrics(scores: np.ndarray, tags: Sequence[str], truth: Sequence[Collection[str]],
                  ks: Sequence[int] = DEFAULT_KS, per_tag: bool = False) -> dict[str, float]:
    """:func:`ranking_metrics` of a [n_products, n_tags] score matrix over the vocabulary ``tags``, plus ``map``
    (and every ``ap:<tag>`` with ``per_tag``)."""
    idx = top_k(scores, max(ks))
    ranked = [[tags[j] for j in row] for row in idx]
    ap = tag_average_precision(scores, tags, truth)
    return ranking_metrics(ranked, truth, ks) | (ap if per_tag else {"map": ap["map"]})


TABLE_COLUMNS = ("p@1", "p@3", "r@3", "f1@3", "p@5", "r@5", "f1@5", "hit@1", "hit@3", "hit@5", "map")


def markdown_table(metrics: dict[str, float], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """One row per method: flat ``<method>.<metric>`` keys (e.g. ``model.f1@3``, ``ablation.full.p@1``)."""
    methods: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        method, _, name = key.rpartition(".")
        if method:
            methods.setdefault(method, {})[name] = value
    lines = ["| method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for method, values in methods.items():
        cells = [f"{values[c]:.4f}" if c in values else "–" for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
