"""``ids.parquet``: one row per indexed product, what a search hit is turned into.

It carries every catalog column through (unknown columns included, as
ARCHITECTURE.md §3 asks) except inline image bytes, which are replaced by
``image_paths`` (absolute paths, empty for inline images) so a version stays
small. It also records where the product's vectors live (``shard``,
``offset`` in ``emb/``), which is what an incremental update and an HNSW
rebuild read instead of re-encoding, and which images were encoded (``views``,
in order: the first is what the API's re-ranker and attention map read, and
the API links only these, never an image that failed to decode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from indexer.catalog import Catalog

IDS_FILE = "ids.parquet"
VECTOR_COLUMNS = ("faiss_id", "has_image", "num_images", "views", "shard", "offset")


def _image_paths(value: list | None, root: Path) -> list[str]:
    out: list[str] = []
    for item in value or []:
        if isinstance(item, str):
            out.append(str((root / item).resolve()) if item else "")
        elif isinstance(item, dict):
            path = item.get("path") or ""
            out.append(str((root / path).resolve()) if path and not item.get("bytes") else "")
    return out


def build_ids_table(catalog: Catalog, meta: pa.Table) -> pa.Table:
    """Catalog rows (kept, in order) joined with their embedding meta rows."""
    if meta.num_rows != len(catalog) or meta.column("product_id").to_pylist() != catalog.product_ids:
        raise ValueError("embedding meta rows do not line up with the catalog rows")
    table = catalog.table
    paths = [_image_paths(v, catalog.root) for v in table.column("images").to_pylist()]
    keep = [n for n in table.column_names if n not in ("images", "image_paths", *VECTOR_COLUMNS)]
    out = table.select(keep).append_column("image_paths", pa.array(paths, pa.list_(pa.string())))
    for name in VECTOR_COLUMNS:
        if name in meta.column_names:  # "views" is absent from shards of older builds
            out = out.append_column(name, meta.column(name))
    return out


def row_positions(ids: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(shard, offset) arrays of every row."""
    return (np.asarray(ids.column("shard").to_numpy(), np.int64), np.asarray(ids.column("offset").to_numpy(), np.int64))
