"""indexer.ann: index choice, build, tuning, removal, persistence (FAISS, numpy in/out).

Data are clustered like real embeddings (a mixture of centres plus noise, normalised), and
queries are held-out, perturbed points of the same clusters: pure Gaussian noise has no
neighbourhood structure, so IVF and HNSW would look either uselessly bad or trivially good.
"""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import pytest

from indexer.ann import (
    FLAT_MAX_COUNT,
    NLIST_MAX,
    NLIST_MIN,
    AnnBudgetError,
    build_index,
    choose_factory,
    describe,
    estimate_memory,
    exact_neighbours,
    load_index,
    nlist_for,
    recall_at_k,
    remove_ids,
    save_index,
    search,
    set_search_params,
    supports_remove,
    tune,
)

DIM = 64


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """One OpenMP thread: the test machine is small and shared; spinning threads only slow it."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, n_queries: int = 200, centres: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(database [n, DIM], ids [n] >= 2**40, queries [n_queries, DIM]).

    Cluster sizes vary (like product categories); a point is centre + isotropic noise at a
    per-point scale; queries are extra points of the clusters, not in the database, perturbed
    once more (a shopper's query is near products, never equal to one)."""
    rng = np.random.default_rng(seed)
    centre = normalise(rng.standard_normal((centres, DIM)))
    weights = rng.dirichlet(np.full(centres, 2.0))
    label = rng.choice(centres, size=n + n_queries, p=weights)
    scale = rng.choice([0.5, 0.8, 1.2], size=(n + n_queries, 1))
    points = normalise(centre[label] + scale * rng.standard_normal((n + n_queries, DIM)) / np.sqrt(DIM))
    db, held_out = points[:n], points[n:]
    queries = normalise(held_out + 0.1 * rng.standard_normal(held_out.shape) / np.sqrt(DIM))
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64) + 2**40
    return db, ids, queries


@pytest.fixture(scope="module")
def data20k():
    return clustered(20_000)


@pytest.fixture(scope="module")
def data3k():
    return clustered(3_000, seed=1)


# ----------------------------------------------------------------------------- choosing


def test_choose_factory_follows_size_and_budget():
    assert choose_factory(1_000, 256).factory == "Flat"
    assert choose_factory(FLAT_MAX_COUNT, 256).factory == "Flat"
    nlist = nlist_for(1_000_000)
    plan = choose_factory(1_000_000, 256)  # IVF-Flat beat HNSW32 on real cross-modal queries (bench/ann.py)
    ivf_flat = estimate_memory(f"IVF{nlist},Flat", 1_000_000, 256)
    assert plan.factory == f"IVF{nlist},Flat" and plan.estimated_bytes == ivf_flat
    assert "1,000,000" in plan.reason
    assert choose_factory(6_000_000, 256).factory == f"IVF{nlist_for(6_000_000)},Flat"
    assert ivf_flat < estimate_memory("HNSW32", 1_000_000, 256)
    assert choose_factory(1_000_000, 256, ivf_flat).factory == f"IVF{nlist},Flat"
    # PQ: the largest m in (d/2, d/4, d/8, d/16) that fits.
    pq64 = estimate_memory(f"IVF{nlist},PQ64x8", 1_000_000, 256)
    tight = choose_factory(1_000_000, 256, pq64 + 1)
    assert tight.factory == f"IVF{nlist},PQ64x8" and tight.estimated_bytes <= pq64 + 1
    assert choose_factory(1_000_000, 256, ivf_flat - 1).factory == f"IVF{nlist},PQ128x8"

    smallest = estimate_memory(f"IVF{nlist},PQ16x8", 1_000_000, 256)
    with pytest.raises(AnnBudgetError, match="PQ16x8") as err:
        choose_factory(1_000_000, 256, smallest - 1)
    assert err.value.minimum_bytes == smallest and isinstance(err.value, ValueError)
    # A small catalog that Flat does not fit falls back to PQ, not to an error.
    assert "PQ" in choose_factory(50_000, 256, estimate_memory("Flat", 50_000, 256) - 1).factory


