"""Read the patch-feature shards written by :mod:`indexer.features`.

Shards are memory-mapped, so a training job or the indexer can address any
(product, image) feature without loading a whole catalog's features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.features import INFO_FILE


class FeatureStoreError(FileNotFoundError):
    """The directory does not hold (finished) feature shards."""


class FeatureStore:
    """All finished shards of one features directory, addressable by (product_id, image_index)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        info_path = self.directory / INFO_FILE
        if not info_path.is_file():
            raise FeatureStoreError(f"no {INFO_FILE} in {self.directory}: run `fashionbert features` first")
        self.info: dict = json.loads(info_path.read_text())
        self._shards = sorted(p.with_suffix("") for p in self.directory.glob("part-*.npy"))
        tables, self._arrays = [], []
        for shard_no, base in enumerate(self._shards):
            meta = pq.read_table(base.with_suffix(".parquet"))
            n = meta.num_rows
            tables.append(meta.append_column("shard", pa.array(np.full(n, shard_no, np.int32)))
                          .append_column("offset", pa.array(np.arange(n, dtype=np.int64))))
            self._arrays.append(np.load(base.with_suffix(".npy"), mmap_mode="r"))
        self.index: pa.Table = pa.concat_tables(tables) if tables else pa.table({})
        self._lookup = {
            (pid, img): (shard, off)
            for pid, img, shard, off in zip(*(self.index.column(c).to_pylist() for c in ("product_id", "image_index", "shard", "offset")))
        } if tables else {}
        self._images_of: dict[str, list[int]] = {}
        for pid, img in sorted(self._lookup):
            self._images_of.setdefault(pid, []).append(img)

    @property
    def feature_dim(self) -> int:
        return int(self.info["feature_dim"])

    def __len__(self) -> int:
        return len(self._lookup)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._lookup

    def get(self, product_id: str, image_index: int = 0) -> np.ndarray:
        """float16 [64, D] features of one image; KeyError when it was never extracted or was bad."""
        shard, offset = self._lookup[(product_id, image_index)]
        return np.asarray(self._arrays[shard][offset])

    def get_at(self, shard: int, offset: int) -> np.ndarray:
        return np.asarray(self._arrays[shard][offset])

    def fingerprint_locations(self) -> dict[str, tuple[int, int]]:
        """Image content fingerprint -> (shard, offset), for reuse by a later extraction (empty for old shards)."""
        if "image_fingerprint" not in self.index.column_names:
            return {}
        cols = (self.index.column(c).to_pylist() for c in ("image_fingerprint", "shard", "offset"))
        return {fp: (shard, off) for fp, shard, off in zip(*cols) if fp}

    def views(self, product_id: str, limit: int | None = None) -> np.ndarray | None:
        """[n_views, 64, D] features of a product's first ``limit`` extracted views; None when it has none."""
        idx = self.image_indices(product_id)[:limit]
        return np.stack([self.get(product_id, i) for i in idx]) if idx else None

    def view_count(self, product_id: str, limit: int | None = None) -> int:
        """``len(views(product_id, limit))`` from the index alone, without reading a shard (0: no views)."""
        return len(self.image_indices(product_id)[:limit])

    def image_indices(self, product_id: str) -> list[int]:
        """The extracted views of a product, ascending (empty when it has none)."""
        return list(self._images_of.get(product_id, ()))

    def load_all(self) -> np.ndarray:
        """All features concatenated in index order (only for small catalogs and tests)."""
        if not self._arrays:
            return np.zeros((0, 64, self.feature_dim), np.float16)
        return np.concatenate([np.asarray(a) for a in self._arrays])

    def bad_images(self) -> list[dict]:
        """Every image that failed to decode, with its catalog row and reason."""
        out: list[dict] = []
        for base in self._shards:
            meta = pq.read_schema(base.with_suffix(".parquet")).metadata or {}
            out.extend(json.loads(meta.get(b"bad_images", b"[]")))
        return out
