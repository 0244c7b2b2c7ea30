"""Which product vector serves search best: the joint encoding or a linear-combination preset.

The index serves ``emb/product`` vectors (:mod:`indexer.embeddings`); this job
scores exactly those vectors on a held-out catalog, exact search, for the two
ways shoppers search:

* ``t2p`` (text->image search): each product's known shopper queries (segment
  Q; titles when a catalog has none) against every product vector;
* ``i2p`` (image->text search): a photo of the product against every product
  vector. The query photo is the product's *last* view, and only products with
  at least 3 views take part, so no preset (a <= 2) contains the query image
  itself.

Metrics: ``products.<preset>.{t2p,i2p}.recall@{1,10,100}`` and ``.mrr``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fashionbert.encoder import FashionBert
from fashionbert.evaluation.protocols import rank_positives, recall_at
from fashionbert.product_vectors import product_vector_spec
from indexer.catalog import read_catalog
from indexer.embeddings import EmbedConfig, encode_batch, product_texts
from indexer.feature_store import FeatureStore

KS = (1, 10, 100)


def _block(ranks: np.ndarray) -> dict[str, float]:
    out = {f"recall@{k}": recall_at(ranks, k) for k in KS}
    out["mrr"] = float(np.mean(1.0 / ranks))
    out["n_queries"] = float(len(ranks))
    return out


def evaluate_product_vectors(
    model: FashionBert,
    catalog_path: Path,
    features_dir: Path,
    presets: Sequence[str] = ("joint", "i2t", "t2i"),
    batch_size: int = 64,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Flat metrics for each preset (see the module docstring)."""
    catalog = read_catalog(catalog_path, check_images="none")
    store = FeatureStore(features_dir)
    pids, titles, texts = catalog.product_ids, catalog.table.column("title").to_pylist(), product_texts(catalog)
    views = [store.views(p, EmbedConfig().max_views) for p in pids]  # as the index encodes them
    # Text queries: the shopper queries of each product (titles when there are none).
    names = catalog.table.column_names
    queries = catalog.table.column("queries").to_pylist() if "queries" in names else [None] * len(pids)
    q_text, q_code = [], []
    for code, (qs, title) in enumerate(zip(queries, titles)):
        for q in (qs or [title]):
            q_text.append(q)
            q_code.append(code)
    segment = "Q" if "queries" in names else "T"
    t2p_q = model.encode_text(q_text, segment=segment, batch_size=batch_size)
    all_views = [store.image_indices(p) for p in pids]
    photo_rows = [i for i, v in enumerate(all_views) if len(v) >= 3]
    photos = np.stack([store.get(pids[i], all_views[i][-1]) for i in photo_rows]) if photo_rows else None
    i2p_q = model.encode_images(photos, batch_size=batch_size) if photos is not None else None
    out: dict[str, float] = {}
    for name in presets:
        spec = product_vector_spec(name)
        vecs = np.concatenate([
            encode_batch(model, titles[s : s + batch_size], texts[s : s + batch_size], views[s : s + batch_size], spec, batch_size)["product"]
            for s in range(0, len(pids), batch_size)
        ])
        codes = np.arange(len(pids))
        blocks = {"t2p": _block(rank_positives(t2p_q, vecs, np.asarray(q_code), codes))}
        if i2p_q is not None:
            blocks["i2p"] = _block(rank_positives(i2p_q, vecs, np.asarray(photo_rows), codes))
        for direction, block in blocks.items():
            for key, value in block.items():
                out[f"products.{name}.{direction}.{key}"] = value
        echo(f"eval: product vectors {name}: " + ", ".join(
            f"{d} R@10 {b['recall@10']:.3f} MRR {b['mrr']:.3f}" for d, b in blocks.items()))
    return out


def markdown(metrics: dict[str, float], presets: Sequence[str]) -> str:
    lines = ["| product vector | t2p R@1 | t2p R@10 | t2p MRR | i2p R@1 | i2p R@10 | i2p MRR |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in presets:
        cells = [metrics.get(f"products.{name}.{d}.{k}", float("nan")) for d in ("t2p", "i2p") for k in ("recall@1", "recall@10", "mrr")]
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)
