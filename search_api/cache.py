"""The search API's response cache.

Two backends behind one small protocol:

* :class:`MemoryCache` -- an in-process LRU with a TTL. The default: nothing to run, and
  good enough for one API process.
* :class:`RedisCache` -- shared between API replicas. A cache is an optimisation, never a
  dependency: a Redis outage (down, slow, paused, mid-failover) must neither fail a search
  nor make it slow. So every Redis call is bounded by a small timeout, every backend error
  turns into a miss, and after an error the cache stops touching Redis for
  ``retry_after_s`` -- otherwise every request during an outage would pay the timeout.

Keys come from :func:`cache_key`, a hash of the request's canonical JSON, so two
requests that mean the same thing share an entry whatever their field order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "CacheStatus",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "cache_key",
    "make_cache",
]

T = TypeVar("T")


@dataclass(frozen=True)
class CacheStatus:
    """What ``/readyz`` reports about the cache.

    ``ok`` is False while Redis is unreachable or too slow; the API still serves (uncached),
    so this is a degradation to alert on, not a reason to take the replica out of rotation.
    """

    backend: str  # "redis" | "memory"
    ok: bool
    detail: str


class ResponseCache(Protocol):
    """Byte-string cache of serialized search responses."""

    backend: str

    async def get(self, key: str) -> bytes | None:
        """The cached value, or None on a miss or when the backend is unavailable."""
        ...

    async def set(self, key: str, value: bytes) -> None:
        """Store ``value``; never raises for backend trouble (the response is served anyway)."""
        ...

    async def status(self) -> CacheStatus:
        """Health for ``/readyz``."""
        ...

    async def close(self) -> None:
        """Release connections (on application shutdown)."""
        ...


def cache_key(parts: Mapping[str, object]) -> str:
    """sha256 hex of canonical JSON (sort_keys, ensure_ascii=False, separators=(',',':')) of parts.

    Canonical so that equal requests hit the same entry regardless of dict order; hashed so
    that keys have a fixed, short length however long the query text is. ``ensure_ascii=False``
    keeps non-ASCII (e.g. Chinese) text as UTF-8 rather than escapes: same meaning, one key.
    """
    canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_types(key: str, value: bytes | None = None) -> None:
    """Programmer errors should be loud, unlike backend trouble which is swallowed."""
    if not isinstance(key, str):
        raise TypeError(f"cache key must be str, got {type(key).__name__}")
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"cache value must be bytes, got {type(value).__name__}")


class MemoryCache:
    """In-process LRU with a TTL.

    Expired entries are dropped lazily when read (and naturally fall off the LRU end),
    which keeps ``get``/``set`` O(1) with no background task. ``ttl_s <= 0`` disables
    caching entirely, so that "no caching" needs no special case in the API.
    """

    backend = "memory"

    def __init__(
        self,
        max_items: int = 10_000,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.errors = 0  # never incremented; kept so both backends expose the same metric
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expires_at, value)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def _enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_items > 0

    async def get(self, key: str) -> bytes | None:
        _check_types(key)
        if not self._enabled:
            return None
        entry = self._items.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._items[key]
            return None
        self._items.move_to_end(key)  # a hit makes it most recently used
        return value

    async def set(self, key: str, value: bytes) -> None:
        _check_types(key, value)
        if not self._enabled:
            return
        self._items[key] = (self._clock() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    async def status(self) -> CacheStatus:
        return CacheStatus(backend=self.backend, ok=True, detail=f"in-process LRU ({len(self._items)} items)")

    async def close(self) -> None:
        self._items.clear()


def _redact(url: str) -> str:
    """The URL without its password: ``status().detail`` ends up in /readyz responses and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal: urlsplit strips the brackets
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    else:
        netloc = f":***@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisCache:
    """Redis-backed cache that degrades to "no cache" instead of failing or stalling.

    * Every call is bounded by ``timeout_s`` twice over: the client's socket timeouts
      (connect and read) and an ``asyncio.wait_for`` around the whole call, because socket
      timeouts apply per operation (connect + handshake + command can add up) and a paused
      or black-holed server must not hold a request hostage.
    * redis-py's own retries are off: a retry would multiply the worst-case latency, and the
      next request is a retry anyway.
    * After any error the cache is "down" for ``retry_after_s``: get/set return at once without
      touching Redis, so an outage costs one timeout per window rather than one per request.
      The first success after that clears the down state.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: float = 300.0,
        timeout_s: float = 0.05,
        retry_after_s: float = 1.0,
        prefix: str = "fashionbert:",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.prefix = prefix
        self.errors = 0
        self.last_error: str | None = None
        self._down_until: float | None = None  # time.monotonic() deadline; None = up
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )

    @property
    def down(self) -> bool:
        """True while inside the back-off window that follows an error."""
        return self._down_until is not None and time.monotonic() < self._down_until

    async def _call(self, make: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run one bounded Redis call: ``(True, result)``, or ``(False, None)`` after recording the failure."""
        try:
            result = await asyncio.wait_for(make(), timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - a cache failure is a miss, never a failed request
            # RedisError and OSError are the usual outages; asyncio.TimeoutError is the wait_for guard.
            # Anything else is a server the client cannot understand (a non-Redis service on the port,
            # a proxy answering the handshake wrongly: redis-py 8 then fails with e.g. AttributeError
            # inside its HELLO negotiation) and is treated the same: recorded, backed off, reported.
            # A command cancelled by the guard leaves no half-read reply behind: redis-py drops a
            # connection interrupted mid-command (any BaseException) instead of pooling it.
            self._record_error(exc)
            return False, None
        self._down_until = None
        return True, result

    def _record_error(self, exc: BaseException) -> None:
        self.errors += 1
        message = str(exc) or "timed out"
        self.last_error = f"{type(exc).__name__}: {message}"
        self._down_until = time.monotonic() + self.retry_after_s

    async def get(self, key: str) -> bytes | None:
        _check_types(key)
        if self.ttl_s <= 0 or self.down:
            return None
        ok, value = await self._call(lambda: self._client.get(self.prefix + key))
        return value if ok else None

    async def set(self, key: str, value: bytes) -> None:
        _check_types(key, value)
        ttl_ms = int(self.ttl_s * 1000)
        if ttl_ms <= 0 or self.down:
            return
        await self._call(lambda: self._client.set(self.prefix + key, value, px=ttl_ms))

    async def status(self) -> CacheStatus:
        """Ping now (bounded, even while down) so /readyz reflects the present, not the last error."""
        ok, _ = await self._call(self._client.ping)
        if ok:
            return CacheStatus(backend=self.backend, ok=True, detail=f"{_redact(self.url)} reachable")
        return CacheStatus(
            backend=self.backend,
            ok=False,
            detail=f"degraded: redis unreachable ({self.last_error}), serving uncached",
        )

    async def close(self) -> None:
        await self._client.aclose()


def make_cache(redis_url: str | None, *, ttl_s: float, max_items: int, timeout_s: float = 0.05) -> ResponseCache:
    """RedisCache when a URL is given, MemoryCache otherwise."""
    if redis_url:
        return RedisCache(redis_url, ttl_s=ttl_s, timeout_s=timeout_s)
    return MemoryCache(max_items=max_items, ttl_s=ttl_s)