@pytest.mark.parametrize("count", [40, 2_000, 10_000, 100_001, 1_000_000, 10**9])
def test_nlist_is_a_power_of_two_with_enough_training_points(count):
    nlist = nlist_for(count)
    assert nlist & (nlist - 1) == 0 and nlist <= NLIST_MAX
    assert nlist <= max(1, count // 39)
    if count >= 39 * NLIST_MIN:
        assert nlist >= NLIST_MIN
    assert nlist_for(1_000_000) == 4096  # 4*sqrt(1e6) = 4000 -> 4096


def test_estimate_memory_formulas():
    n, d = 10_000, 64
    flat = estimate_memory("Flat", n, d)
    assert 4 * d * n + 8 * n <= flat < 4 * d * n + 64 * n
    hnsw = estimate_memory("HNSW32", n, d)
    assert hnsw - flat >= 32 * 2 * 4 * n  # the level-0 links
    ivf = estimate_memory("IVF128,Flat", n, d)
    assert 4 * d * n + 8 * n + 4 * d * 128 <= ivf < flat
    pq = estimate_memory("IVF128,PQ16x8", n, d)
    assert 16 * n + 8 * n + 4 * d * 128 + 4 * d * 256 <= pq < ivf
    with pytest.raises(ValueError, match="cannot estimate"):
        estimate_memory("LSH", n, d)


# ----------------------------------------------------------------------------- building, searching


def test_flat_returns_the_given_ids_and_is_exact(data3k):
    db, ids, queries = data3k
    index = build_index(db, ids, "Flat")
    assert describe(index) == {"factory": "Flat", "count": 3_000, "dim": DIM, "metric": "inner_product"}
    scores, found = search(index, db[:100], 5)
    assert found.dtype == np.int64 and scores.dtype == np.float32 and found.shape == (100, 5)
    np.testing.assert_array_equal(found[:, 0], ids[:100])  # a database vector finds itself
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert found.min() >= 2**40
    result = tune(index, db, ids, queries)
    assert result.params == {} and result.recall_at_k == pytest.approx(1.0, abs=1e-3)
    assert [p["param"] for p in result.curve] == [None]
    # Fewer than k vectors: padded with -1, and the -1s are not counted as hits.
    small = build_index(db[:3], ids[:3], "Flat")
    _, few = search(small, queries[:2], 5)
    assert (few[:, 3:] == -1).all() and set(few[0, :3]) == set(ids[:3])
    assert recall_at_k(few, exact_neighbours(db[:3], ids[:3], queries[:2], 5), 5) == 1.0


def test_exact_neighbours_matches_numpy_across_chunks(data3k):
    db, ids, queries = data3k
    truth = exact_neighbours(db, ids, queries, 10, chunk=700)  # several database chunks
    expected = ids[np.argsort(-(queries @ db.T), axis=1, kind="stable")[:, :10]]
    assert recall_at_k(truth, expected, 10) > 0.999


def test_recall_at_k_counts_overlap_and_ignores_missing():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [-1, -1, -1, -1]])
    assert recall_at_k(found, truth, 4) == pytest.approx((2 / 4 + 0) / 2)
    assert recall_at_k(truth[:, ::-1], truth, 4) == 1.0  # order inside the top k does not matter
    assert recall_at_k(found, truth, 2) == pytest.approx(0.0)  # only the first 2 of each


def test_float16_input_gives_the_same_index(data3k):
    db, ids, queries = data3k
    half = db.astype(np.float16)
    a = search(build_index(half, ids, "Flat"), queries, 10)
    b = search(build_index(half.astype(np.float32), ids, "Flat"), queries, 10)
    np.testing.assert_array_equal(a[1], b[1])


