"""Approximate nearest-neighbour (ANN) indexes of product embeddings, on FAISS.

The encoder gives every product an L2-normalised float32 vector, so cosine similarity is the
inner product and a higher score is a better match. Flat and IVF indexes use
``faiss.METRIC_INNER_PRODUCT``; HNSW graphs are built on L2, which ranks unit vectors
identically and gives far better graphs, and :func:`search` returns their scores as inner
products too. Products are addressed by int64 ids (a hash of the product id string), never by
row position, so a search returns catalog ids directly and a product can be removed or
replaced without renumbering the others.

This module holds the index mechanics (build, search parameters, tuning, removal, atomic
save/load, description); :mod:`indexer.ann_tuning` chooses a factory for a catalog size and
memory budget and computes exact neighbours and recall. Its public names are re-exported here,
so callers import everything from ``indexer.ann``. Numbers in, numbers out: no model code.

GPUs: faiss-gpu builds IVF indexes (k-means training and list assignment) on all visible GPUs
and hands back a CPU index, so what is saved and served is the same on every machine.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from indexer.ann_tuning import (
    FLAT_MAX_COUNT,
    HNSW_M,
    MIN_POINTS_PER_CENTROID,
    NLIST_MAX,
    NLIST_MIN,
    NORM_TOLERANCE,
    PQ_DIVISORS,
    AnnBudgetError,
    AnnPlan,
    _as_f32,
    _check_block,
    _check_ids,
    _check_vectors,
    choose_factory,
    estimate_memory,
    exact_neighbours,
    nlist_for,
    recall_at_k,
)

__all__ = [
    "ADD_CHUNK", "EF_SEARCH_SWEEP", "FLAT_MAX_COUNT", "HNSW_M", "MIN_POINTS_PER_CENTROID",
    "NLIST_MAX", "NLIST_MIN", "NORM_TOLERANCE", "PQ_DIVISORS", "AnnBudgetError", "AnnPlan", "TuneResult", "build_index",
    "choose_factory", "describe", "estimate_memory", "exact_neighbours", "load_index", "nlist_for",
    "recall_at_k", "remove_ids", "save_index", "search", "set_search_params", "supports_remove", "tune",
]

ADD_CHUNK = 65_536
# Graph quality of HNSW builds: FAISS' default 40 reaches only recall@10 0.93 on 1M real vectors
# with text queries; 100 reaches 0.957 at efSearch 128 for 1.4x the build time (bench/ann.py).
HNSW_EF_CONSTRUCTION = 100
"""Vectors per ``add`` call: bounds the float32 copy of float16/memory-mapped input and lets the
progress bar move."""

EF_SEARCH_SWEEP = (16, 32, 64, 128, 256, 512, 1024)
"""HNSW ``efSearch`` values :func:`tune` tries, cheapest first (IVF: nprobe = 1, 2, 4, ... nlist)."""


# ----------------------------------------------------------------------------- helpers


@contextmanager
def omp_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` OpenMP threads, then restore the previous setting.

    OpenMP's thread count is a setting of the calling thread (shared with torch, which uses the
    same runtime); changing it only for the duration of one call keeps a library function from
    surprising the rest of the thread (e.g. a web server's model thread)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF layer of ``index`` (through IDMap / PreTransform wrappers), downcast, or None."""
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return None


