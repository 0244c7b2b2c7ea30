"""The FAISS stage of a version: one index per vector kind, tuned and measured.

A version serves three indexes over the same products (ids are
:func:`indexer.embeddings.faiss_id` of the product id in all three):

* ``index.faiss`` - product vectors (text query -> product, the main search);
* ``image.faiss`` - image-only vectors of products that have a readable image
  (photo query -> product);
* ``title.faiss`` - title-only vectors (product -> similar products).

Each is tuned (nprobe / efSearch) to the recall target against exact search,
measured on *real* query vectors: catalog queries encoded as segment Q (titles
when a catalog has none) for the text-facing indexes, product photos for the
image index.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from fashionbert.encoder import FashionBert
from indexer.ann import build_index, load_index, remove_ids, save_index, set_search_params, supports_remove, tune
from indexer.ann_tuning import choose_factory, estimate_memory, exact_neighbours, recall_at_k

log = logging.getLogger(__name__)

INDEX_FILES: dict[str, str] = {"product": "index.faiss", "image": "image.faiss", "title": "title.faiss"}
RECALL_WARN = 0.95
PROGRESS_MIN = 100_000  # show a build progress bar for indexes bigger than this


@dataclass(frozen=True)
class AnnConfig:
    factory: str = "auto"  # or any faiss factory string (no IDMap prefix)
    max_memory_bytes: int | None = None
    target_recall: float = 0.95
    recall_queries: int = 1000
    seed: int = 0
    use_gpu: bool | None = None  # None: when faiss sees a GPU


@dataclass
class KindIndexInfo:
    factory: str
    params: dict[str, int]
    count: int
    dim: int
    recall_at_10: float
    build_seconds: float
    reason: str = ""
    estimated_bytes: int = 0
    tune_curve: list[dict] = field(default_factory=list)
    rebuilt: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _sample(values: list[str], n: int, seed: int) -> list[str]:
    if len(values) <= n:
        return values
    rng = np.random.default_rng(seed)
    return [values[i] for i in sorted(rng.choice(len(values), size=n, replace=False))]


def recall_queries(model: FashionBert, ids_table: pa.Table, image_vectors: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """Query vectors standing in for live traffic, per index kind."""
    texts: list[str] = []
    if "queries" in ids_table.column_names:
        texts = [q for qs in ids_table.column("queries").to_pylist() for q in (qs or []) if isinstance(q, str) and q.strip()]
    segment = "Q"
    if not texts:
        texts, segment = [t for t in ids_table.column("title").to_pylist() if isinstance(t, str)], "T"
    text_q = model.encode_text(_sample(texts, n, seed), segment=segment)
    has_image = np.asarray(ids_table.column("has_image").to_numpy(zero_copy_only=False), bool)
    rows = np.flatnonzero(has_image)
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    image_q = image_vectors[rows] if len(rows) else text_q[:0]
    return {"product": text_q, "title": text_q, "image": image_q}


def _rows_of(kind: str, ids_table: pa.Table) -> np.ndarray:
    """Which rows a kind's index holds: every product, or only those with an image."""
    n = ids_table.num_rows
    if kind != "image":
        return np.arange(n)
    return np.flatnonzero(np.asarray(ids_table.column("has_image").to_numpy(zero_copy_only=False), bool))


def _measure(index, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, cfg: AnnConfig, params: dict | None):
    """Tune (params None) or re-measure recall with fixed params."""
    if len(queries) == 0:
        return {} if params is None else params, float("nan"), []
    if params is not None:
        set_search_params(index, params)
        truth = exact_neighbours(vectors, ids, queries, 10)
        _, found = index.search(np.ascontiguousarray(queries, np.float32), 10)
        return params, recall_at_k(found, truth, 10), []
    result = tune(index, vectors, ids, queries, k=10, target_recall=cfg.target_recall,
                  max_queries=cfg.recall_queries, seed=cfg.seed)
    return result.params, result.recall_at_k, result.curve


def _per_kind(ids_table: pa.Table, vectors: dict[str, np.ndarray]):
    """(kind, file name, rows, vectors, ids) of each index of a version; an empty kind is skipped with a warning."""
    ids_all = np.asarray(ids_table.column("faiss_id").to_numpy(), np.int64)
    for kind, filename in INDEX_FILES.items():
        rows = _rows_of(kind, ids_table)
        if len(rows) == 0:
            log.warning("index %s: no products to index (no readable images?); skipped", kind)
            continue
        yield kind, filename, rows, np.ascontiguousarray(vectors[kind][rows], np.float32), ids_all[rows]


