"""SearchService: what every route calls. Two-stage search, products, similar items, attention.

Threading model (why): the event loop only parses, looks up the cache and writes JSON.
torch work runs on one dedicated model thread (torch already spreads one call over all
cores; two calls at once would only fight), and text queries reach it through a
micro-batcher, so concurrent shoppers share encoder calls. FAISS searches run on the default
thread pool (FAISS releases the GIL). Responses are cached as JSON bytes, keyed by the index
version, the checkpoint hash and the normalised request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from fashionbert.reranking import fuse_ranked_list, match_probability
from search_api.batching import MicroBatcher
from search_api.cache import ResponseCache, cache_key
from search_api.errors import Conflict, NotFound, Unauthorized, Unprocessable
from search_api.images import decode_base64, open_image
from search_api.loaded_index import Hits, LoadedIndex
from search_api.metrics import Metrics
from search_api.schemas import SearchRequest
from search_api.settings import Settings
from search_api.state import ServingState, Snapshot
from search_api.tagging_service import TaggingService

SIMILAR_BY = ("product", "image", "title")


@dataclass(frozen=True)
class TextQuery:
    """One text query's stage 1 work, as the micro-batcher carries it."""

    snap: Snapshot
    text: str
    fetch: int
    category: str | None


@dataclass(frozen=True)
class Stage1:
    vector: np.ndarray
    hits: Hits
    encode_s: float  # the whole batch's encoder call
    faiss_s: float  # the whole batch's FAISS searches
    batch: int


def product_dict(index: LoadedIndex, row: int) -> dict[str, Any]:
    """A catalog row as the API shows it: core fields, image URLs, every other column in ``extra``."""
    pid = index.value("product_id", row)
    # Only images that decoded at indexing time, first the one the re-ranker and heatmap read.
    urls = [f"/images/{quote(pid, safe='')}/{n}" for n in index.image_views(row)]
    prices, subs = index.columns.get("price"), index.columns.get("sub_category")
    price = prices[row] if prices is not None else None
    return {
        "product_id": pid,
        "title": index.value("title", row),
        "category": index.value("category", row),
        "sub_category": subs[row] if subs is not None else None,
        "price": float(price) if price is not None else None,
        "image_url": urls[0] if urls else None,
        "image_urls": urls,
        "extra": {c: index.columns[c][row] for c in index.extra_columns},
    }


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode()