def _unwrap(index: faiss.Index) -> faiss.Index:
    """The index inside an IndexIDMap/IndexIDMap2 wrapper (downcast), else ``index`` itself."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def _hnsw(index: faiss.Index) -> faiss.IndexHNSW | None:
    inner = _unwrap(index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def _gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _want_gpu(use_gpu: bool | None) -> bool:
    if use_gpu is None:
        return _gpu_count() > 0
    if use_gpu and _gpu_count() == 0:
        raise RuntimeError("use_gpu=True but FAISS sees no GPU (is faiss-cpu installed instead of faiss-gpu?)")
    return bool(use_gpu)


# ----------------------------------------------------------------------------- build


def build_index(vectors: np.ndarray, ids: np.ndarray, factory: str, *, seed: int = 0, max_train: int = 200_000,
                use_gpu: bool | None = None, progress: bool = False, threads: int | None = None) -> faiss.Index:
    """Build a CPU index of ``vectors`` labelled with ``ids`` (int64), inner-product metric.

    ``factory`` is a ``faiss.index_factory`` string without an IDMap prefix ("Flat", "HNSW32",
    "IVF1024,Flat", "IVF4096,PQ32x8"). Flat and HNSW store no ids of their own, so they are
    wrapped in ``IndexIDMap2`` (which also allows ``reconstruct`` by id); IVF indexes keep ids
    in their inverted lists. Trainable indexes learn on a seeded sample of at most ``max_train``
    vectors and with seeded k-means, so two builds with the same seed agree (on the CPU; GPU
    k-means is not bit-reproducible). Vectors may be float16/64 or memory-mapped: they are
    converted to float32 one ``ADD_CHUNK`` at a time, so a catalog is never copied whole.

    ``use_gpu=None`` uses GPUs when FAISS sees any. Only IVF indexes go to the GPU: HNSW has no
    GPU version and a Flat "build" is a memory copy, so a GPU round trip would only add
    transfers. An IVF layout the GPU does not implement (e.g. IVF-PQ with too many
    sub-quantizers) falls back to GPU k-means with CPU encoding, with a warning.
    """
    vectors = _check_vectors(vectors)
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("no vectors to index")
    ids = _check_ids(ids, n)
    if max_train < 1:
        raise ValueError(f"max_train must be >= 1, got {max_train}")
    factory = factory.strip()
    if factory.upper().startswith("IDMAP"):
        raise ValueError(f"factory {factory!r}: leave out the IDMap prefix, build_index adds it where needed")
    # HNSW builds its graph with the metric it searches with, and inner-product graphs are poor
    # (not a metric: no triangle inequality). On L2-normalised vectors L2 ranks exactly like
    # inner product (|a-b|^2 = 2 - 2 a.b), so HNSW is built on L2 and :func:`search` maps the
    # distances back to inner products. Measured on 1M real-encoded vectors with text queries
    # (bench/ann.py, docs/results.md): IP graph recall@10 0.905 at efSearch 1024 vs L2 0.957 at 128.
    is_hnsw = factory.upper().startswith("HNSW")
    inner = faiss.index_factory(dim, factory, faiss.METRIC_L2 if is_hnsw else faiss.METRIC_INNER_PRODUCT)
    if is_hnsw:
        faiss.downcast_index(inner).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    ivf = _ivf(inner)
    if ivf is not None:
        ivf.cp.seed = seed
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.pq.cp.seed = seed
            # The factory turns on polysemous training for 8-bit PQ: a slow annealing that only
            # pays off for Hamming-filtered search, which we never use. Codes and ADC are unchanged.
            ivf.do_polysemous_training = False
        index = inner
    else:
        index = faiss.IndexIDMap2(inner)  # keeps a Python reference to `inner`, which it wraps

    with omp_threads(threads):
        work, gpu_clustering = index, None
        if ivf is not None and _want_gpu(use_gpu):
            try:
                work = faiss.index_cpu_to_all_gpus(index)
            except RuntimeError as exc:  # a layout GpuIndexIVF* does not implement
                warnings.warn(f"{factory} cannot be built on the GPU ({str(exc).strip().splitlines()[-1]}); "
                              "running its coarse k-means on the GPU and the rest on the CPU", stacklevel=2)
                gpu_clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(dim, faiss.METRIC_INNER_PRODUCT))
                ivf.clustering_index = gpu_clustering
        if not work.is_trained:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n, size=min(n, max_train), replace=False))
            sample = _as_f32(vectors[rows])
            _check_block(sample, rows=rows)
            work.train(sample)
            del sample
            if gpu_clustering is not None:
                ivf.clustering_index = None  # not serialised; drop the GPU reference
        bar = tqdm(total=n, unit="vec", desc=f"index {factory}", disable=not progress)
        for start in range(0, n, ADD_CHUNK):
            block = _as_f32(vectors[start : start + ADD_CHUNK])
            _check_block(block, start)
            work.add_with_ids(block, ids[start : start + len(block)])
            bar.update(len(block))
        bar.close()
        if work is not index:
            index = faiss.index_gpu_to_cpu(work)
    return index


# ----------------------------------------------------------------------------- search


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set ``nprobe`` (IVF) and/or ``efSearch`` (HNSW) on ``index``, through IDMap wrappers.

    The values live on the index object, so they apply to every later search of it (FAISS's
    own design); share one index between threads only with the same parameters. A parameter
    the index does not have is an error rather than silently ignored: a typo or a wrong index
    type would otherwise show up only as bad recall or bad latency. ``{}`` is always valid.
    """
    for name, value in params.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        if name == "nprobe":
            ivf = _ivf(index)
            if ivf is None:
                raise ValueError(f"nprobe given but {describe(index)['factory']} is not an IVF index")
            ivf.nprobe = int(value)
        elif name == "efSearch":
            hnsw = _hnsw(index)
            if hnsw is None:
                raise ValueError(f"efSearch given but {describe(index)['factory']} is not an HNSW index")
            hnsw.hnsw.efSearch = int(value)
        else:
            raise ValueError(f"unknown search parameter {name!r} (expected 'nprobe' or 'efSearch')")


