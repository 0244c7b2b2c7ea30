"""Choosing an ANN index for a catalog, and measuring one against exact search.

:func:`choose_factory` turns (vector count, dimension, memory budget) into a FAISS factory
string with a one-line reason and a memory estimate, so the indexer can pick an index before
building anything. The rules are deliberately simple and live in one function with their
thresholds as module constants, to be replaced by benchmark results (``bench/ann.py``).

:func:`exact_neighbours` and :func:`recall_at_k` are the yardstick: brute-force inner-product
top-k (what a Flat index returns) and the fraction of it an approximate index finds. The
input checks shared with :mod:`indexer.ann` live here too. The public names are re-exported
by :mod:`indexer.ann`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss
import numpy as np

FLAT_MAX_COUNT = 50_000
"""Up to this many vectors, exact search is cheap enough: a query scans 4*d*n bytes, ~2 ms on one
core at 50k x 256. At 100k the scan was 3.9 ms, a quarter of a search request's server time
(bench/search.py), where a tuned IVF answers in well under 1 ms at recall@10 >= 0.95."""
HNSW_M = 32
"""HNSW graph degree: the usual recall/memory/speed compromise for d=128-1024 embeddings."""
NLIST_MIN, NLIST_MAX = 64, 65_536
"""Clamp for the number of IVF lists (~4*sqrt(n), a power of two)."""
MIN_POINTS_PER_CENTROID = 39
"""FAISS k-means warns below 39 training points per centroid: nlist <= count / 39."""
PQ_DIVISORS = (2, 4, 8, 16)
"""IVF-PQ sub-quantizer counts tried, as dim / divisor, largest (most accurate) first."""
PQ_MIN_COUNT = 39 * 256
"""An 8-bit PQ trains 256 centroids per sub-quantizer: fewer vectors cannot train it well."""

ID_BYTES = 8
"""One int64 id per vector (IDMap's id array, or the id stored in an IVF list)."""
IDMAP2_REVERSE_BYTES = 40
"""IndexIDMap2 also keeps an id -> row hash map in memory (node + bucket, about 40 B/entry)."""
IVF_LIST_OVERHEAD = 48
"""Two std::vector headers (codes, ids) per inverted list."""

NORM_TOLERANCE = 1e-2
"""Largest accepted | ||x|| - 1 | of an indexed vector. Inner product only means cosine for unit
vectors; an unnormalised catalog silently ranks long vectors first, so it is refused."""

_FACTORY = re.compile(r"^(?:(?P<flat>Flat)|HNSW(?P<m>\d+)(?:,Flat)?|IVF(?P<nlist>\d+),"
                      r"(?:(?P<ivfflat>Flat)|PQ(?P<pq>\d+)(?:x(?P<nbits>\d+))?))$")


class AnnBudgetError(ValueError):
    """No index kind fits the memory budget; ``minimum_bytes`` is what the smallest one needs."""

    def __init__(self, message: str, minimum_bytes: int):
        super().__init__(message)
        self.minimum_bytes = minimum_bytes


@dataclass(frozen=True)
class AnnPlan:
    """The index :func:`choose_factory` picked: a factory string (no IDMap prefix), why, and
    its estimated memory in bytes."""

    factory: str
    reason: str
    estimated_bytes: int


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:,.2f} GiB"


