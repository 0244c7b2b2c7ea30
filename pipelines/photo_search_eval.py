"""Photo search as the index serves it: a shopper's photo against the image-only vectors.

A shopper who uploads a photo is searched against ``emb/image`` (:mod:`indexer.embeddings`):
each product's image-only vector, the normalised mean of its first ``max_views`` views.
Random-100 and the full-catalog protocol score only main photos, so they cannot see what
pretraining on the other views (``--main-view-share`` < 1, docs/design.md item 49) buys or
costs this search. This job measures it on a held-out catalog:

* the query is one held-out photo per product: its last *whole-garment* view after the main
  photo (a shopper photographs the garment, not a fabric close-up, and a stray photo shows
  another product); without an ``image_kinds`` column, its last view after the main one;
* the gallery holds every product's image-only vector built exactly as the index builds it,
  but from its views *without* the held-out photo, so no query finds its own pixels;
* exact inner-product search over the whole gallery; Recall@1/10/100 and MRR under
  ``photo_search.*`` (pessimistic ties, as every protocol here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fashionbert.encoder import FashionBert
from fashionbert.evaluation.protocols import rank_positives, recall_at
from fashionbert.product_vectors import normalise
from fashionbert.synthetic.drawing import FRONT, GARMENT
from indexer.catalog import read_catalog
from indexer.embeddings import EmbedConfig
from indexer.feature_store import FeatureStore
from pipelines.tag_views import KINDS_COLUMN

KS = (1, 10, 100)
SHOPPER_VIEW_KINDS = frozenset({FRONT, GARMENT})  # whole-garment shots: what a shopper photographs


def held_out_photo(views: list[int], kinds: list[str] | None) -> int | None:
    """The image index a product's shopper query uses: its last eligible extracted view after
    the first one, or None when it has none (the product then only sits in the gallery)."""
    later = [v for v in views[1:] if kinds is None or (v < len(kinds) and kinds[v] in SHOPPER_VIEW_KINDS)]
    return later[-1] if later else None


def evaluate_photo_search(
    model: FashionBert,
    catalog_path: Path,
    features_dir: Path,
    max_views: int = EmbedConfig().max_views,
    batch_size: int = 64,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """``photo_search.{recall@1,recall@10,recall@100,mrr,n_queries,n_gallery}`` (module docstring).

    Raises ValueError when no product has a photo to hold out (every product has one view).
    """
    catalog = read_catalog(catalog_path, check_images="none")
    store = FeatureStore(features_dir)
    pids = catalog.product_ids
    names = catalog.table.column_names
    kinds = catalog.table.column(KINDS_COLUMN).to_pylist() if KINDS_COLUMN in names else [None] * len(pids)
    query_rows, query_views, gallery_rows, gallery_views = [], [], [], []
    for row, (pid, k) in enumerate(zip(pids, kinds)):
        views = store.image_indices(pid)
        held = held_out_photo(views, k)
        if held is not None:
            query_rows.append(row)
            query_views.append(held)
        kept = [v for v in views if v != held][:max_views]
        if kept:  # a product without any image is not in the image index
            gallery_rows.append(row)
            gallery_views.append(kept)
    if not query_rows:
        raise ValueError(f"photo search: no product of {catalog_path} has a photo besides its main one to query with")
    # One encoder pass over every photo involved; the gallery vectors average theirs as the index does.
    flat = [(pids[r], v) for r, vs in zip(gallery_rows, gallery_views) for v in vs]
    flat += [(pids[r], v) for r, v in zip(query_rows, query_views)]
    vecs = model.encode_images(np.stack([store.get(p, v) for p, v in flat]), batch_size=batch_size)
    gallery, pos = [], 0
    for vs in gallery_views:
        gallery.append(normalise(vecs[pos : pos + len(vs)].mean(axis=0)))
        pos += len(vs)
    queries = vecs[pos:]
    ranks = rank_positives(queries, np.stack(gallery), np.asarray(query_rows), np.asarray(gallery_rows))
    out = {f"photo_search.recall@{k}": recall_at(ranks, k) for k in KS}
    out["photo_search.mrr"] = float(np.mean(1.0 / ranks))
    out["photo_search.n_queries"] = float(len(ranks))
    out["photo_search.n_gallery"] = float(len(gallery_rows))
    echo(f"eval: photo search ({len(ranks)} held-out shopper photos against {len(gallery_rows)} image-only vectors): "
         f"R@1 {out['photo_search.recall@1']:.3f}, R@10 {out['photo_search.recall@10']:.3f}, "
         f"MRR {out['photo_search.mrr']:.3f}")
    return out