# HNSW32 reaches 0.95 at the first efSearch on this data; 0.98 makes the sweep take a step.
@pytest.mark.parametrize(("factory", "target"), [(f"IVF{nlist_for(20_000)},Flat", 0.95), ("HNSW32", 0.98)])
def test_tune_finds_the_cheapest_parameter_reaching_the_target(data20k, factory, target):
    db, ids, queries = data20k
    index = build_index(db, ids, factory)
    assert index.ntotal == 20_000
    result = tune(index, db, ids, queries, k=10, target_recall=target)
    recalls = [p["recall_at_10"] for p in result.curve]
    params = [p["param"] for p in result.curve]
    assert result.recall_at_k >= target and recalls[-1] == result.recall_at_k
    assert len(params) > 1 and all(r < target for r in recalls[:-1])  # stopped at the first value meeting it
    assert recalls[-1] >= recalls[0] and all(p["qps"] > 0 for p in result.curve)
    name = result.curve[0]["name"]
    assert result.params == {name: params[-1]} and params == sorted(params)
    assert describe(index)[name] == params[-1]  # left set on the index
    if name == "nprobe":
        assert params == [2**i for i in range(len(params))]
    else:
        assert params[0] == 16
    # An honest measurement: search with the chosen setting reproduces the reported recall.
    _, found = search(index, queries, 10, result.params)
    assert recall_at_k(found, exact_neighbours(db, ids, queries, 10)) == pytest.approx(result.recall_at_k)


def test_tune_returns_the_best_point_when_the_target_is_unreachable(data20k):
    db, ids, queries = data20k
    index = build_index(db, ids, "IVF64,PQ8x8")  # 8-byte codes cannot reach recall 0.999
    result = tune(index, db, ids, queries, target_recall=0.999, max_queries=100)
    assert [p["param"] for p in result.curve] == [1, 2, 4, 8, 16, 32, 64]  # swept to nlist
    assert result.recall_at_k == max(p["recall_at_10"] for p in result.curve) < 0.999
    assert result.params["nprobe"] in [p["param"] for p in result.curve]


def test_set_search_params_through_the_id_map(data3k):
    db, ids, _ = data3k
    hnsw = build_index(db, ids, "HNSW16")
    set_search_params(hnsw, {"efSearch": 77})
    assert describe(hnsw)["efSearch"] == 77 and describe(hnsw)["M"] == 16
    with pytest.raises(ValueError, match="not an IVF"):
        set_search_params(hnsw, {"nprobe": 4})
    flat = build_index(db, ids, "Flat")
    set_search_params(flat, {})
    with pytest.raises(ValueError, match="unknown search parameter"):
        set_search_params(flat, {"nprob": 4})


# ----------------------------------------------------------------------------- updates


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat"])
def test_removed_ids_never_come_back_and_can_be_replaced(data3k, factory):
    db, ids, _ = data3k
    index = build_index(db, ids, factory)
    set_search_params(index, {"nprobe": 32} if "IVF" in factory else {})
    assert supports_remove(index)
    gone = ids[::10]
    assert remove_ids(index, gone) == len(gone)
    assert index.ntotal == len(ids) - len(gone)
    assert remove_ids(index, gone) == 0  # already gone
    _, found = search(index, db[::10], 20)
    assert not np.isin(found, gone).any()
    # Replace: a removed id comes back with a new vector, and a search finds it there.
    new = normalise(db[1:2] + db[2:3])
    index.add_with_ids(new, gone[:1])
    _, found = search(index, new, 1)
    assert found[0, 0] == gone[0] and index.ntotal == len(ids) - len(gone) + 1


def test_hnsw_cannot_remove(data3k):
    db, ids, _ = data3k
    index = build_index(db, ids, "HNSW16")
    assert not supports_remove(index)
    with pytest.raises(NotImplementedError, match="rebuild"):
        remove_ids(index, ids[:3])
    assert index.ntotal == len(ids)


# ----------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "HNSW16"])
def test_save_load_round_trip(tmp_path, data3k, factory):
    db, ids, queries = data3k
    index = build_index(db, ids, factory)
    set_search_params(index, {"nprobe": 4} if "IVF" in factory else {"efSearch": 48} if "HNSW" in factory else {})
    before = search(index, queries, 10)
    path = tmp_path / "sub" / "products.faiss"
    save_index(index, path)
    save_index(index, path)  # overwriting is atomic too
    assert sorted(p.name for p in path.parent.iterdir()) == ["products.faiss"]  # no temp file left
    for mmap in (False, True):
        loaded = load_index(path, mmap=mmap)
        assert describe(loaded) == describe(index)  # search parameters are saved with the index
        after = search(loaded, queries, 10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])
    if "IVF" in factory:
        assert not supports_remove(load_index(path, mmap=True))  # memory-mapped lists are read-only
    with pytest.raises(FileNotFoundError, match="no FAISS index"):
        load_index(tmp_path / "missing.faiss")


