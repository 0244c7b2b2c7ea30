"""One published index version, opened for serving.

Everything a request needs is resolved once at load time (FAISS indexes with their tuned
search parameters, product rows as Python values, faiss id -> row, one FAISS id selector per
category, memory-mapped vectors and re-ranker patch features), so a request only does array
lookups. A loaded version is immutable: a hot swap builds a new one beside it and replaces
the reference, and requests that started on the old one finish on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq

from indexer.ann import load_index, omp_threads, to_inner_product
from indexer.embeddings import EMB_DIR, PATCHES
from indexer.files import shard_name
from indexer.ids_table import IDS_FILE, VECTOR_COLUMNS
from indexer.job import INFOS_FILE
from indexer.version_index import INDEX_FILES

# Columns every product response names explicitly; the rest of the catalog goes into ``extra``.
CORE_COLUMNS = ("product_id", "title", "category", "sub_category", "price")
HIDDEN_COLUMNS = ("image_paths", *VECTOR_COLUMNS)
SINGLE_THREAD_QUERIES = 4


class IndexLoadError(RuntimeError):
    """The version directory is incomplete or unreadable."""


def _search_parameters(index: faiss.Index, params: dict[str, int], selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
    """Per-call parameters (thread-safe, unlike setting ``index.nprobe``): tuned values + filter."""
    if not params and selector is None:
        return None
    if "nprobe" in params:
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(params["nprobe"])
    elif "efSearch" in params:
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = int(params["efSearch"])
    else:
        sp = faiss.SearchParameters()
    if selector is not None:
        sp.sel = selector
    return sp


@dataclass
class Hits:
    """Stage 1 results of one query: catalog rows and their cosine scores, best first."""

    rows: np.ndarray
    scores: np.ndarray


class LoadedIndex:
    """A published version (``INDEX_DIR/vNNNN``) ready to answer searches."""

    def __init__(self, path: str | Path, *, mmap: bool = False):
        self.path = Path(path)
        infos_path = self.path / INFOS_FILE
        if not infos_path.is_file():
            raise IndexLoadError(f"{self.path} is not a published index version (no {INFOS_FILE})")
        self.infos: dict[str, Any] = json.loads(infos_path.read_text())
        self.version: str = self.infos.get("version") or self.path.name
        self.checkpoint_sha256: str = self.infos.get("checkpoint_sha256", "")
        table = pq.read_table(self.path / IDS_FILE)
        self.count = table.num_rows
        self.columns: dict[str, list] = {name: table.column(name).to_pylist() for name in table.column_names}
        self.extra_columns = [c for c in table.column_names if c not in CORE_COLUMNS and c not in HIDDEN_COLUMNS]
        self.faiss_ids = np.asarray(table.column("faiss_id").to_numpy(), np.int64)
        self.shard = np.asarray(table.column("shard").to_numpy(), np.int64)
        self.offset = np.asarray(table.column("offset").to_numpy(), np.int64)
        self.has_image = np.asarray(table.column("has_image").to_numpy(zero_copy_only=False), bool)
        if "views" not in self.columns:  # a version built before views were recorded: assume the first ones
            self.columns["views"] = [list(range(n)) for n in self.columns["num_images"]]
        self._row_of_faiss = {int(f): i for i, f in enumerate(self.faiss_ids)}
        self.row_of_product = {p: i for i, p in enumerate(self.columns["product_id"])}

        self.indexes: dict[str, faiss.Index] = {}
        self.params: dict[str, dict[str, int]] = {}
        for kind, name in INDEX_FILES.items():
            if (self.path / name).is_file():
                self.indexes[kind] = load_index(self.path / name, mmap=mmap)
                self.params[kind] = dict((self.infos.get("indexes", {}).get(kind) or {}).get("params") or {})
        if "product" not in self.indexes:
            raise IndexLoadError(f"{self.path} has no {INDEX_FILES['product']}")

        # One selector per category: a filtered search is exact about the filter (no over-fetching).
        self.category_counts: dict[str, int] = {}
        self._selectors: dict[str, faiss.IDSelector] = {}
        categories = np.asarray(self.columns["category"], dtype=object)
        for name in sorted(set(self.columns["category"])):
            ids = self.faiss_ids[categories == name]
            self.category_counts[name] = len(ids)
            self._selectors[name] = faiss.IDSelectorBatch(ids)

        self._arrays: dict[tuple[str, int], np.ndarray] = {}
        self.image_roots = self._image_roots()

    # ------------------------------------------------------------------ helpers
    def _array(self, kind: str, shard: int) -> np.ndarray:
        key = (kind, shard)
        arr = self._arrays.get(key)
        if arr is None:
            path = self.path / EMB_DIR / kind / f"{shard_name(shard)}.npy"
            if not path.is_file():
                raise IndexLoadError(f"{path} is missing: rebuild the index with this version of the indexer")
            arr = self._arrays[key] = np.load(path, mmap_mode="r")
        return arr

    def _image_roots(self) -> list[Path]:
        """Directories images may be served from: the catalog's and every change file's of this
        version's lineage (an update's new rows come with their change file's images)."""
        roots: list[Path] = []
        infos, seen = self.infos, set()
        while infos is not None:
            for key in ("catalog", "changes"):
                if infos.get(key):
                    roots.append(Path(infos[key]).resolve().parent)
            parent = infos.get("parent")
            parent_infos = self.path.parent / str(parent) / INFOS_FILE if parent else None
            if parent is None or parent in seen or parent_infos is None or not parent_infos.is_file():
                break
            seen.add(parent)
            infos = json.loads(parent_infos.read_text())
        return list(dict.fromkeys(roots))

    # ------------------------------------------------------------------ queries
    def has_kind(self, kind: str) -> bool:
        return kind in self.indexes and self.indexes[kind].ntotal > 0

    def search(self, kind: str, vectors: np.ndarray, k: int, category: str | None = None) -> list[Hits]:
        """Top ``k`` rows per query vector from the ``kind`` index, optionally within a category."""
        index = self.indexes[kind]
        selector = self._selectors[category] if category is not None else None
        params = _search_parameters(index, self.params.get(kind, {}), selector)
        k = max(1, min(int(k), max(1, index.ntotal)))
        # A few queries are a matrix-vector scan: OpenMP threads only add start-up and sync cost on
        # a busy server (bench/search.py: 100k Flat, 1 query: 3.7 ms on 1 thread, 10 ms on 2).
        threads = 1 if len(vectors) <= SINGLE_THREAD_QUERIES else None
        with omp_threads(threads):
            scores, ids = index.search(np.ascontiguousarray(vectors, np.float32), k, params=params)
        scores = to_inner_product(index, scores)
        out = []
        for s_row, id_row in zip(scores, ids):
            keep = id_row >= 0
            rows = np.fromiter((self._row_of_faiss[int(i)] for i in id_row[keep]), np.int64)
            out.append(Hits(rows, s_row[keep].astype(np.float32)))
        return out

    def vector(self, kind: str, row: int) -> np.ndarray:
        """The stored ``kind`` vector (product, image or title) of a catalog row."""
        return np.asarray(self._array(kind, int(self.shard[row]))[int(self.offset[row])], np.float32)

    def patches(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), 64, D] first-view patch features (what the re-ranker scores)."""
        return np.stack([np.asarray(self._array(PATCHES, int(self.shard[r]))[int(self.offset[r])], np.float32) for r in rows])

    def row(self, product_id: str) -> int | None:
        return self.row_of_product.get(product_id)

    def value(self, column: str, row: int) -> Any:
        return self.columns[column][row]

    def image_views(self, row: int) -> list[int]:
        """Image positions of a row that were encoded (readable), first = the re-ranker's view."""
        paths = self.columns["image_paths"][row] or []
        return [n for n in (self.columns["views"][row] or []) if 0 <= n < len(paths) and paths[n]]

    def image_path(self, row: int, n: int) -> Path | None:
        """The n-th image file of a row when it was encoded and is a file under an allowed root (else None)."""
        if n not in self.image_views(row):
            return None
        paths = self.columns["image_paths"][row]
        path = Path(paths[n]).resolve()
        if not any(path.is_relative_to(root) for root in self.image_roots):
            return None
        return path if path.is_file() else None

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "count": self.count,
            "path": str(self.path),
            "indexes": {k: {"factory": self.infos.get("indexes", {}).get(k, {}).get("factory"), "count": int(v.ntotal),
                            "params": self.params.get(k, {})} for k, v in self.indexes.items()},
            "checkpoint_sha256": self.checkpoint_sha256,
        }