def build_kind_indexes(
    out_dir: Path, ids_table: pa.Table, vectors: dict[str, np.ndarray], queries: dict[str, np.ndarray], cfg: AnnConfig
) -> dict[str, KindIndexInfo]:
    """Build, tune and save the three indexes of a version; returns their manifest entries."""
    out: dict[str, KindIndexInfo] = {}
    for kind, filename, rows, vecs, ids in _per_kind(ids_table, vectors):
        start = time.perf_counter()
        dim = vecs.shape[1]
        if cfg.factory == "auto":
            plan = choose_factory(len(rows), dim, cfg.max_memory_bytes)
            factory, reason, est = plan.factory, plan.reason, plan.estimated_bytes
        else:
            factory, reason, est = cfg.factory, "given with --factory", estimate_memory(cfg.factory, len(rows), dim)
        index = build_index(vecs, ids, factory, seed=cfg.seed, use_gpu=cfg.use_gpu, progress=len(rows) > PROGRESS_MIN)
        params, recall, curve = _measure(index, vecs, ids, queries[kind], cfg, None)
        save_index(index, out_dir / filename)
        info = KindIndexInfo(factory, params, int(index.ntotal), dim, recall, time.perf_counter() - start, reason, est, curve)
        _warn_recall(kind, info)
        out[kind] = info
    return out


def update_kind_indexes(
    live_dir: Path,
    out_dir: Path,
    live_infos: dict[str, dict],
    ids_table: pa.Table,
    vectors: dict[str, np.ndarray],
    new_rows: np.ndarray,
    gone_ids: np.ndarray,
    queries: dict[str, np.ndarray],
    cfg: AnnConfig,
) -> dict[str, KindIndexInfo]:
    """Apply removals and additions to a copy of each live index (rebuild where FAISS cannot delete).

    ``ids_table``/``vectors`` describe the new version's live rows; ``new_rows`` are the rows
    that are new or replaced; ``gone_ids`` the faiss ids of removed or replaced products.
    """
    out: dict[str, KindIndexInfo] = {}
    for kind, filename, rows, vecs, ids in _per_kind(ids_table, vectors):
        start = time.perf_counter()
        prev = live_infos.get(kind)
        added = np.isin(rows, new_rows)
        rebuilt = prev is None or not (live_dir / filename).is_file()
        if not rebuilt:
            index = load_index(live_dir / filename)
            rebuilt = not supports_remove(index)
        if rebuilt:  # HNSW cannot delete: rebuild the graph from the stored vectors (no re-encoding)
            factory = prev["factory"] if prev else choose_factory(len(rows), vecs.shape[1], cfg.max_memory_bytes).factory
            index = build_index(vecs, ids, factory, seed=cfg.seed, use_gpu=cfg.use_gpu, progress=len(rows) > PROGRESS_MIN)
        else:
            factory = prev["factory"]
            if len(gone_ids):
                remove_ids(index, gone_ids)
            if added.any():
                index.add_with_ids(vecs[added], ids[added])
        if int(index.ntotal) != len(rows):
            raise RuntimeError(f"index {kind}: holds {index.ntotal} vectors after the update, expected {len(rows)}")
        params, recall, curve = _measure(index, vecs, ids, queries[kind], cfg, prev.get("params") if prev else None)
        save_index(index, out_dir / filename)
        info = KindIndexInfo(factory, params, int(index.ntotal), vecs.shape[1], recall, time.perf_counter() - start,
                             "incremental update" + (" (rebuilt: index type cannot delete)" if rebuilt else ""),
                             estimate_memory(factory, len(rows), vecs.shape[1]), curve, rebuilt)
        _warn_recall(kind, info)
        out[kind] = info
    return out


def _warn_recall(kind: str, info: KindIndexInfo) -> None:
    if info.recall_at_10 == info.recall_at_10 and info.recall_at_10 < RECALL_WARN:
        log.warning(
            "index %s (%s, %s): recall@10 vs exact search is %.3f < %.2f; raise nprobe/efSearch or use a finer index",
            kind, info.factory, info.params, info.recall_at_10, RECALL_WARN,
        )