def search(index: faiss.Index, queries: np.ndarray, k: int, params: dict[str, int] | None = None,
           *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: (scores float32 [q, k], ids int64 [q, k]); -1 ids (and -inf
    or -3.4e38 scores) pad rows when fewer than ``k`` vectors are reachable. ``params`` are set
    first with :func:`set_search_params` (and stay set)."""
    queries = _check_vectors(queries, "queries")
    if queries.shape[1] != index.d:
        raise ValueError(f"queries have dimension {queries.shape[1]}, the index has {index.d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if params:
        set_search_params(index, params)
    with omp_threads(threads):
        scores, found = index.search(_as_f32(queries), int(k))
    return to_inner_product(index, scores), found.astype(np.int64, copy=False)


def to_inner_product(index: faiss.Index, scores: np.ndarray) -> np.ndarray:
    """Raw FAISS scores as inner products: an L2 index (HNSW, see :func:`build_index`) returns
    squared distances, which are 2 - 2 a.b for unit vectors. Padding rows keep their sentinel."""
    scores = np.asarray(scores, np.float32)
    if index.metric_type != faiss.METRIC_L2:
        return scores
    pad = scores > 1e37
    out = (1.0 - scores / 2.0).astype(np.float32)
    out[pad] = -np.inf
    return out


# ----------------------------------------------------------------------------- tuning


@dataclass(frozen=True)
class TuneResult:
    """Outcome of :func:`tune`: the cheapest search parameters meeting the target (or the best
    found), their recall@k against exact search, and every point tried."""

    params: dict[str, int]
    recall_at_k: float
    curve: list[dict] = field(default_factory=list)


def _sweep(index: faiss.Index) -> tuple[str | None, list[int | None]]:
    """The parameter that trades speed for recall on ``index`` and its values, cheapest first."""
    ivf = _ivf(index)
    if ivf is not None:
        values = [1 << i for i in range(int(ivf.nlist).bit_length()) if 1 << i <= ivf.nlist]
        return "nprobe", values + ([int(ivf.nlist)] if values[-1] != ivf.nlist else [])
    if _hnsw(index) is not None:
        return "efSearch", list(EF_SEARCH_SWEEP)
    return None, [None]


def tune(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, *, k: int = 10,
         target_recall: float = 0.95, max_queries: int = 1000, seed: int = 0, truth: np.ndarray | None = None,
         threads: int | None = None) -> TuneResult:
    """Find the cheapest ``nprobe``/``efSearch`` whose recall@k against exact search reaches
    ``target_recall`` and leave it set on ``index``.

    ``vectors``/``ids`` are what the index holds (ground truth is exact search over them);
    ``queries`` should look like real traffic (not database points: those find themselves).
    At most ``max_queries`` of them are used, a seeded sample. Values are tried cheapest first
    and the sweep stops at the first that meets the target, since recall grows with the
    parameter while queries/s fall. If none does, the best one is set and returned; the caller
    should warn. ``truth`` (exact ids [q, k], e.g. from :func:`exact_neighbours`) skips the
    exact search when several indexes are tuned on the same data. Each curve point is
    ``{"name", "param", "recall_at_<k>", "qps"}``, qps measured at batch = all queries.
    """
    queries = _as_f32(_check_vectors(queries, "queries"))
    if len(queries) == 0:
        raise ValueError("tune needs at least one query")
    if len(queries) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(len(queries), size=max_queries, replace=False))
        queries = queries[rows]
        truth = None if truth is None else np.asarray(truth)[rows]
    if truth is None:
        truth = exact_neighbours(vectors, ids, queries, k)
    elif truth.shape[0] != len(queries):
        raise ValueError(f"truth has {truth.shape[0]} rows for {len(queries)} queries")
    name, values = _sweep(index)
    curve: list[dict] = []
    chosen: tuple[dict[str, int], float] | None = None
    best: tuple[dict[str, int], float] | None = None
    with omp_threads(threads):
        for value in values:
            params = {} if name is None else {name: int(value)}
            set_search_params(index, params)
            start = time.perf_counter()
            _, found = index.search(queries, k)
            elapsed = max(time.perf_counter() - start, 1e-9)
            recall = recall_at_k(found, truth, k)
            curve.append({"name": name, "param": value, f"recall_at_{k}": recall, "qps": len(queries) / elapsed})
            if best is None or recall > best[1]:
                best = (params, recall)
            if recall >= target_recall:
                chosen = (params, recall)
                break
    params, recall = chosen if chosen is not None else best
    set_search_params(index, params)
    return TuneResult(params=dict(params), recall_at_k=float(recall), curve=curve)


# ----------------------------------------------------------------------------- updates


def supports_remove(index: faiss.Index) -> bool:
    """Whether :func:`remove_ids` works on ``index``.

    True for an id-mapped Flat and for in-memory IVF indexes. False for HNSW (its graph cannot
    drop nodes), for IVF lists memory-mapped read-only by ``load_index(mmap=True)``, and for a
    bare Flat whose "ids" are row positions that removal would renumber."""
    if _hnsw(index) is not None:
        return False
    ivf = _ivf(index)
    if ivf is not None:
        return not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    outer = faiss.downcast_index(index)
    return isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)) and isinstance(_unwrap(outer), faiss.IndexFlat)


def remove_ids(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove the vectors labelled ``ids``; returns how many were removed (unknown ids are skipped).

    To replace a product's vector, remove its id, then ``index.add_with_ids`` the new one.
    Removal from IVF scans every list, so batch ids into one call."""
    if not supports_remove(index):
        if _hnsw(index) is not None:
            raise NotImplementedError("FAISS HNSW indexes cannot delete vectors: rebuild the index (build_index) "
                                      "from the stored vectors without the removed ids")
        raise NotImplementedError(f"{describe(index)['factory']} ({type(faiss.downcast_index(index)).__name__}) "
                                  "does not support removal (memory-mapped IVF lists are read-only: "
                                  "load without mmap to update)")
    ids = np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
    if ids.size == 0:
        return 0
    selector = faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))
    return int(index.remove_ids(selector))


