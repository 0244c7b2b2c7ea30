"""Evaluation protocols: FashionBERT's random-100 ranking and full-catalog retrieval.

No model code lives here: the models are reached only through the two small
``Protocol`` interfaces below, so the protocols can be tested with known-answer
scorers and run unchanged on any checkpoint.

random-100 (FashionBERT, cross encoder)
    Each query is ranked against 101 candidates: its own positive and 100
    other *products* of the same sub-category (the hard, realistic case: a
    "red shirt" must beat other shirts, not trousers). Rank@K is the fraction
    of queries whose positive lands in the top K. Ties are broken
    pessimistically - the positive counts as ranked *after* every negative
    with an equal score - so a model that scores everything the same gets
    R@1 = 0 rather than a lucky 1.

    Chance level (continuous random scores, 101 candidates): R@K = K/101,
    i.e. R@1 = 0.0099, R@5 = 0.0495, R@10 = 0.0990, and
    SumR = 100 x 2 directions x (1 + 5 + 10)/101 = 3200/101 = 31.68
    (on the 0-600 scale). ``evaluate_random100`` also reports the exact
    chance SumR for the groups it actually built (smaller when groups are).

full catalog (dual encoder)
    Every text is ranked against every image (and vice versa) by inner
    product of the L2-normalised embeddings - exact search with numpy, the
    reference an ANN index is measured against. Recall@K and MRR use the same
    pessimistic tie rule; every item sharing the query's product_id counts as
    a positive (several images of one product).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

Direction = Literal["t2i", "i2t"]
DIRECTIONS: tuple[Direction, Direction] = ("t2i", "i2t")
RANDOM100_KS: tuple[int, ...] = (1, 5, 10)
TIA_THRESHOLD = 0.5
_DIRECTION_STREAM = {"t2i": 1, "i2t": 2}  # separate seeded streams: text and image queries are independent samples


@runtime_checkable
class CrossEncoder(Protocol):
    """A (text, image) matching scorer, e.g. FashionBERT's text-image alignment head."""

    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        """N texts and float [N, 64, D] patch features -> N matching probabilities in [0, 1]."""
        ...


@runtime_checkable
class DualEncoder(Protocol):
    """Separate text and image towers whose embeddings are compared by inner product."""

    def encode_text(self, texts: Sequence[str], segment: str = "T") -> np.ndarray:
        """N texts -> [N, d] L2-normalised float32."""
        ...

    def encode_images(self, patch_features: np.ndarray) -> np.ndarray:
        """Float [N, 64, D] patch features -> [N, d] L2-normalised float32."""
        ...


@dataclass(frozen=True)
class EvalItem:
    """One held-out (product, image) pair; ``features_index`` is its row in the features array."""

    product_id: str
    sub_category: str
    text: str
    features_index: int


@dataclass(frozen=True)
class Group:
    """One random-100 ranking problem. Indices refer to the ``items`` list.

    t2i: the query is ``items[query].text`` and the candidates are the images of
    ``items[c]``; i2t: the query is the image of ``items[query]`` and the
    candidates are the texts. ``candidates[positive] == query`` either way.
    """

    direction: Direction
    query: int
    candidates: tuple[int, ...]
    positive: int
    topped_up: bool
    warning: str | None = None


# --------------------------------------------------------------------------- groups


def check_group(group: Group, items: Sequence[EvalItem]) -> None:
    """Raise AssertionError unless the group has exactly one positive, at ``group.positive``.

    A second candidate of the query's product would be a positive scored as a
    negative and silently depress every metric, so this is checked on every
    group (explicit raise, so ``python -O`` does not skip it).
    """
    qpid = items[group.query].product_id
    pids = [items[c].product_id for c in group.candidates]
    n_pos = sum(p == qpid for p in pids)
    if n_pos != 1:
        raise AssertionError(
            f"{group.direction} group for query item {group.query} (product {qpid!r}) has {n_pos} "
            f"candidates of the query's product; exactly one positive is required"
        )
    if group.candidates[group.positive] != group.query:
        raise AssertionError(
            f"{group.direction} group for query item {group.query}: recorded positive position "
            f"{group.positive} holds item {group.candidates[group.positive]}, not the query item"
        )
    if len(set(pids)) != len(pids):
        raise AssertionError(f"{group.direction} group for query item {group.query} repeats a product among candidates")


