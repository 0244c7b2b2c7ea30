"""The search API through the real app (HTTP via TestClient) on a real tiny index."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fashionbert.encoder import FashionBert
from indexer.embeddings import EmbeddingShards
from indexer.feature_store import FeatureStore
from indexer.versions import IndexDir
from search_api.app import create_app
from tests.api_fixtures import api_index, api_settings, client  # noqa: F401 - fixtures


def _catalog_rows(index) -> list[dict]:
    return pq.read_table(index.catalog).to_pylist()


def _image_bytes(index, product_id: str, n: int = 0) -> bytes:
    row = next(r for r in _catalog_rows(index) if r["product_id"] == product_id)
    return (index.data / row["images"][n]).read_bytes()


def _search(client: TestClient, **body):
    return client.post("/api/v1/search", json=body)


# ----------------------------------------------------------------------------- text search
def test_text_search_returns_products_with_metadata_scores_and_timings(client):
    r = _search(client, query="red floral summer dress", k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_version"] == "v0001" and body["cached"] is False and body["reranked"] is True
    assert len(body["results"]) == 5 and [h["rank"] for h in body["results"]] == [1, 2, 3, 4, 5]
    hit = body["results"][0]
    assert {"product_id", "title", "category", "sub_category", "price", "image_url", "extra", "score",
            "retrieval_score", "rerank_score"} <= hit.keys()
    assert hit["extra"]["merchant"] == hit["product_id"]  # an unknown catalog column is carried through
    assert "images" not in hit["extra"] and "faiss_id" not in hit["extra"]
    assert {"encode", "faiss", "rerank", "cache", "total"} <= body["timings_ms"].keys()
    assert len({h["product_id"] for h in body["results"]}) == 5


def test_second_identical_query_is_a_cache_hit_with_the_same_results(client):
    first = _search(client, query="black leather handbag", k=4).json()
    second = _search(client, query="  Black   leather handbag ", k=4).json()  # same after normalisation
    assert second["cached"] is True and set(second["timings_ms"]) == {"cache", "total"}
    assert second["results"] == first["results"]
    assert _search(client, query="black leather handbag", k=5).json()["cached"] is False  # another k, another key


def test_chinese_query_works(client):
    r = _search(client, query="红色 连衣裙", k=3)
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_category_filter_is_exact(client):
    cats = client.get("/api/v1/categories").json()["categories"]
    small = min(cats, key=lambda c: c["count"])
    body = _search(client, query="something nice", k=20, category=small["name"]).json()
    assert len(body["results"]) == small["count"]  # every product of the category, nothing else
    assert {h["category"] for h in body["results"]} == {small["name"]}


def _log_odds_of_hits(api_index, query: str, hits: list[dict]) -> list[float | None]:
    """The cross encoder's log-odds of each hit's stored first view (None: no readable image)."""
    model = FashionBert.from_pretrained(api_index.checkpoint)
    store = FeatureStore(api_index.features)
    out: list[float | None] = []
    for hit in hits:
        feats = store.views(hit["product_id"], 1)
        out.append(None if feats is None else float(model.match_logits([query], feats.astype(np.float32), segment="Q")[0]))
    return out


def test_rerank_orders_by_the_fused_score_and_off_orders_by_retrieval(client, api_index):
    w = client.app.state.settings.rerank_dual_weight
    scale = FashionBert.from_pretrained(api_index.checkpoint).logit_scale
    off = _search(client, query="blue denim jeans", k=10, rerank=False).json()
    on = _search(client, query="blue denim jeans", k=10, rerank=True, rerank_depth=10).json()
    assert off["reranked"] is False and all(h["rerank_score"] is None for h in off["results"])
    ret = [h["retrieval_score"] for h in off["results"]]
    assert ret == sorted(ret, reverse=True)
    assert on["reranked"] is True
    fused = [h["score"] for h in on["results"]]
    assert fused == sorted(fused, reverse=True)
    log_odds = _log_odds_of_hits(api_index, "blue denim jeans", on["results"])
    judged = [x for x in log_odds if x is not None]
    assert len(judged) >= 9
    for h, x in zip(on["results"], log_odds):  # k == depth: every result was a re-rank candidate
        verdict = x if x is not None else np.mean(judged)  # no photo: the average verdict
        assert h["score"] == pytest.approx(verdict + w * scale * h["retrieval_score"], abs=1e-3)
        assert (h["rerank_score"] is None) == (x is None)
    assert {h["product_id"] for h in on["results"]} == {h["product_id"] for h in off["results"]}
    # no weight on stage 1: the order is the cross encoder's (here not the retrieval order)
    with TestClient(create_app(api_settings(api_index, rerank_dual_weight=0.0)), raise_server_exceptions=False) as c:
        tia = _search(c, query="blue denim jeans", k=10, rerank_depth=10).json()["results"]
    scored = [h for h in tia if h["rerank_score"] is not None]  # the product without a readable image has none
    probs = [h["rerank_score"] for h in scored]
    assert len(scored) >= 9 and probs == sorted(probs, reverse=True)
    assert [h["product_id"] for h in tia] != [h["product_id"] for h in off["results"]]


def test_the_reranker_can_run_its_matmuls_in_bf16_and_leaves_retrieval_alone(client, api_index, monkeypatch):
    body = {"query": "blue denim jeans", "k": 10, "rerank_depth": 10}
    exact = _search(client, **body).json()["results"]
    monkeypatch.setenv("FASHIONBERT_RERANK_PRECISION", "bf16")  # as a deployment sets it
    with TestClient(create_app(api_settings(api_index)), raise_server_exceptions=False) as c:
        fast = _search(c, **body).json()["results"]
        engine = c.app.state.service.state.snapshot.engine
        assert (engine.reranker.matmul_precision, engine.model.matmul_precision) == ("bf16", "fp32")
    by_id = {h["product_id"]: h for h in exact}
    assert {h["product_id"] for h in fast} == by_id.keys()  # same stage-1 candidates: query encoding stayed fp32
    for h in fast:
        assert h["retrieval_score"] == pytest.approx(by_id[h["product_id"]]["retrieval_score"], abs=1e-6)
        if h["rerank_score"] is not None:
            assert h["rerank_score"] == pytest.approx(by_id[h["product_id"]]["rerank_score"], abs=0.05)
    assert any(h["rerank_score"] != by_id[h["product_id"]]["rerank_score"] for h in fast)  # bf16 did run
    with pytest.raises(ValueError, match="rerank_precision"):
        api_settings(api_index, rerank_precision="fp16")


def test_results_beyond_the_rerank_depth_keep_stage_one_order_below_the_head(client):
    body = _search(client, query="blue denim jeans", k=12, rerank_depth=4).json()["results"]
    head, tail = body[:4], body[4:]
    first_four = _search(client, query="blue denim jeans", k=4, rerank=False).json()["results"]
    assert {h["product_id"] for h in head} == {h["product_id"] for h in first_four}  # re-ranked among themselves
    assert all(h["rerank_score"] is None for h in tail)
    assert [h["retrieval_score"] for h in tail] == sorted((h["retrieval_score"] for h in tail), reverse=True)
    scores = [h["score"] for h in body]
    assert scores == sorted(scores, reverse=True)  # never increasing down the list


def test_a_retired_setting_fails_loudly(api_index, monkeypatch):
    with pytest.raises(ValueError, match="rerank_weight .* was retired: use rerank_dual_weight"):
        api_settings(api_index, rerank_weight=0.5)
    monkeypatch.setenv("FASHIONBERT_RERANK_WEIGHT", "0.5")
    with pytest.raises(ValueError, match="FASHIONBERT_RERANK_WEIGHT"):
        api_settings(api_index)


def test_rerank_scores_are_the_cross_encoder_on_the_first_view(client, api_index):
    """The re-ranker reads the version's patch shards: they must be the catalog's first-view features."""
    body = _search(client, query="white sneakers", k=6, rerank_depth=6).json()
    model = FashionBert.from_pretrained(api_index.checkpoint)
    store = FeatureStore(api_index.features)
    for hit in body["results"]:
        feats = store.views(hit["product_id"], 1)
        assert (feats is None) == (hit["rerank_score"] is None)  # no readable image: not re-ranked
        if feats is None:
            continue
        expected = model.score_pairs(["white sneakers"], feats.astype(np.float32), segment="Q")[0]
        assert hit["rerank_score"] == pytest.approx(float(expected), abs=1e-4)


# ----------------------------------------------------------------------------- photo search
def test_photo_search_ranks_as_the_indexers_own_features_say(client, api_index):
    """An uploaded catalog photo must get exactly the indexer's features (same CNN, same resize),
    so the API's ranking equals image-vector similarity to that photo's stored first view."""
    pid = _catalog_rows(api_index)[0]["product_id"]
    data = _image_bytes(api_index, pid)
    body = _search(client, image=base64.b64encode(data).decode(), k=3).json()
    model = FashionBert.from_pretrained(api_index.checkpoint)
    store = FeatureStore(api_index.features)
    query = model.encode_images(store.views(pid, 1).astype(np.float32))[0]
    shards = EmbeddingShards.load(IndexDir(api_index.index_dir).current_path())
    scores = shards.vectors["image"] @ query
    has_image = np.asarray(shards.meta.column("has_image").to_pylist())
    order = [i for i in np.argsort(-scores) if has_image[i]][:3]
    assert [h["product_id"] for h in body["results"]] == [shards.meta.column("product_id")[i].as_py() for i in order]
    assert [h["retrieval_score"] for h in body["results"]] == pytest.approx([float(scores[i]) for i in order], abs=1e-4)
    assert body["reranked"] is False  # no text: nothing for the cross encoder to match
    upload = client.post("/api/v1/search/image", files={"file": ("p.jpg", data, "image/jpeg")}, data={"k": "3"}).json()
    assert [h["product_id"] for h in upload["results"]] == [h["product_id"] for h in body["results"]]


def test_photo_plus_text_combines_both(client, api_index):
    pid = _catalog_rows(api_index)[0]["product_id"]
    data = _image_bytes(api_index, pid)
    both = client.post("/api/v1/search/image", files={"file": ("p.png", data, "image/jpeg")},
                       data={"query": "dress", "k": "5", "rerank": "false"}).json()
    text = _search(client, query="dress", k=5, rerank=False).json()
    assert both["query"] == "dress" and len(both["results"]) == 5
    assert [h["retrieval_score"] for h in both["results"]] != [h["retrieval_score"] for h in text["results"]]


# ----------------------------------------------------------------------------- products
def test_product_similar_attention_and_images(client, api_index):
    rows = _catalog_rows(api_index)
    pid = rows[0]["product_id"]
    product = client.get(f"/api/v1/products/{pid}").json()
    assert product["title"] == rows[0]["title"] and product["extra"]["merchant"] == pid
    similar = client.get(f"/api/v1/products/{pid}/similar", params={"k": 5}).json()["results"]
    assert len(similar) == 5 and pid not in {h["product_id"] for h in similar}
    for by in ("image", "title"):
        assert client.get(f"/api/v1/products/{pid}/similar", params={"k": 3, "by": by}).status_code == 200
    att = client.get(f"/api/v1/products/{pid}/attention", params={"query": "red dress"}).json()
    weights = np.array(att["weights"])
    assert weights.shape == (8, 8) and weights.sum() == pytest.approx(1.0, abs=1e-3) and (weights >= 0).all()
    img = client.get(product["image_url"])
    assert img.status_code == 200 and img.content == _image_bytes(api_index, pid)
    Image.open(io.BytesIO(img.content)).verify()


# ----------------------------------------------------------------------------- errors
def _error(r, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"]
    if code:
        assert err["code"] == code
    if field:
        assert err["field"] == field
    return err


def test_bad_requests_are_clear_4xx(client, api_index):
    _error(_search(client), 422, "empty_query")
    _error(_search(client, query="   \t "), 422, "empty_query")
    assert "256" in _error(_search(client, query="x" * 300), 422, "query_too_long", "query")["message"]
    _error(_search(client, query="a", k=0), 422, "invalid_request", "k")
    _error(_search(client, query="a", k=101), 422, "invalid_request", "k")
    _error(_search(client, query="a", rerank_depth=0), 422, "invalid_request", "rerank_depth")
    assert "bags" in _error(_search(client, query="a", category="spaceships"), 422, "unknown_category")["message"]
    _error(_search(client, query="a", colour="red"), 422, "invalid_request")  # unknown field
    _error(_search(client, image="not base64!!"), 422, "invalid_image", "image")
    _error(_search(client, image=base64.b64encode(b"\x89PNG\r\n\x1a\n garbage").decode()), 422, "invalid_image")
    r = client.post("/api/v1/search", content=b'{"query": "dress", ', headers={"content-type": "application/json"})
    _error(r, 422, "invalid_request")
    files = {"file": ("x.jpg", b"not an image at all", "image/jpeg")}
    _error(client.post("/api/v1/search/image", files=files), 422, "invalid_image")
    _error(client.get("/api/v1/products/nope"), 404, "unknown_product")
    _error(client.get("/api/v1/products/nope/similar"), 404, "unknown_product")
    pid = _catalog_rows(api_index)[0]["product_id"]
    _error(client.get(f"/api/v1/products/{pid}/similar", params={"k": 0}), 422, field="k")
    _error(client.get(f"/api/v1/products/{pid}/attention", params={"query": " "}), 422, "empty_query")
    _error(client.get(f"/images/{pid}/99"), 404, "unknown_image")
    _error(client.get("/images/nope/0"), 404)
    _error(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_a_product_without_a_readable_image(client, api_index):
    broken = _catalog_rows(api_index)[5]["product_id"]  # indexer_fixtures.make_synthetic corrupts its images
    product = client.get(f"/api/v1/products/{broken}").json()
    assert product["image_url"] is None and product["image_urls"] == []  # never a link to a file that does not decode
    _error(client.get(f"/images/{broken}/0"), 404, "unknown_image")  # the corrupt file is there, but not served
    _error(client.get(f"/api/v1/products/{broken}/similar", params={"by": "image"}), 422, "no_image")
    _error(client.get(f"/api/v1/products/{broken}/attention", params={"query": "bag"}), 422, "no_image")


def test_a_corrupt_first_photo_is_skipped_everywhere(client, api_index):
    """Row 7's first photo is corrupt: its links, the re-ranker's view and the heatmap's photo start at image 1."""
    row = _catalog_rows(api_index)[7]
    pid = row["product_id"]
    product = client.get(f"/api/v1/products/{pid}").json()
    assert product["image_url"] == f"/images/{pid}/1"
    assert product["image_urls"] == [f"/images/{pid}/{n}" for n in range(1, min(len(row["images"]), 5))]
    _error(client.get(f"/images/{pid}/0"), 404, "unknown_image")
    assert client.get(f"/images/{pid}/1").content == _image_bytes(api_index, pid, 1)
    att = client.get(f"/api/v1/products/{pid}/attention", params={"query": "dress"}).json()
    assert att["image_url"] == f"/images/{pid}/1"
    store = FeatureStore(api_index.features)
    assert store.image_indices(pid)[0] == 1  # the re-ranker's view (emb/patches) is that photo's features


