"""Index versions under a running server: hot swap under load, broken versions, start-up errors."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from indexer.job import update_index_version
from indexer.versions import IndexDir, NoIndexError
from search_api.app import create_app
from search_api.errors import Conflict
from tests.api_fixtures import LiveServer, api_index, api_settings  # noqa: F401 - fixture
from tests.indexer_fixtures import job, make_checkpoint

QUERIES = ["red dress", "black bag", "white sneakers", "denim jeans", "floral skirt", "wool coat", "红色 连衣裙", "silk top"]


def _with_second_version(api_index, tmp_path, deleted: int = 3):
    """A copy of the index with v0002 = v0001 minus the first ``deleted`` products; CURRENT back on v0001."""
    idx = api_index.copy(tmp_path / "idx")
    gone = pq.read_table(api_index.catalog).column("product_id").to_pylist()[:deleted]
    changes = tmp_path / "changes.parquet"
    pq.write_table(pa.table({"product_id": gone, "op": ["delete"] * deleted}), changes)
    update_index_version(job(None, api_index.checkpoint, idx.index_dir), changes)
    root = IndexDir(idx.index_dir)
    assert root.current() == "v0002"
    root.switch("v0001")
    return idx, root, set(gone)


def test_hot_swap_under_concurrent_load_drops_nothing(api_index, tmp_path):
    idx, root, gone = _with_second_version(api_index, tmp_path)
    records: list[tuple[float, float, int, str | None, set[str]]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def shopper(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            i = n
            while not stop.is_set():
                t0 = time.monotonic()
                r = http.post("/api/v1/search", json={"query": QUERIES[i % len(QUERIES)], "k": 40, "rerank": i % 2 == 0})
                body = r.json() if r.status_code == 200 else {}
                ids = {h["product_id"] for h in body.get("results", [])}
                with lock:
                    records.append((t0, time.monotonic(), r.status_code, body.get("index_version"), ids))
                i += 1

    with LiveServer(create_app(api_settings(idx, reload_poll_s=0.1, cache_ttl_s=0))) as server:
        threads = [threading.Thread(target=shopper, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        switched_at = time.monotonic()
        root.switch("v0002")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == "v0002" for *_, v, _ in list(records)):
            time.sleep(0.05)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        after = httpx.get(f"{server.url}/api/v1/products/{sorted(gone)[0]}")

    statuses = [s for _, _, s, _, _ in records]
    assert statuses and set(statuses) == {200}, f"failed requests during the swap: {sorted(set(statuses))}"
    old = [r for r in records if r[3] == "v0001"]
    new = [r for r in records if r[3] == "v0002"]
    assert old and new, "requests were served by both versions"
    first_new_done = min(end for _, end, _, _, _ in new)
    assert all(r[3] == "v0002" for r in records if r[0] > first_new_done + 0.5), "a request after the switch got the old index"
    assert all(not (ids & gone) for *_, ids in new), "v0002 results contain deleted products"
    assert any(ids & gone for *_, ids in old), "the old version served the products v0002 deleted"
    assert min(end for _, end, _, _, _ in new) > switched_at
    assert after.status_code == 404


def test_a_broken_new_version_keeps_the_old_one_serving(api_index, tmp_path):
    idx = api_index.copy(tmp_path / "idx")
    root = IndexDir(idx.index_dir)
    broken = idx.index_dir / "v0009"
    shutil.copytree(root.current_path(), broken)
    (broken / "index.faiss").unlink()
    with TestClient(create_app(api_settings(idx)), raise_server_exceptions=False) as c:
        root.switch("v0009")
        r = c.post("/api/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 409 and "v0009" in r.json()["error"]["message"] and "v0001" in r.json()["error"]["message"]
        search = c.post("/api/v1/search", json={"query": "dress", "k": 3})
        assert search.status_code == 200 and search.json()["index_version"] == "v0001"
        ready = c.get("/readyz").json()
        assert ready["ready"] and ready["status"].startswith("degraded") and "v0009" in ready["status"]
        root.switch("v0001")
        assert c.post("/api/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/readyz").json()["status"] == "ok"


def test_reload_changes_the_cache_key(api_index, tmp_path):
    idx, root, _ = _with_second_version(api_index, tmp_path)
    with TestClient(create_app(api_settings(idx)), raise_server_exceptions=False) as c:
        body = {"query": "red dress", "k": 5}
        c.post("/api/v1/search", json=body)
        assert c.post("/api/v1/search", json=body).json()["cached"] is True
        root.switch("v0002")
        r = c.post("/api/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}).json()
        assert r == {"index_version": "v0002", "changed": True}
        again = c.post("/api/v1/search", json=body).json()
        assert again["cached"] is False and again["index_version"] == "v0002"


def test_start_up_errors_say_what_to_do(api_index, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoIndexError, match="fashionbert index"):
        with TestClient(create_app(api_settings(api_index, index_dir=empty))):
            pass
    other = make_checkpoint(api_index.catalog, tmp_path / "other", seed=1)
    with pytest.raises(Conflict, match="rebuild the index"):
        with TestClient(create_app(api_settings(api_index, checkpoint=other))):
            pass
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        with TestClient(create_app(api_settings(api_index, checkpoint=tmp_path / "missing"))):
            pass


def test_a_hot_swap_warms_the_new_version_on_the_model_thread(api_index, tmp_path, monkeypatch):
    """Reading a new version happens off the model thread (requests keep flowing), but its warm-up
    inference runs on it: a warm-up on any other thread left every later encode ~1.5x slower."""
    from search_api.state import ServingState

    idx, root, _ = _with_second_version(api_index, tmp_path)
    warmed: list[tuple[str, str]] = []
    prepared: list[str] = []
    real_warm, real_prepare = ServingState._warm, ServingState._prepare

    def recording_warm(self, snap):
        warmed.append((snap.index.version, threading.current_thread().name))
        return real_warm(self, snap)

    def recording_prepare(self, version_dir=None):
        prepared.append(threading.current_thread().name)
        return real_prepare(self, version_dir)

    monkeypatch.setattr(ServingState, "_warm", recording_warm)
    monkeypatch.setattr(ServingState, "_prepare", recording_prepare)
    with TestClient(create_app(api_settings(idx)), raise_server_exceptions=False) as c:
        model_thread = c.app.state.service.model_thread.submit(lambda: threading.current_thread().name).result()
        root.switch("v0002")
        assert c.post("/api/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}).json()["changed"] is True
        assert c.post("/api/v1/search", json={"query": "red dress", "rerank": False}).json()["index_version"] == "v0002"
    assert warmed == [("v0001", model_thread), ("v0002", model_thread)]
    assert prepared[-1] != model_thread  # the new version was read elsewhere