# ----------------------------------------------------------------------------- persistence


def save_index(index: faiss.Index, path: Path) -> None:
    """Write ``index`` to ``path`` atomically: a temp file in the same directory, fsync, then
    ``os.replace``, so a reader (or a crash) never sees a half-written index."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a service running as another user must read it
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_index(path: Path, mmap: bool = False) -> faiss.Index:
    """Read an index written by :func:`save_index`.

    ``mmap=True`` maps the file instead of reading it (``IO_FLAG_MMAP``): fast start-up and pages
    shared between processes serving the same index; IVF lists are then read-only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no FAISS index at {path}: build one (indexer.ann.build_index + save_index) first")
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)


def _factory_of(index: faiss.Index) -> str:
    """The factory string (without IDMap) that builds an index of this shape."""
    inner = _unwrap(index)
    try:
        from faiss.contrib.factory_tools import reverse_index_factory

        return reverse_index_factory(inner) or type(inner).__name__
    except Exception:  # noqa: BLE001 - a layout factory_tools does not know: fall back to the class name
        return type(inner).__name__


def describe(index: faiss.Index) -> dict:
    """Shape and search parameters of ``index``, for logs and the index manifest."""
    metric = {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "l2"}.get(index.metric_type,
                                                                                       str(index.metric_type))
    out: dict = {"factory": _factory_of(index), "count": int(index.ntotal), "dim": int(index.d), "metric": metric}
    ivf = _ivf(index)
    if ivf is not None:
        out.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
    hnsw = _hnsw(index)
    if hnsw is not None:
        out.update(M=int(hnsw.hnsw.nb_neighbors(1)), efSearch=int(hnsw.hnsw.efSearch))
    return out