def test_oversize_images_get_413(api_index):
    with TestClient(create_app(api_settings(api_index, max_image_bytes=4096)), raise_server_exceptions=False) as c:
        big = bytes(range(256)) * 40  # 10 KiB
        _error(_search(c, image=base64.b64encode(big).decode()), 413, "payload_too_large")
        _error(c.post("/api/v1/search/image", files={"file": ("big.jpg", big, "image/jpeg")}), 413, "payload_too_large")
        huge = b'{"image": "' + b"A" * 200_000 + b'"}'
        _error(c.post("/api/v1/search", content=huge, headers={"content-type": "application/json"}), 413)


def test_images_outside_the_catalog_root_are_never_served(api_index, tmp_path):
    idx = api_index.copy(tmp_path / "idx")
    version = IndexDir(idx.index_dir).current_path()
    ids = pq.read_table(version / "ids.parquet")
    paths = ids.column("image_paths").to_pylist()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(_image_bytes(api_index, ids.column("product_id")[0].as_py()))
    paths[0] = [str(secret)]
    pq.write_table(ids.set_column(ids.schema.get_field_index("image_paths"), "image_paths",
                                  __import__("pyarrow").array(paths)), version / "ids.parquet")
    with TestClient(create_app(api_settings(idx)), raise_server_exceptions=False) as c:
        pid = ids.column("product_id")[0].as_py()
        _error(c.get(f"/images/{pid}/0"), 404, "unknown_image")
        _error(c.get("/images/..%2F..%2Fetc%2Fpasswd/0"), 404)


