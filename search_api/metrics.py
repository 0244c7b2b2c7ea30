"""Prometheus metrics of one app instance (its own registry, so apps in one process don't clash).

Requests are measured by a plain ASGI middleware keyed by the route *template*
(``/api/v1/products/{product_id}``, not the id), so label cardinality stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fashionbert_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("fashionbert_request_seconds", "HTTP request latency", ["method", "route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("fashionbert_stage_seconds", "time per search stage", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.cache = Counter("fashionbert_cache", "response cache lookups", ["result"], registry=r)
        self.batch_size = Histogram("fashionbert_encoder_batch_size", "queries per encoder call (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.index_count = Gauge("fashionbert_index_products", "products in the served index version", registry=r)
        self.index_reloads = Counter("fashionbert_index_reloads", "index versions switched to", ["result"], registry=r)

    @contextmanager
    def stage(self, name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
        """Time a block into the stage histogram and (in ms) into a response's timings."""
        t = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t
            self.stage_seconds.labels(name).observe(seconds)
            if timings is not None:
                timings[name] = round(timings.get(name, 0.0) + seconds * 1000, 3)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.request_seconds.labels(method, template).observe(time.perf_counter() - start)