class SearchService:
    def __init__(self, settings: Settings, state: ServingState, cache: ResponseCache, metrics: Metrics):
        self.settings = settings
        self.state = state
        self.cache = cache
        self.metrics = metrics
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.batcher: MicroBatcher[TextQuery, Stage1] = MicroBatcher(
            self._stage1_batch, max_batch=settings.batch_max_size, max_wait_ms=settings.batch_max_wait_ms,
            executor=self.model_thread, name="encoder", on_batch=lambda n, _s: metrics.batch_size.observe(n),
        )
        self._background: set[asyncio.Task] = set()
        self.tagging = TaggingService(settings, state, self.on_model_thread, metrics)

    async def close(self) -> None:
        await self.batcher.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.model_thread.shutdown(wait=True)

    # ------------------------------------------------------------------ model work
    @staticmethod
    def _stage1_batch(items: list[TextQuery]) -> list[Stage1]:
        """Encode + FAISS for a micro-batch of text queries (on the model thread).

        Both halves gain from the batch: one encoder call per engine, and one FAISS search per
        (index, category) whose [q, d] x [d, n] product reads the vectors once for all queries
        (a Flat index of 100k x 256 is 100 MB per pass). Each query gets its own ``fetch``."""
        t0 = time.perf_counter()
        vectors: list[np.ndarray | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(id(item.snap.engine), []).append(i)
        for positions in groups.values():
            encoded = items[positions[0]].snap.engine.encode_queries([items[i].text for i in positions])
            for i, v in zip(positions, encoded):
                vectors[i] = v
        t1 = time.perf_counter()
        hits: list[Hits | None] = [None] * len(items)
        searches: dict[tuple[int, str | None], list[int]] = {}
        for i, item in enumerate(items):
            searches.setdefault((id(item.snap.index), item.category), []).append(i)
        for (_, category), positions in searches.items():
            index = items[positions[0]].snap.index
            found = index.search("product", np.stack([vectors[i] for i in positions]),
                                 max(items[i].fetch for i in positions), category)
            for i, h in zip(positions, found):
                hits[i] = Hits(h.rows[: items[i].fetch], h.scores[: items[i].fetch])
        t2 = time.perf_counter()
        return [Stage1(v, h, t1 - t0, t2 - t1, len(items)) for v, h in zip(vectors, hits)]  # type: ignore[arg-type]

    async def on_model_thread(self, fn, *args):
        """Run ``fn(*args)`` on the one thread that makes every model call (loading and warm-up included)."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, partial(fn, *args))

    # ------------------------------------------------------------------ validation
    def _clean_query(self, query: str | None) -> str | None:
        if query is None:
            return None
        query = " ".join(query.split())
        if not query.isascii() and any("\ud800" <= c <= "\udfff" for c in query):  # JSON "\ud800": not text
            raise Unprocessable("query contains an unpaired UTF-16 surrogate (not valid Unicode text)", field="query")
        if len(query) > self.settings.max_query_chars:
            raise Unprocessable(f"query is {len(query)} characters; the limit is {self.settings.max_query_chars}", field="query",
                                code="query_too_long")
        return query or None

    def _check(self, snap: Snapshot, k: int, category: str | None, depth: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise Unprocessable(f"k must be between 1 and {self.settings.max_k}, got {k}", field="k")
        if not 1 <= depth <= self.settings.max_rerank_depth:
            raise Unprocessable(f"rerank_depth must be between 1 and {self.settings.max_rerank_depth}, got {depth}",
                                field="rerank_depth")
        if category is not None and category not in snap.index.category_counts:
            known = ", ".join(sorted(snap.index.category_counts))
            raise Unprocessable(f"unknown category {category!r}; known categories: {known}", field="category",
                                code="unknown_category")

    # ------------------------------------------------------------------ search
    async def search(self, request: SearchRequest) -> bytes:
        image = decode_base64(request.image, self.settings.max_image_bytes) if request.image else None
        return await self.search_with(request.query, image, k=request.k, category=request.category,
                                      rerank=request.rerank, rerank_depth=request.rerank_depth)

    async def search_with(self, query: str | None, image: bytes | None, *, k: int | None = None, category: str | None = None,
                          rerank: bool = True, rerank_depth: int | None = None) -> bytes:
        """The whole two-stage search; returns the JSON body (cached bytes on a hit)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        snap = self.state.snapshot  # this request's model + index, even if a swap happens meanwhile
        query = self._clean_query(query)
        if query is None and image is None:
            raise Unprocessable("send a non-empty query, an image, or both", field="query", code="empty_query")
        k = k if k is not None else self.settings.default_k
        depth = rerank_depth if rerank_depth is not None else self.settings.default_rerank_depth
        category = category or None
        self._check(snap, k, category, depth)
        if image is not None and len(image) > self.settings.max_image_bytes:
            open_image(image, self.settings.max_image_bytes)  # raises the 413
        rerank = bool(rerank and query is not None)
        key = cache_key({
            "v": snap.index.version, "path": str(snap.index.path), "ckpt": snap.engine.sha256,
            "q": snap.engine.normalise_query(query) if query else None,
            "img": hashlib.sha256(image).hexdigest() if image is not None else None,
            "k": k, "cat": category, "rerank": rerank, "depth": depth if rerank else None,
            "w": self.settings.rerank_dual_weight,
        })
        with self.metrics.stage("cache", timings):
            cached = await self.cache.get(key)
        self.metrics.cache.labels("hit" if cached is not None else "miss").inc()
        if cached is not None:
            timings["total"] = round((time.perf_counter() - t0) * 1000, 3)
            return b'{"cached":true,"timings_ms":' + _dumps(timings) + b"," + cached[1:]

        body = await self._search_uncached(snap, query, image, k, category, rerank, depth, timings)
        payload = _dumps(body)
        task = asyncio.create_task(self.cache.set(key, payload))  # never delays the response
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        timings["total"] = round((time.perf_counter() - t0) * 1000, 3)
        return b'{"cached":false,"timings_ms":' + _dumps(timings) + b"," + payload[1:]

    async def _search_uncached(self, snap: Snapshot, query: str | None, image: bytes | None, k: int, category: str | None,
                               rerank: bool, depth: int, timings: dict[str, float]) -> dict[str, Any]:
        engine, index = snap.engine, snap.index
        patches = None
        if image is not None:
            with self.metrics.stage("decode", timings):
                picture = await asyncio.to_thread(open_image, image, self.settings.max_image_bytes)
            with self.metrics.stage("features", timings):
                patches = await self.on_model_thread(engine.photo_features, [picture], snap.features_config)
        fetch = max(k, depth if rerank else 0) * self.settings.candidate_multiplier
        if patches is None:  # text only: encode + FAISS micro-batched with concurrent queries
            t = time.perf_counter()
            stage1 = await self.batcher.submit(TextQuery(snap, query, fetch, category))  # type: ignore[arg-type]
            hits = stage1.hits
            waited = time.perf_counter() - t - stage1.encode_s - stage1.faiss_s
            for name, seconds in (("queue", max(waited, 0.0)), ("encode", stage1.encode_s), ("faiss", stage1.faiss_s)):
                self.metrics.stage_seconds.labels(name).observe(seconds)
                timings[name] = round(seconds * 1000, 3)
        else:
            with self.metrics.stage("encode", timings):
                if query is None:
                    vector = (await self.on_model_thread(engine.encode_photos, patches))[0]
                else:
                    vector = (await self.on_model_thread(engine.encode_query_with_photo, query, patches))[0]
            kind = "image" if query is None and index.has_kind("image") else "product"
            with self.metrics.stage("faiss", timings):
                hits = (await asyncio.to_thread(index.search, kind, vector[None, :], fetch, category))[0]
        rows, retrieval = hits.rows, hits.scores
        rerank_scores: dict[int, float] = {}
        order = np.arange(len(rows))
        final = retrieval.astype(np.float64)
        if rerank and len(rows):
            with self.metrics.stage("rerank", timings):
                top = rows[:depth]
                judged = index.has_image[top]
                # Reading the candidates' patch features (memory-mapped, ~330 KB each) is part of the
                # model thread's work, not the event loop's.
                log_odds = np.full(len(top), np.nan)
                if judged.any():
                    log_odds[judged] = await self.on_model_thread(_rerank_rows, engine, index, query, top[judged])
            rerank_scores = dict(zip(top[judged].tolist(), match_probability(log_odds[judged]).tolist()))
            final = fuse_ranked_list(log_odds, retrieval, engine.logit_scale, self.settings.rerank_dual_weight)
            order = np.argsort(-final, kind="stable")
        results = []
        for rank, i in enumerate(order[:k], start=1):
            row = int(rows[i])
            results.append({
                "rank": rank, **product_dict(index, row),
                "score": round(float(final[i]), 6), "retrieval_score": round(float(retrieval[i]), 6),
                "rerank_score": round(rerank_scores[row], 6) if row in rerank_scores else None,
            })
        return {"results": results, "index_version": index.version, "reranked": rerank, "query": query}

    # ------------------------------------------------------------------ products
    def _row(self, snap: Snapshot, product_id: str) -> int:
        row = snap.index.row(product_id)
        if row is None:
            raise NotFound(f"no product {product_id!r} in index {snap.index.version}", field="product_id",
                           code="unknown_product")
        return row

    def product(self, product_id: str) -> dict[str, Any]:
        snap = self.state.snapshot
        return {**product_dict(snap.index, self._row(snap, product_id)), "index_version": snap.index.version}

    async def similar(self, product_id: str, k: int, by: str = "product") -> bytes:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        snap = self.state.snapshot
        row = self._row(snap, product_id)
        if by not in SIMILAR_BY:
            raise Unprocessable(f"by must be one of {', '.join(SIMILAR_BY)}", field="by")
        if not 1 <= k <= self.settings.max_k:
            raise Unprocessable(f"k must be between 1 and {self.settings.max_k}, got {k}", field="k")
        if by == "image" and not snap.index.has_image[row]:
            raise Unprocessable(f"product {product_id!r} has no image; use by=product or by=title", field="by",
                                code="no_image")
        vector = snap.index.vector(by, row)
        with self.metrics.stage("faiss", timings):
            hits = (await asyncio.to_thread(snap.index.search, by, vector[None, :], k + 1))[0]
        results = []
        for r, s in zip(hits.rows, hits.scores):
            if int(r) == row or len(results) == k:
                continue
            results.append({"rank": len(results) + 1, **product_dict(snap.index, int(r)), "score": round(float(s), 6),
                            "retrieval_score": round(float(s), 6), "rerank_score": None})
        timings["total"] = round((time.perf_counter() - t0) * 1000, 3)
        return _dumps({"cached": False, "timings_ms": timings, "results": results, "index_version": snap.index.version,
                       "reranked": False, "query": None})

    async def attention(self, product_id: str, query: str) -> dict[str, Any]:
        snap = self.state.snapshot
        row = self._row(snap, product_id)
        text = self._clean_query(query)
        if text is None:
            raise Unprocessable("query is empty", field="query", code="empty_query")
        if not snap.index.has_image[row]:
            raise Unprocessable(f"product {product_id!r} has no image to attend to", field="product_id", code="no_image")
        weights = await self.on_model_thread(_attention_of_row, snap.engine, snap.index, text, row)
        product = product_dict(snap.index, row)
        return {"product_id": product_id, "query": text, "image_url": product["image_url"], "grid": int(weights.shape[0]),
                "weights": [[round(float(x), 6) for x in line] for line in weights]}

    def categories(self) -> dict[str, Any]:
        snap = self.state.snapshot
        return {"categories": [{"name": n, "count": c} for n, c in sorted(snap.index.category_counts.items())],
                "index_version": snap.index.version}

    def image_file(self, product_id: str, n: int) -> Path:
        snap = self.state.snapshot
        path = snap.index.image_path(self._row(snap, product_id), n)
        if path is None:
            raise NotFound(f"product {product_id!r} has no image {n}", field="n", code="unknown_image")
        return path

    # ------------------------------------------------------------------ operations
    async def readiness(self) -> dict[str, Any]:
        cache = await self.cache.status()
        if not self.state.loaded:
            return {"ready": False, "status": "loading", "model": {}, "index": {}, "cache": cache.__dict__}
        snap = self.state.snapshot
        notes = [] if cache.ok else [cache.detail]
        if self.state.last_error:
            notes.append(f"degraded: cannot switch to a new index version ({self.state.last_error})")
        tagger_problem = self.tagging.problem()
        if tagger_problem:
            notes.append(tagger_problem)
        return {
            "ready": True,
            "status": "; ".join(notes) if notes else "ok",
            "model": {"checkpoint": str(snap.engine.checkpoint), "sha256": snap.engine.sha256, "device": str(snap.engine.device),
                      "batching": {"max_batch": self.settings.batch_max_size, **self.batcher.stats.__dict__}},
            "index": snap.index.describe(),
            "cache": cache.__dict__,
            "tagger": self.tagging.status(),
        }

    async def reload(self, token: str | None) -> dict[str, Any]:
        expected = self.settings.admin_token
        if expected is None:
            raise Unauthorized("admin endpoints are disabled: set FASHIONBERT_ADMIN_TOKEN", code="admin_disabled")
        if token is None or not _same(token, expected.get_secret_value()):
            raise Unauthorized("missing or wrong bearer token", code="unauthorized")
        try:
            version, changed = await self.state.reload(force=True, run_model_call=self.on_model_thread)
        except Conflict:
            raise
        except Exception as exc:  # noqa: BLE001 - the old version keeps serving; tell the operator why
            raise Conflict(f"cannot load {self.state.current_name()}: {type(exc).__name__}: {exc}; still serving "
                           f"{self.state.snapshot.index.version}") from exc
        self.metrics.index_count.set(self.state.snapshot.index.count)
        return {"index_version": version, "changed": changed}


def _rerank_rows(engine, index: LoadedIndex, query: str, rows: np.ndarray) -> np.ndarray:
    return engine.rerank(query, index.patches(rows))


def _attention_of_row(engine, index: LoadedIndex, text: str, row: int) -> np.ndarray:
    return engine.attention(text, index.patches(np.array([row])))


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