def nlist_for(count: int) -> int:
    """IVF list count for ``count`` vectors: ~4*sqrt(count) rounded to a power of two, clamped to
    [NLIST_MIN, NLIST_MAX] and halved until every centroid has MIN_POINTS_PER_CENTROID points.

    sqrt(n) lists balance the two costs of a query (scan the centroids, scan nprobe lists)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    nlist = 1 << max(0, round(math.log2(4 * math.sqrt(count))))
    nlist = min(max(nlist, NLIST_MIN), NLIST_MAX)
    while nlist > 1 and nlist > count // MIN_POINTS_PER_CENTROID:
        nlist //= 2
    return nlist


def estimate_memory(factory: str, count: int, dim: int) -> int:
    """Approximate resident bytes of a built index of ``count`` vectors (ids included).

    Flat: 4*d*n. HNSW{M}: 4*d*n + ~4*(2M+1)*n of neighbour links (2M on level 0, ~M/(M-1) on
    upper levels) + 12*n of offsets and levels. Both are wrapped in IndexIDMap2: + 8*n ids +
    its reverse hash map. IVF-Flat: 4*d*n + 8*n + centroids (4*d*nlist). IVF-PQ{m}x{b}: m*b/8
    bytes of code + 8*n + centroids + PQ tables (4*d*2^b). Estimates, for choosing, not
    accounting: allocator slack and growth of std::vector capacity are not counted."""
    if count < 0 or dim < 1:
        raise ValueError(f"need count >= 0 and dim >= 1, got count={count}, dim={dim}")
    match = _FACTORY.match(factory.strip())
    if not match:
        raise ValueError(f"cannot estimate memory of factory {factory!r} "
                         "(known: Flat, HNSW<M>, IVF<nlist>,Flat, IVF<nlist>,PQ<m>[x<bits>])")
    idmap = (ID_BYTES + IDMAP2_REVERSE_BYTES) * count
    if match["flat"]:
        return 4 * dim * count + idmap
    if match["m"]:
        m = int(match["m"])
        return 4 * dim * count + 4 * (2 * m + 1) * count + 12 * count + idmap
    nlist = int(match["nlist"])
    lists = 4 * dim * nlist + IVF_LIST_OVERHEAD * nlist + ID_BYTES * count
    if match["ivfflat"]:
        return 4 * dim * count + lists
    m, nbits = int(match["pq"]), int(match["nbits"] or 8)
    return math.ceil(m * nbits / 8) * count + lists + 4 * dim * (1 << nbits)


def choose_factory(count: int, dim: int, max_memory_bytes: int | None = None) -> AnnPlan:
    """Pick an index for ``count`` vectors of dimension ``dim`` within ``max_memory_bytes`` (None:
    no budget). First that fits:

    * Flat up to FLAT_MAX_COUNT: exact, no training, cheap enough at that size;
    * IVF{nlist},Flat: uncompressed vectors in nlist lists, nprobe tuned to the recall target;
    * IVF{nlist},PQ{m}x8 with m = dim/2, dim/4, dim/8, dim/16 (largest that fits): compressed.

    HNSW is not an automatic choice: on 1M real-encoded product vectors searched with encoded
    text queries (bench/ann.py, docs/results.md) IVF4096,Flat reached recall@10 0.978 at 7.9k
    queries/s (batch 1, 2 cores) where HNSW32 (L2 graph, efConstruction 100) reached 0.954 at
    6.0k, with 25 % more memory, a 1.6x slower build and no deletion (an incremental update must
    rebuild it). Cross-modal queries sit off the product manifold, which hurts graph search more
    than cell probing. ``--factory HNSW32`` still builds one.

    Raises AnnBudgetError naming the smallest estimate when nothing fits.
    """
    if count < 1 or dim < 1:
        raise ValueError(f"need count >= 1 and dim >= 1, got count={count}, dim={dim}")
    budget = "no budget" if max_memory_bytes is None else f"budget {_mb(max_memory_bytes)}"
    nlist = nlist_for(count)
    candidates: list[tuple[str, str]] = []
    if count <= FLAT_MAX_COUNT:
        candidates.append(("Flat", f"{count:,} vectors <= {FLAT_MAX_COUNT:,}: exact search is cheap enough"))
    else:
        candidates.append((f"IVF{nlist},Flat", f"{count:,} vectors > {FLAT_MAX_COUNT:,}: uncompressed IVF gave the best "
                           "recall per query-ms on real cross-modal queries (beat HNSW32 at 1M) and supports deletion"))
    if count >= PQ_MIN_COUNT:
        for divisor in PQ_DIVISORS:
            if dim % divisor == 0:
                m = dim // divisor
                candidates.append((f"IVF{nlist},PQ{m}x8", f"only product quantization fits ({m} bytes a vector, "
                                   "the least compression that fits; expect lower recall on text queries)"))
    for factory, why in candidates:
        needed = estimate_memory(factory, count, dim)
        if max_memory_bytes is None or needed <= max_memory_bytes:
            return AnnPlan(factory, f"{why} (~{_mb(needed)}, {budget}).", needed)
    smallest = min((estimate_memory(f, count, dim), f) for f, _ in candidates)
    raise AnnBudgetError(f"no index of {count:,} x {dim}-d vectors fits {budget}: the smallest, {smallest[1]}, "
                         f"needs ~{_mb(smallest[0])} ({smallest[0]:,} bytes)", smallest[0])


# Input checks shared with indexer.ann.


def _check_vectors(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """A 2-D floating array (float16/32/64, possibly memory-mapped); converted chunk by chunk later."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [n, dim], got shape {vectors.shape}")
    if vectors.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{what} must be float16/32/64, got {vectors.dtype}")
    if vectors.shape[1] == 0:
        raise ValueError(f"{what} have dimension 0")
    return vectors