# ----------------------------------------------------------------------------- validation, reproducibility


def test_bad_input_is_refused(data3k):
    db, ids, _ = data3k
    with pytest.raises(ValueError, match="one id per vector"):
        build_index(db, ids[:-1], "Flat")
    with pytest.raises(ValueError, match="unique"):
        build_index(db[:3], np.array([5, 6, 5]), "Flat")
    with pytest.raises(ValueError, match="2-D"):
        build_index(db[0], ids[:1], "Flat")
    with pytest.raises(ValueError, match="no vectors to index"):
        build_index(np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), "Flat")
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        build_index(db[:2], np.array([-1, 3]), "Flat")
    with pytest.raises(ValueError, match="integers"):
        build_index(db[:2], np.array([1.0, 2.0]), "Flat")
    with pytest.raises(ValueError, match="float16/32/64"):
        build_index(db[:2].astype(np.int32), ids[:2], "Flat")
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(db[:2] * 3, ids[:2], "Flat")
    nan = db[:2].copy()
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="vector 1 has NaN"):
        build_index(nan, ids[:2], "Flat")
    with pytest.raises(ValueError, match="IDMap prefix"):
        build_index(db[:2], ids[:2], "IDMap2,Flat")
    with pytest.raises(ValueError, match="dimension"):
        search(build_index(db[:2], ids[:2], "Flat"), db[:1, :10], 1)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,PQ8x8"])
def test_same_seed_same_index(data20k, factory):
    db, ids, queries = data20k
    runs = [search(build_index(db, ids, factory, seed=7, max_train=12_000), queries, 10, {"nprobe": 4})
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])


def test_gpu_path_without_a_gpu(monkeypatch, data3k):
    """The GPU branch, with the GPU cloners stubbed by CPU copies: same index as a CPU build,
    and an IVF layout the GPU "cannot" hold falls back with a warning instead of failing."""
    db, ids, queries = data3k
    if faiss.get_num_gpus() == 0:
        with pytest.raises(RuntimeError, match="no GPU"):
            build_index(db, ids, "IVF32,Flat", use_gpu=True)
    cpu = search(build_index(db, ids, "IVF32,Flat", use_gpu=False), queries, 10, {"nprobe": 8})
    calls = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: calls.append("to") or faiss.clone_index(index))
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: calls.append("back") or faiss.clone_index(index),
                        raising=False)
    gpu = search(build_index(db, ids, "IVF32,Flat"), queries, 10, {"nprobe": 8})
    assert calls == ["to", "back"]
    np.testing.assert_array_equal(gpu[1], cpu[1])
    build_index(db, ids, "HNSW16")  # no GPU version: stays on the CPU
    build_index(db, ids, "Flat")
    assert calls == ["to", "back"]

    def refuse_ivf(index):
        if isinstance(faiss.downcast_index(index), faiss.IndexIVF):
            raise RuntimeError("Error: This index type is not implemented on GPU.")
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse_ivf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = build_index(db, ids, "IVF32,Flat")
    assert any("cannot be built on the GPU" in str(w.message) for w in caught)
    assert fallback.ntotal == len(ids)
    assert recall_at_k(search(fallback, queries, 10, {"nprobe": 32})[1], exact_neighbours(db, ids, queries, 10)) > 0.99


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat"])
def test_search_scores_are_inner_products_whatever_the_graph_metric(data3k, factory):
    """HNSW is built on L2 (better graphs on unit vectors); search still returns a.b scores."""
    vectors, ids, queries = data3k
    index = build_index(vectors, ids, factory, seed=0)
    scores, found = search(index, queries[:20], 5, {"efSearch": 64} if factory.startswith("HNSW") else None)
    by_id = dict(zip(ids.tolist(), vectors))
    expected = np.array([[queries[i] @ by_id[j] for j in row] for i, row in enumerate(found.tolist())])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "best match first"