# ----------------------------------------------------------------------------- operations
def test_health_readiness_metrics_and_local_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["status"] == "ok"
    assert ready["index"]["version"] == "v0001" and ready["index"]["count"] == 40
    assert ready["cache"]["backend"] == "memory"
    _search(client, query="metrics please", k=2)
    _search(client, query="metrics please", k=2)
    client.get("/api/v1/products/nope")
    text = client.get("/metrics").text
    assert re.search(r'fashionbert_requests_total\{method="POST",route="/api/v1/search",status="200"\} [2-9]', text)
    assert 'route="/api/v1/products/{product_id}",status="404"' in text  # the template, not the id
    for stage in ("encode", "faiss", "rerank", "cache"):
        assert f'fashionbert_stage_seconds_count{{stage="{stage}"}}' in text
    assert re.search(r'fashionbert_cache_total\{result="hit"\} [1-9]', text)
    assert "fashionbert_index_products 40.0" in text
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower()
    js = re.search(r'src="([^"]+swagger-ui-bundle\.js)"', docs).group(1)
    assert client.get(js).status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/api/v1/search" in schema["paths"] and "/api/v1/search/image" in schema["paths"]


def test_admin_reload_needs_the_token(client):
    _error(client.post("/api/v1/admin/reload"), 401, "unauthorized")
    _error(client.post("/api/v1/admin/reload", headers={"Authorization": "Bearer wrong"}), 401)
    r = client.post("/api/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json() == {"index_version": "v0001", "changed": False}


def test_admin_is_disabled_without_a_configured_token(api_index):
    with TestClient(create_app(api_settings(api_index, admin_token=None)), raise_server_exceptions=False) as c:
        _error(c.post("/api/v1/admin/reload", headers={"Authorization": "Bearer anything"}), 401, "admin_disabled")


def test_concurrent_queries_are_micro_batched_with_the_same_results(api_index):
    """16 shoppers at once share encoder + FAISS calls, and get what they get one at a time."""
    import asyncio

    import httpx

    from tests.api_fixtures import LiveServer

    queries = [f"{c} {w}" for c in ("red", "black", "white", "blue") for w in ("dress", "bag", "boots", "skirt")]
    settings = api_settings(api_index, batch_max_size=16, batch_max_wait_ms=50, cache_ttl_s=0)
    with LiveServer(create_app(settings)) as server:
        async def run() -> list[dict]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                rs = await asyncio.gather(*(http.post("/api/v1/search", json={"query": q, "k": 5, "rerank": False})
                                            for q in queries))
            return [r.json() for r in rs]

        together = asyncio.run(run())
        stats = httpx.get(f"{server.url}/readyz").json()["model"]["batching"]
        alone = [httpx.post(f"{server.url}/api/v1/search", json={"query": q, "k": 5, "rerank": False}).json() for q in queries]
    assert stats["max_batch_seen"] >= 4 and stats["batches"] < stats["items"]
    for a, b in zip(together, alone):
        assert [h["product_id"] for h in a["results"]] == [h["product_id"] for h in b["results"]]
        assert [h["retrieval_score"] for h in a["results"]] == pytest.approx([h["retrieval_score"] for h in b["results"]], abs=1e-4)


def test_the_model_thread_loads_and_warms_the_model(api_index, monkeypatch):  # noqa: F811
    """torch's OpenMP pool belongs to the thread that first used it: loading and warming on another
    thread left the serving encoder 1.5-2x slower, so the lifespan runs both on the model thread."""
    import threading

    from search_api.state import ServingState

    threads: list[str] = []
    real_warm = ServingState._warm

    def recording_warm(self, snap):  # the real warm-up, noting the thread it ran on
        threads.append(threading.current_thread().name)
        return real_warm(self, snap)

    monkeypatch.setattr(ServingState, "_warm", recording_warm)
    with TestClient(create_app(api_settings(api_index)), raise_server_exceptions=False) as c:
        assert c.post("/api/v1/search", json={"query": "red dress", "rerank": False}).status_code == 200
        service = c.app.state.service
        serving = service.model_thread.submit(lambda: threading.current_thread().name).result()
    assert threads and threads == [serving] and serving.startswith("model")