def build_random100_groups(
    items: Sequence[EvalItem],
    n_queries: int = 1000,
    n_candidates: int = 100,
    seed: int = 0,
    direction: Direction = "t2i",
) -> list[Group]:
    """Seeded random-100 groups: each query product vs its positive + ``n_candidates`` other products.

    Negatives come from the query's sub-category (sampled without
    replacement); when it has fewer than ``n_candidates`` other products, all
    of them are used and the rest is drawn from other sub-categories
    (``topped_up``). Products, not items, are sampled, so a product with
    several images is never its own negative; a product's sub-category is that
    of its first item. When the whole set has fewer than ``n_candidates + 1``
    products every other product is used and ``warning`` says so.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 't2i' or 'i2t', not {direction!r}")
    if n_candidates < 0 or n_queries < 0:
        raise ValueError("n_queries and n_candidates must be non-negative")
    if not items:
        return []
    rng = np.random.default_rng([seed, _DIRECTION_STREAM[direction]])

    pid_codes, first_item = _product_codes(items)
    n_products = len(first_item)
    # items of each product, contiguous: order[start[p]: start[p] + count[p]]
    order = np.argsort(pid_codes, kind="stable")
    count = np.bincount(pid_codes, minlength=n_products)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    sub_names = [items[i].sub_category for i in first_item]
    sub_index: dict[str, int] = {}
    sub_codes = np.array([sub_index.setdefault(s, len(sub_index)) for s in sub_names], dtype=np.int64)
    by_sub = [np.flatnonzero(sub_codes == s) for s in range(len(sub_index))]

    warning = None
    n_neg = n_candidates
    if n_products - 1 < n_candidates:
        n_neg = n_products - 1
        warning = (
            f"eval set has only {n_products} products: each group uses all {n_neg} other products "
            f"instead of {n_candidates} negatives (chance R@K = K/{n_products}, not K/{n_candidates + 1})"
        )
        log.warning(warning)

    def representative(products: np.ndarray) -> np.ndarray:
        return order[start[products] + rng.integers(0, count[products])]

    queries = rng.choice(n_products, size=min(n_queries, n_products), replace=False)
    groups: list[Group] = []
    for qp in queries.tolist():
        same = by_sub[sub_codes[qp]]
        same = same[same != qp]
        if len(same) >= n_neg:
            negs = rng.choice(same, size=n_neg, replace=False)
            topped_up = False
        else:
            others = np.flatnonzero(sub_codes != sub_codes[qp])
            extra = rng.choice(others, size=n_neg - len(same), replace=False)
            negs = np.concatenate([same, extra])
            topped_up = True
        q_item = int(representative(np.array([qp]))[0])
        cands = np.concatenate([[q_item], representative(negs.astype(np.int64))])
        perm = rng.permutation(len(cands))
        cands = cands[perm]
        group = Group(
            direction=direction,
            query=q_item,
            candidates=tuple(int(c) for c in cands),
            positive=int(np.flatnonzero(perm == 0)[0]),
            topped_up=topped_up,
            warning=warning,
        )
        check_group(group, items)
        groups.append(group)
    return groups


def _product_codes(items: Sequence[EvalItem]) -> tuple[np.ndarray, list[int]]:
    """Per-item integer product code (order of first appearance) and each product's first item."""
    codes: dict[str, int] = {}
    first: list[int] = []
    out = np.empty(len(items), dtype=np.int64)
    for i, it in enumerate(items):
        code = codes.get(it.product_id)
        if code is None:
            code = codes[it.product_id] = len(first)
            first.append(i)
        out[i] = code
    return out, first


