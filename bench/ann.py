"""Benchmark: FAISS index kinds for product search (build time, memory, recall@10, queries/s).

For N vectors of dimension d (default 1,000,000 x 256) it builds Flat, HNSW32,
IVF{nlist},Flat and IVF{nlist},PQ{d/4}x8 (nlist from ``indexer.ann.nlist_for``, the rule
``choose_factory`` uses) and reports, per index: build seconds, memory (serialized bytes and
the process RSS growth while building), the cheapest search parameter reaching recall@10 >=
--target against exact search (``indexer.ann.tune``) and queries/s at that parameter at query
batch 1 (one shopper: >= 200 single queries in a loop), 64 and 1024. Then it says which index
``choose_factory(N, d)`` picks and whether that is the fastest at batch 1 among the indexes
that reach the target.

Data are clustered like real embeddings, never Gaussian noise (which has no neighbourhood
structure and makes every ANN index look bad):

* ``--seed-vectors PATH.npy``: real encoded product vectors (float32 [m, d], m in the
  thousands). The database is near-duplicate variants of them, as in a real catalog (colours,
  sizes, resellers of one product): normalise(s_j + sigma * |s_j| * g / sqrt(d)) with g
  Gaussian and sigma drawn from {0.05, 0.1, 0.2}.
* otherwise a synthetic stand-in of the same shape: a few hundred "category" centres, each
  with "product family" sub-centres spread in a random low-rank subspace of the category (the
  seeds), then the same variants.

Queries are further, held-out perturbations of seed vectors (not database points). Every
random draw is seeded (--seed). Data are generated in chunks of 65,536 rows.

Reading the figures: "RSS Δ" is the growth of the resident set while building, a lower
bound when the allocator reuses memory freed earlier (small N); "serialized" is the size of
the saved index. At batch 1 with several FAISS threads every call pays OpenMP start-up (and
on a busy machine, waits for a core), so a server answering one query per request should
search on one thread; ``--single-core`` adds that column.

    python bench/ann.py                                  # 1M x 256, synthetic seeds, all cores
    python bench/ann.py --seed-vectors vecs.npy --single-core
    python bench/ann.py --n 50000 --queries 200          # a quick check

Reference point (ann-benchmarks, SIFT-1M, one CPU core, recall 0.95): faiss HNSW ~3.1k
queries/s, hnswlib ~5.2k; compare with the ``--single-core`` column of the HNSW32 row.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from indexer.ann import build_index, choose_factory, exact_neighbours, nlist_for, tune

SIGMAS = (0.05, 0.1, 0.2)
CHUNK = 65_536
K = 10


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def synthetic_seeds(m: int, d: int, rng: np.random.Generator, categories: int = 300, rank: int = 16) -> np.ndarray:
    """``m`` product-family vectors: category centre + an offset in a random ``rank``-dim
    subspace of that category (families of one category differ along few directions, like
    colour/pattern/cut) + a little isotropic noise."""
    centres = normalise(rng.standard_normal((categories, d)))
    bases = np.linalg.qr(rng.standard_normal((categories, d, rank)))[0].astype(np.float32)  # [c, d, rank]
    category = rng.integers(0, categories, m)
    offsets = np.einsum("mdr,mr->md", bases[category], rng.standard_normal((m, rank)).astype(np.float32) * 0.7 / np.sqrt(rank))
    return normalise(centres[category] + offsets + 0.15 * rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d))


def variants(seeds: np.ndarray, norms: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """normalise(seed + sigma * |seed| * g / sqrt(d)), sigma drawn from SIGMAS per row."""
    d = seeds.shape[1]
    sigma = rng.choice(SIGMAS, size=(len(rows), 1)).astype(np.float32) * norms[rows, None]
    return normalise(seeds[rows] + sigma * rng.standard_normal((len(rows), d), dtype=np.float32) / np.sqrt(d))


def seed_neighbours(seeds: np.ndarray, k: int = 20) -> np.ndarray:
    """The k nearest other seeds of each seed (exact inner product): whom a variant may blend with."""
    index = faiss.IndexFlatIP(seeds.shape[1])
    index.add(np.ascontiguousarray(seeds))
    _, nn = index.search(np.ascontiguousarray(seeds), min(k + 1, len(seeds)))
    return nn[:, 1:]


def blends(seeds: np.ndarray, norms: np.ndarray, neighbours: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Variants spread *between* a seed and one of its nearest seeds, not clumped around it.

    normalise((1 - t) s_i + t s_j) then the usual perturbation, t ~ U(0, 0.5): products fill
    the space between real neighbours (a continuous neighbourhood like a real catalog's) so
    the top-10 of a query is not just one seed's clump, which any index finds trivially.
    """
    j = neighbours[rows, rng.integers(0, neighbours.shape[1], len(rows))]
    t = rng.uniform(0.0, 0.5, (len(rows), 1)).astype(np.float32)
    mixed = normalise((1 - t) * seeds[rows] + t * seeds[j])
    return variants(mixed, np.ones(len(rows), np.float32), np.arange(len(rows)), rng)


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(database [n, d], ids [n] int64 63-bit, queries [q, d], description of the source)."""
    root = np.random.default_rng(args.seed)
    seed_rng, db_rng, query_rng, id_rng = root.spawn(4)
    if args.seed_vectors:
        seeds = np.load(args.seed_vectors, mmap_mode="r").astype(np.float32)
        if seeds.ndim != 2 or len(seeds) < 2:
            raise SystemExit(f"{args.seed_vectors}: expected float32 [m, d], got shape {seeds.shape}")
        source = f"real seed vectors {args.seed_vectors} ({len(seeds):,} x {seeds.shape[1]})"
    else:
        seeds = synthetic_seeds(args.families, args.dim, seed_rng)
        source = (f"synthetic stand-in: {args.families:,} product families in 300 categories "
                  f"(rank-16 subspaces), d={args.dim} (no --seed-vectors)")
    norms = np.linalg.norm(seeds, axis=1).astype(np.float32)
    neighbours = seed_neighbours(seeds)
    db = np.empty((args.n, seeds.shape[1]), dtype=np.float32)
    for start in tqdm(range(0, args.n, CHUNK), desc="data", unit="chunk", leave=False):
        rows = db_rng.integers(0, len(seeds), min(CHUNK, args.n - start))
        db[start : start + len(rows)] = blends(seeds, norms, neighbours, rows, db_rng)
    if args.query_vectors:
        queries = normalise(np.load(args.query_vectors).astype(np.float32))
        queries = queries[np.sort(query_rng.choice(len(queries), size=min(args.queries, len(queries)), replace=False))]
        qsource = f"real encoded queries {args.query_vectors}"
    else:
        queries = blends(seeds, norms, neighbours, query_rng.integers(0, len(seeds), args.queries), query_rng)
        qsource = "held-out blends"
    ids = id_rng.choice(2**63 - 1, size=args.n, replace=False).astype(np.int64)  # like hashed product ids
    return db, ids, queries, f"{source}; blends of neighbouring seeds, sigma in {SIGMAS}; queries: {qsource}"


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; else the peak from getrusage)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def qps(index: faiss.Index, queries: np.ndarray, batch: int, total: int) -> float:
    """Queries/s searching ``total`` queries (the set cycled) ``batch`` at a time, after a warm-up call."""
    rows = np.resize(np.arange(len(queries)), max(total, batch))
    pool = np.ascontiguousarray(queries[rows])
    index.search(pool[:batch], K)
    start = time.perf_counter()
    for s in range(0, len(pool), batch):
        index.search(pool[s : s + batch], K)
    return len(pool) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    ap.add_argument("--dim", type=int, default=256, help="dimension of the synthetic stand-in")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed-vectors", type=Path, default=None, help="real product vectors, float32 [m, d] .npy")
    ap.add_argument("--query-vectors", type=Path, default=None, help="real encoded shopper queries, float32 [q, d] .npy (else held-out blends)")
    ap.add_argument("--families", type=int, default=5_000, help="synthetic seed vectors (without --seed-vectors)")
    ap.add_argument("--factories", nargs="+", default=None,
                    help="factory strings, space-separated (default: Flat HNSW32 IVF{nlist},Flat IVF{nlist},PQ{d/4}x8)")
    ap.add_argument("--target", type=float, default=0.95, help="recall@10 the tuning must reach")
    ap.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")
    ap.add_argument("--single-core", action="store_true", help="also measure batch 1 on 1 thread")
    ap.add_argument("--batch1-queries", type=int, default=200, help="single queries timed at batch 1 (>= 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()

    t0 = time.perf_counter()
    db, ids, queries, source = make_data(args)
    n, d = db.shape
    print(f"bench/ann.py: {n:,} x {d} vectors, {len(queries):,} queries, faiss {faiss.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} FAISS threads")
    print(f"data: {source} ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    truth = exact_neighbours(db, ids, queries, K)
    print(f"exact top-{K} of the queries: {time.perf_counter() - t0:.1f} s")

    nlist = nlist_for(n)
    factories = args.factories or ["Flat", "HNSW32", f"IVF{nlist},Flat", f"IVF{nlist},PQ{d // 4}x8"]
    rows: list[dict] = []
    for factory in factories:
        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        index = build_index(db, ids, factory, seed=args.seed, progress=True)
        row: dict = {"factory": factory, "build_s": time.perf_counter() - start, "rss_delta": rss_bytes() - before,
                     "serialized": len(faiss.serialize_index(index))}
        result = tune(index, db, ids, queries, k=K, target_recall=args.target, max_queries=len(queries), truth=truth,
                      seed=args.seed)
        row.update(params=result.params, recall=result.recall_at_k, curve=result.curve,
                   qps1=qps(index, queries, 1, max(args.batch1_queries, 200)),
                   qps64=qps(index, queries, 64, len(queries)), qps1024=qps(index, queries, 1024, len(queries)))
        if args.single_core:
            faiss.omp_set_num_threads(1)
            row["qps1_1t"] = qps(index, queries, 1, max(args.batch1_queries, 200))
            faiss.omp_set_num_threads(threads)
        rows.append(row)
        print(f"  {factory}: built in {row['build_s']:.1f} s, {result.params or 'exact'} -> recall@{K} "
              f"{row['recall']:.3f}, {row['qps1']:,.0f} q/s at batch 1", flush=True)
        del index

    print()
    header = ["index", "build s", "serialized MiB", "RSS Δ MiB", "params", f"recall@{K}", "QPS b1", "QPS b64", "QPS b1024"]
    header += ["QPS b1 1 thread"] if args.single_core else []
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact"
        met = "" if r["recall"] >= args.target else " (below target)"
        cells = [r["factory"], f"{r['build_s']:.1f}", f"{r['serialized'] / 2**20:,.1f}", f"{r['rss_delta'] / 2**20:,.1f}",
                 params, f"{r['recall']:.3f}{met}", f"{r['qps1']:,.0f}", f"{r['qps64']:,.0f}", f"{r['qps1024']:,.0f}"]
        cells += [f"{r['qps1_1t']:,.0f}"] if args.single_core else []
        print("| " + " | ".join(cells) + " |")

    plan = choose_factory(n, d)
    meeting = [r for r in rows if r["recall"] >= args.target]
    best = max(meeting, key=lambda r: r["qps1"]) if meeting else None
    print(f"\nchoose_factory({n:,}, {d}) -> {plan.factory}: {plan.reason}")
    if best is None:
        print(f"no index reached recall@{K} >= {args.target}")
    elif plan.factory not in [r["factory"] for r in rows]:
        print(f"{plan.factory} was not benchmarked; fastest at batch 1 with recall >= {args.target}: {best['factory']}")
    else:
        verdict = "yes" if best["factory"] == plan.factory else "no"
        print(f"is it the fastest at batch 1 among indexes with recall@{K} >= {args.target}? {verdict} "
              f"(fastest: {best['factory']}, {best['qps1']:,.0f} q/s)")
    if args.single_core:
        print("anchor (ann-benchmarks, SIFT-1M 128-d, 1 core, recall 0.95): faiss HNSW ~3.1k q/s, hnswlib ~5.2k q/s")
    if args.json:
        args.json.write_text(json.dumps({"n": n, "dim": d, "queries": len(queries), "threads": threads, "source": source,
                                         "choose_factory": plan.factory, "results": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
