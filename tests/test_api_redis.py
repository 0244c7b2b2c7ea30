"""The API with the real Redis on 127.0.0.1:6379 (DB 14, flushed): hits, TTL, outage, recovery."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from search_api.app import create_app
from tests.api_fixtures import api_index, api_settings  # noqa: F401 - fixture

URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def rdb() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_responses_are_cached_in_redis_and_an_outage_is_not_an_error(api_index, rdb):
    settings = api_settings(api_index, redis_url=URL, cache_ttl_s=30, redis_timeout_s=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        body = {"query": "green silk blouse", "k": 5}
        first = c.post("/api/v1/search", json=body).json()
        time.sleep(0.2)  # the write is fire-and-forget
        keys = rdb.keys("fashionbert:*")
        assert first["cached"] is False and len(keys) == 1
        assert 0 < rdb.pttl(keys[0]) <= 30_000
        second = c.post("/api/v1/search", json=body).json()
        assert second["cached"] is True and second["results"] == first["results"]
        ready = c.get("/readyz").json()
        assert ready["status"] == "ok" and ready["cache"]["backend"] == "redis" and ready["cache"]["ok"]

        # Redis frozen for real (it stops answering every client) -> served uncached, fast, never 5xx
        pauser = redis.Redis.from_url(URL)
        pauser.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        t = time.perf_counter()
        during = c.post("/api/v1/search", json=body)
        assert during.status_code == 200 and during.json()["cached"] is False
        assert time.perf_counter() - t < 1.0  # bounded by the Redis timeout, not the pause
        assert c.post("/api/v1/search", json={"query": "another query", "k": 3}).status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["status"].startswith("degraded")
        time.sleep(2.0)  # the pause ends and the retry window passes
        assert c.get("/readyz").json()["status"] == "ok"
        back = c.post("/api/v1/search", json=body).json()
        assert back["cached"] is True  # Redis used again
        pauser.close()
        metrics = c.get("/metrics").text
        assert 'fashionbert_cache_total{result="hit"} 2.0' in metrics