# --------------------------------------------------------------------------- random-100


def _gather(features: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float32 rows of ``features`` (memmap-friendly: each distinct row read once, in order)."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    block = np.asarray(features[uniq], dtype=np.float32)
    return block[inverse]


def _check_features(items: Sequence[EvalItem], features: np.ndarray) -> None:
    if features.ndim != 3:
        raise ValueError(f"features must be [N_images, 64, D], got shape {features.shape}")
    bad = [it.features_index for it in items if not 0 <= it.features_index < features.shape[0]]
    if bad:
        raise ValueError(f"features_index out of range [0, {features.shape[0]}): {bad[:5]}")


def pessimistic_rank(scores: np.ndarray, positive: int) -> int:
    """1-based rank of ``scores[positive]``; negatives scoring >= the positive rank ahead of it.

    Pessimistic on purpose: a constant or saturated scorer must not get credit
    for ties. NaN scores are treated as -inf (a NaN positive ranks last).
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    neg = np.delete(s, positive)
    return 1 + int(np.count_nonzero(neg >= s[positive]))


def recall_at(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Fraction of queries whose positive is ranked within the top ``k``."""
    r = np.asarray(ranks)
    return float(np.mean(r <= k)) if r.size else float("nan")


def _score_all(
    model: CrossEncoder, texts: list[str], feat_idx: np.ndarray, features: np.ndarray, batch_size: int
) -> np.ndarray:
    """Score flattened pairs in chunks of ``batch_size`` (chunks span groups: full batches, fewer calls)."""
    out = np.empty(len(texts), dtype=np.float64)
    for lo in range(0, len(texts), batch_size):
        hi = min(lo + batch_size, len(texts))
        s = np.asarray(model.score_pairs(texts[lo:hi], _gather(features, feat_idx[lo:hi])), dtype=np.float64)
        if s.size != hi - lo:
            raise ValueError(f"score_pairs returned {s.size} scores for {hi - lo} pairs")
        out[lo:hi] = s.reshape(-1)
    return out


def evaluate_random100(
    model: CrossEncoder,
    items: Sequence[EvalItem],
    features: np.ndarray,
    n_queries: int = 1000,
    n_candidates: int = 100,
    seed: int = 0,
    batch_size: int = 404,
    pair_scorer: Callable[[list[str], np.ndarray], np.ndarray] | None = None,
    tia_threshold: float = TIA_THRESHOLD,
) -> dict[str, Any]:
    """FashionBERT's random-100 evaluation of a cross encoder, both directions.

    ``pair_scorer(texts, feature_rows)`` replaces the cross encoder's scores
    (``model`` is then unused), e.g. :func:`dual_encoder_pair_scorer` to put the
    search's first stage through the very same groups, or
    :func:`cross_encoder_pair_scorer` to rank by log-odds (``tia_threshold=0``),
    which keep the order a saturated float32 probability loses to ties.

    Returns plain Python types (JSON-ready)::

        {"protocol": "random100", "t2i": {"r1", "r5", "r10", "top1_other_sub_category", "n_groups", "n_topped_up",
         "ranks", "group_sizes", "queries", "top_negatives"}, "i2t": {...}, "sum_r", "tia_accuracy", "tia_pairs",
         "n_groups", "n_topped_up", "chance_sum_r", "warnings", ...}

    ``sum_r`` = 100 x (sum of the six Rank@K), 0-600; chance is 3200/101 = 31.68
    for full 101-candidate groups (``chance_sum_r`` is exact for the groups
    built). TIA accuracy: on each t2i group, the positive pair and one seeded
    negative pair are classified as "match" when the score is > ``tia_threshold``
    (0.5 for probabilities; a tie is "no match", like argmax over [no-match, match]); accuracy over the
    2 x n_groups pairs (fewer if a group has no negative). Scores are reused
    from the ranking pass, so TIA costs no extra model calls.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not items:
        raise ValueError("evaluate_random100 needs at least one item")
    _check_features(items, features)
    groups = {
        d: build_random100_groups(items, n_queries=n_queries, n_candidates=n_candidates, seed=seed, direction=d)
        for d in DIRECTIONS
    }

    texts: list[str] = []
    feat_idx: list[int] = []
    for d in DIRECTIONS:
        for g in groups[d]:
            n = len(g.candidates)
            if d == "t2i":
                texts.extend([items[g.query].text] * n)
                feat_idx.extend(items[c].features_index for c in g.candidates)
            else:
                texts.extend(items[c].text for c in g.candidates)
                feat_idx.extend([items[g.query].features_index] * n)
    if pair_scorer is None:
        pair_scorer = lambda t, rows: _score_all(model, t, rows, features, batch_size)  # noqa: E731
    scores = np.asarray(pair_scorer(texts, np.asarray(feat_idx, dtype=np.int64)), dtype=np.float64).reshape(-1)
    if scores.size != len(texts):
        raise ValueError(f"pair_scorer returned {scores.size} scores for {len(texts)} pairs")

    result: dict[str, Any] = {
        "protocol": "random100",
        "n_queries": n_queries,
        "n_candidates": n_candidates,
        "seed": seed,
    }
    tia_rng = np.random.default_rng([seed, 3])
    tia_correct = tia_pairs = 0
    offset = 0
    chance_sum = 0.0
    for d in DIRECTIONS:
        ranks: list[int] = []
        sizes: list[int] = []
        top_negatives: list[int] = []
        other_sub_top = 0
        for g in groups[d]:
            s = scores[offset : offset + len(g.candidates)]
            offset += len(g.candidates)
            ranks.append(pessimistic_rank(s, g.positive))
            sizes.append(len(g.candidates))
            top_negatives.append(_top_negative(s, g))
            other_sub_top += _top_is_other_sub_category(s, g, items)
            if d == "t2i":
                tia_correct += int(s[g.positive] > tia_threshold)
                tia_pairs += 1
                if len(s) > 1:
                    neg = int(tia_rng.integers(0, len(s) - 1))
                    neg += neg >= g.positive  # skip the positive's position
                    tia_correct += int(not s[neg] > tia_threshold)
                    tia_pairs += 1
        block: dict[str, Any] = {f"r{k}": recall_at(ranks, k) for k in RANDOM100_KS}
        block.update(
            top1_other_sub_category=other_sub_top / len(groups[d]) if groups[d] else float("nan"),
            n_groups=len(groups[d]),
            n_topped_up=sum(g.topped_up for g in groups[d]),
            ranks=ranks,
            group_sizes=sizes,
            queries=[g.query for g in groups[d]],
            top_negatives=top_negatives,
        )
        result[d] = block
        if sizes:
            chance_sum += sum(float(np.mean(np.minimum(k, sizes) / np.asarray(sizes))) for k in RANDOM100_KS)
    result["sum_r"] = 100.0 * sum(result[d][f"r{k}"] for d in DIRECTIONS for k in RANDOM100_KS)
    result["chance_sum_r"] = 100.0 * chance_sum
    result["tia_accuracy"] = tia_correct / tia_pairs if tia_pairs else float("nan")
    result["tia_pairs"] = tia_pairs
    result["n_groups"] = sum(result[d]["n_groups"] for d in DIRECTIONS)
    result["n_topped_up"] = sum(result[d]["n_topped_up"] for d in DIRECTIONS)
    result["warnings"] = sorted({g.warning for d in DIRECTIONS for g in groups[d] if g.warning})
    return result


def _top_negative(scores: np.ndarray, group: Group) -> int:
    """The item index of the group's best-scored negative (-1 for a group without one).

    Kept per query so that a miss can be explained afterwards (fashionbert.evaluation.misses):
    the negative that outranks or ties the positive is the one that costs Rank@1.
    """
    if len(group.candidates) < 2:
        return -1
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf).copy()
    s[group.positive] = -np.inf
    return int(group.candidates[int(np.argmax(s))])


def _top_is_other_sub_category(scores: np.ndarray, group: Group, items: Sequence[EvalItem]) -> bool:
    """Whether a topped-up candidate of another sub-category scores at least as high as every one of the query's.

    Why report it: a scorer that never learnt to check the product type still ranks the
    same-sub-category candidates well, and only the top-ups expose it (a tote first for
    "jeans"). Ties count against the scorer, as in :func:`pessimistic_rank`.
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    own = items[group.query].sub_category
    other = np.fromiter((items[c].sub_category != own for c in group.candidates), dtype=bool, count=len(s))
    return bool(other.any()) and bool(s[other].max() >= s[~other].max())


class MemoisedPairScorer:
    """A pair scorer that remembers its last answer.

    Why: the cross encoder's ~100k random-100 pairs take minutes on a CPU, and the fused ranking
    (:func:`fashionbert.reranking.fuse_stage_scores`) needs the very same scores again. Another
    call with the same pairs returns the stored array; different pairs are scored afresh.
    """

    def __init__(self, scorer: Callable[[list[str], np.ndarray], np.ndarray]) -> None:
        self.scorer = scorer
        self._last: tuple[list[str], np.ndarray, np.ndarray] | None = None

    def __call__(self, texts: list[str], rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if self._last is not None and self._last[0] == texts and np.array_equal(self._last[1], rows):
            return self._last[2]
        scores = np.asarray(self.scorer(texts, rows), dtype=np.float64).reshape(-1)
        self._last = (list(texts), rows.copy(), scores)
        return scores


def cross_encoder_pair_scorer(
    model: Any, features: np.ndarray, batch_size: int = 404
) -> Callable[[list[str], np.ndarray], np.ndarray]:
    """The cross encoder's match log-odds (``model.match_logits``) as a pair scorer; threshold 0."""

    def score(texts: list[str], rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(texts), dtype=np.float64)
        for lo in range(0, len(texts), batch_size):
            hi = min(lo + batch_size, len(texts))
            logits = np.asarray(model.match_logits(texts[lo:hi], _gather(features, rows[lo:hi])), dtype=np.float64)
            if logits.size != hi - lo:
                raise ValueError(f"match_logits returned {logits.size} scores for {hi - lo} pairs")
            out[lo:hi] = logits.reshape(-1)
        return out

    return score


def dual_encoder_pair_scorer(
    model: DualEncoder, features: np.ndarray, batch_size: int = 128
) -> Callable[[list[str], np.ndarray], np.ndarray]:
    """Cosine of single-side encodings as a pair scorer, each text and image encoded once.

    Why: random-100 scored this way is the dual encoder's (stage 1's) quality on
    exactly the groups the cross encoder is judged on, so the two are comparable.
    The image cosine is scaled into (0, 1] as (cos + 1) / 2, so TIA accuracy
    at the 0.5 threshold reads "cosine > 0".
    """
    images = _embed(lambda lo, hi: model.encode_images(features[lo:hi]), len(features), batch_size, "encode_images")

    def score(texts: list[str], rows: np.ndarray) -> np.ndarray:
        unique = sorted(set(texts))
        position = {t: i for i, t in enumerate(unique)}
        vectors = _embed(lambda lo, hi: model.encode_text(unique[lo:hi], segment="T"), len(unique), batch_size, "encode_text")
        text_rows = np.fromiter((position[t] for t in texts), dtype=np.int64, count=len(texts))
        cosine = np.einsum("nd,nd->n", vectors[text_rows], images[rows])
        return (cosine + 1.0) / 2.0

    return score


# --------------------------------------------------------------------------- full catalog


def _embed(fn: Any, n: int, batch_size: int, what: str) -> np.ndarray:
    """Call ``fn(lo, hi)`` over [0, n) in batches; check [rows, d] and stack as float32."""
    parts = []
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        e = np.asarray(fn(lo, hi), dtype=np.float32)
        if e.ndim != 2 or e.shape[0] != hi - lo:
            raise ValueError(f"{what} returned shape {e.shape} for {hi - lo} inputs; expected [{hi - lo}, d]")
        parts.append(e)
    return np.concatenate(parts, axis=0)


def rank_positives(
    queries: np.ndarray, candidates: np.ndarray, q_codes: np.ndarray, c_codes: np.ndarray
) -> np.ndarray:
    """Exact inner-product ranks: 1-based rank of each query's best-scoring positive.

    Positives are the candidates with the query's code; negatives scoring >=
    the best positive rank ahead of it (pessimistic ties). Chunked over
    queries so memory stays ~16 MB whatever the catalog size.
    """
    n_q, n_c = len(queries), len(candidates)
    ranks = np.empty(n_q, dtype=np.int64)
    rows = max(1, min(n_q, (1 << 22) // max(1, n_c)))
    for lo in range(0, n_q, rows):
        hi = min(lo + rows, n_q)
        sims = queries[lo:hi] @ candidates.T
        sims = np.nan_to_num(sims, nan=-np.inf)
        pos = q_codes[lo:hi, None] == c_codes[None, :]
        if not pos.any(axis=1).all():
            raise AssertionError("a query has no positive among the candidates")
        best = np.where(pos, sims, -np.inf).max(axis=1)
        ranks[lo:hi] = 1 + np.count_nonzero((sims >= best[:, None]) & ~pos, axis=1)
    return ranks


def evaluate_full_catalog(
    model: DualEncoder,
    items: Sequence[EvalItem],
    features: np.ndarray,
    ks: Sequence[int] = (1, 10, 100),
    batch_size: int = 256,
) -> dict[str, Any]:
    """Full-catalog retrieval with a dual encoder: Recall@K and MRR, both directions, exact search.

    One query per item in each direction (t2i: its text, segment "T", against
    every item's image; i2t: its image against every item's text). Any item
    with the query's product_id is a positive, so several images of one
    product all count. Embeddings are used as returned (the model contract is
    L2-normalised, so inner product = cosine, as in the FAISS IP index).

    Returns ``{"protocol": "full_catalog", "ks", "n_items", "n_products",
    "t2i": {"recall@K"..., "mrr", "ranks"}, "i2t": {...}}`` in plain Python types.
    """
    if not items:
        raise ValueError("evaluate_full_catalog needs at least one item")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    _check_features(items, features)
    texts = [it.text for it in items]
    fidx = np.array([it.features_index for it in items], dtype=np.int64)
    n = len(items)
    text_emb = _embed(lambda lo, hi: model.encode_text(texts[lo:hi], segment="T"), n, batch_size, "encode_text")
    img_emb = _embed(lambda lo, hi: model.encode_images(_gather(features, fidx[lo:hi])), n, batch_size, "encode_images")
    if text_emb.shape[1] != img_emb.shape[1]:
        raise ValueError(f"text dim {text_emb.shape[1]} != image dim {img_emb.shape[1]}")
    codes, first = _product_codes(items)

    result: dict[str, Any] = {
        "protocol": "full_catalog",
        "ks": [int(k) for k in ks],
        "n_items": len(items),
        "n_products": len(first),
    }
    for d, q, c in (("t2i", text_emb, img_emb), ("i2t", img_emb, text_emb)):
        ranks = rank_positives(q, c, codes, codes)
        block: dict[str, Any] = {f"recall@{k}": recall_at(ranks, k) for k in ks}
        block["mrr"] = float(np.mean(1.0 / ranks))
        block["ranks"] = ranks.tolist()
        result[d] = block
    return result
