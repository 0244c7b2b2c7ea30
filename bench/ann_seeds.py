"""Real vectors for ``bench/ann.py``: a checkpoint's product vectors and encoded shopper queries.

For each catalog (with its patch-feature directory) it writes the index's product vectors
(``indexer.embeddings.encode_batch``, joint preset) and the catalog's ``queries`` encoded as
segment Q, so the ANN benchmark measures recall on real embeddings and cross-modal queries.

    python bench/ann_seeds.py --checkpoint runs/r4 --out seeds \
        --data data/train/catalog.parquet:data/train/features --data data/test/catalog.parquet:data/test/features
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fashionbert.encoder import FashionBert
from fashionbert.product_vectors import PRESETS
from indexer.catalog import read_catalog
from indexer.embeddings import EmbedConfig, encode_batch, product_texts
from indexer.feature_store import FeatureStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", action="append", required=True, help="CATALOG.parquet:FEATURES_DIR (repeatable)")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT/seeds.npy and OUT/queries.npy")
    args = ap.parse_args()
    model = FashionBert.from_pretrained(args.checkpoint)
    seeds, queries = [], []
    for spec in args.data:
        catalog_path, features = spec.split(":", 1)
        catalog, store = read_catalog(catalog_path, check_images="none"), FeatureStore(features)
        pids, titles, texts = catalog.product_ids, catalog.table.column("title").to_pylist(), product_texts(catalog)
        for s in range(0, len(pids), 64):
            views = [store.views(p, EmbedConfig().max_views) for p in pids[s : s + 64]]
            seeds.append(encode_batch(model, titles[s : s + 64], texts[s : s + 64], views, PRESETS["joint"])["product"])
        queries.append(model.encode_text([q for qs in catalog.table.column("queries").to_pylist() for q in qs or []], segment="Q"))
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "seeds.npy", np.concatenate(seeds))
    np.save(args.out / "queries.npy", np.concatenate(queries))
    print(f"seeds {np.concatenate(seeds).shape}, queries {np.concatenate(queries).shape} -> {args.out}")


if __name__ == "__main__":
    main()