def _as_f32(block: np.ndarray) -> np.ndarray:
    """C-contiguous float32 (what the FAISS SWIG wrappers need); copies only when it must."""
    return np.ascontiguousarray(block, dtype=np.float32)


def _check_ids(ids: np.ndarray, count: int) -> np.ndarray:
    """int64, 1-D, non-negative (-1 is FAISS's "no result"), unique, one per vector."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if len(ids) != count:
        raise ValueError(f"{len(ids)} ids for {count} vectors: need exactly one id per vector")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers (int64), got {ids.dtype}")
    if ids.size and (ids.min() < 0 or (ids.dtype == np.uint64 and ids.max() > np.iinfo(np.int64).max)):
        raise ValueError("ids must be in [0, 2**63): -1 is how FAISS marks a missing result")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if np.unique(ids).size != ids.size:
        raise ValueError(f"ids must be unique: {ids.size - np.unique(ids).size} duplicate(s)")
    return ids


def _check_block(block: np.ndarray, start: int = 0, rows: np.ndarray | None = None) -> None:
    """Refuse NaN/inf and unnormalised rows (cheap per add chunk; see NORM_TOLERANCE). Row
    numbers in messages are ``start + i``, or ``rows[i]`` for a sample."""
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"vector {start + i if rows is None else int(rows[i])} has NaN or inf components")
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"vector {start + i if rows is None else int(rows[i])} has norm {norms[i]:.4f}: vectors "
                         "must be L2-normalised (the metric is inner product = cosine)")


def exact_neighbours(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int,
                     *, chunk: int = 65_536) -> np.ndarray:
    """Exact top-``k`` ids by inner product ([q, k] int64, -1 where fewer than k vectors).

    Brute force with IndexFlatIP over ``chunk`` database rows at a time, merged in a result
    heap, so a float16 or memory-mapped catalog is never copied whole (FAISS blocks the
    queries itself)."""
    vectors, queries = _check_vectors(vectors), _as_f32(_check_vectors(queries, "queries"))
    if vectors.shape[1] != queries.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]}, vectors {vectors.shape[1]}")
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (len(vectors),):
        raise ValueError(f"{ids.shape} ids for {len(vectors)} vectors: need one id per vector")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(vectors), chunk):
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(_as_f32(vectors[start : start + chunk]))
        scores, rows = flat.search(queries, k)
        heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
    heap.finalize()
    return np.where(heap.I >= 0, ids[np.maximum(heap.I, 0)], -1).astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / k (the ANN-benchmarks "recall@k").

    -1 (no result) in ``found`` never counts as a hit; if ``truth`` itself has fewer than k
    valid ids (a tiny index), the denominator is that number, so a perfect answer scores 1."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"found has {found.shape[0]} rows, truth {truth.shape[0]}")
    if found.shape[0] == 0:
        raise ValueError("no queries to score")
    hits = ((found[:, :, None] == truth[:, None, :]) & (found[:, :, None] != -1)).any(axis=2).sum(axis=1)
    denominator = np.maximum(np.minimum((truth != -1).sum(axis=1), k), 1)
    return float(np.mean(hits / denominator))
