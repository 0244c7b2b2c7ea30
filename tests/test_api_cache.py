"""The search API's response cache, against real backends.

Redis tests use the real server on 127.0.0.1:6379, database 15 (flushed around each test).
Outages are made real too: a closed port (refused), a TCP black hole (accepts, never answers),
and the real server frozen with ``CLIENT PAUSE ... ALL``.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from search_api.cache import (
    CacheStatus,
    MemoryCache,
    RedisCache,
    _redact,
    cache_key,
    make_cache,
)

REDIS_URL = "redis://127.0.0.1:6379/15"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rdb() -> Iterator[redis.Redis]:
    """A sync client on DB 15, flushed before and after, to look behind the cache's back."""
    client = redis.Redis(host="127.0.0.1", port=6379, db=15)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # fail, not skip: these tests are the point of the file
        pytest.fail(f"these tests need a real Redis on 127.0.0.1:6379 ({exc})")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def closed_port() -> int:
    """A local port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- cache_key


def test_cache_key_is_canonical_and_distinguishes_requests() -> None:
    a = cache_key({"q": "red dress", "k": 10, "filters": {"category": "tops", "color": "red"}})
    b = cache_key({"filters": {"color": "red", "category": "tops"}, "k": 10, "q": "red dress"})
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0
    assert cache_key({"q": "red dress", "k": 11, "filters": {"category": "tops", "color": "red"}}) != a
    assert cache_key({"q": "red dresses", "k": 10, "filters": {"category": "tops", "color": "red"}}) != a


def test_cache_key_non_ascii_is_hashed_as_utf8_canonical_json() -> None:
    key = cache_key({"q": "红色连衣裙", "k": 5})
    expected = hashlib.sha256('{"k":5,"q":"红色连衣裙"}'.encode()).hexdigest()
    assert key == expected
    assert cache_key({"q": "蓝色连衣裙", "k": 5}) != key


# --------------------------------------------------------------------------- MemoryCache


def test_memory_hit_miss_and_status() -> None:
    async def main() -> None:
        cache = MemoryCache(max_items=10, ttl_s=60)
        assert cache.backend == "memory"
        assert await cache.get("a") is None
        await cache.set("a", b"1")
        await cache.set("b", b"2")
        assert await cache.get("a") == b"1"
        assert await cache.get("b") == b"2"
        assert len(cache) == 2
        assert await cache.status() == CacheStatus("memory", True, "in-process LRU (2 items)")
        with pytest.raises(TypeError):
            await cache.set("c", "not bytes")  # type: ignore[arg-type]
        await cache.close()

    asyncio.run(main())


def test_memory_lru_evicts_least_recently_used() -> None:
    async def main() -> None:
        cache = MemoryCache(max_items=3, ttl_s=60)
        for k in "abc":
            await cache.set(k, k.encode())
        assert await cache.get("a") == b"a"  # touch: now b is the oldest
        await cache.set("d", b"d")
        assert len(cache) == 3
        assert await cache.get("b") is None
        assert [await cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]
        await cache.set("c", b"c2")  # overwrite: refreshes, does not grow; now a is the oldest
        await cache.set("e", b"e")
        assert await cache.get("a") is None
        assert [await cache.get(k) for k in "cde"] == [b"c2", b"d", b"e"]

    asyncio.run(main())


def test_memory_ttl_expiry_with_injected_clock() -> None:
    async def main() -> None:
        clock = FakeClock()
        cache = MemoryCache(max_items=10, ttl_s=10, clock=clock)
        await cache.set("a", b"1")
        clock.now += 5
        await cache.set("b", b"2")
        clock.now += 4.9
        assert await cache.get("a") == b"1"
        clock.now += 0.1  # a is exactly 10 s old
        assert await cache.get("a") is None
        assert len(cache) == 1  # the expired entry was dropped, not just hidden
        assert await cache.get("b") == b"2"
        clock.now += 5
        assert await cache.get("b") is None
        assert len(cache) == 0

    asyncio.run(main())


@pytest.mark.parametrize("ttl", [0, -1])
def test_memory_ttl_zero_disables_caching(ttl: float) -> None:
    async def main() -> None:
        cache = MemoryCache(max_items=10, ttl_s=ttl)
        await cache.set("a", b"1")
        assert await cache.get("a") is None
        assert len(cache) == 0

    asyncio.run(main())


# --------------------------------------------------------------------------- RedisCache, healthy


def test_redis_hit_miss_prefix_and_status(rdb: redis.Redis) -> None:
    async def main() -> None:
        cache = RedisCache(REDIS_URL, ttl_s=60)
        custom = RedisCache(REDIS_URL, ttl_s=60, prefix="t:")
        try:
            assert cache.backend == "redis"
            assert await cache.get("k") is None
            await cache.set("k", b"\x00payload\xff")
            await custom.set("k", b"other")
            assert await cache.get("k") == b"\x00payload\xff"
            assert await custom.get("k") == b"other"
            assert rdb.get("fashionbert:k") == b"\x00payload\xff"
            assert rdb.get("t:k") == b"other"
            assert rdb.exists("k") == 0
            status = await cache.status()
            assert status.ok and status.backend == "redis"
            assert status.detail == f"{REDIS_URL} reachable"
            assert cache.errors == 0 and not cache.down
            with pytest.raises(TypeError):
                await cache.set("k", "not bytes")  # type: ignore[arg-type]
        finally:
            await cache.close()
            await custom.close()

    asyncio.run(main())


def test_redis_entries_really_expire(rdb: redis.Redis) -> None:
    async def main() -> None:
        cache = RedisCache(REDIS_URL, ttl_s=0.3)
        try:
            await cache.set("k", b"v")
            pttl = rdb.pttl("fashionbert:k")
            assert 0 < pttl <= 300
            assert await cache.get("k") == b"v"
            await asyncio.sleep(0.5)
            assert await cache.get("k") is None
            assert rdb.exists("fashionbert:k") == 0
            assert cache.errors == 0
        finally:
            await cache.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- RedisCache, outages


def test_redis_unreachable_degrades_fast_and_backs_off() -> None:
    async def main() -> None:
        cache = RedisCache(f"redis://127.0.0.1:{closed_port()}/0", ttl_s=60, retry_after_s=0.3)
        try:
            t0 = time.perf_counter()
            assert await cache.get("k") is None
            assert time.perf_counter() - t0 < 0.5
            assert cache.errors == 1 and cache.down

            errors = cache.errors
            t0 = time.perf_counter()
            for _ in range(20):  # inside the down window: Redis is not even tried
                assert await cache.get("k") is None
                await cache.set("k", b"v")
            assert time.perf_counter() - t0 < 0.05
            assert cache.errors == errors

            status = await cache.status()  # pings even while down
            assert not status.ok and status.backend == "redis"
            assert status.detail.startswith("degraded:")
            assert "ConnectionError" in status.detail
            assert cache.errors == errors + 1

            await asyncio.sleep(0.35)  # window over: the next call tries Redis again
            assert not cache.down
            await cache.set("k", b"v")  # must not raise
            assert cache.errors == errors + 2 and cache.down
        finally:
            await cache.close()

    asyncio.run(main())


def test_redis_black_hole_is_bounded_by_timeout() -> None:
    """A server that accepts and never answers must cost about timeout_s, not a hung request."""

    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            while await reader.read(4096):  # read and discard until the client hangs up
                pass
            writer.close()

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_s=60, timeout_s=0.05, retry_after_s=0.0)
        try:
            t0 = time.perf_counter()
            assert await cache.get("k") is None
            assert time.perf_counter() - t0 < 0.3
            t0 = time.perf_counter()
            await cache.set("k", b"v")
            assert time.perf_counter() - t0 < 0.3
            t0 = time.perf_counter()
            status = await cache.status()
            assert time.perf_counter() - t0 < 0.3
            assert not status.ok and status.detail.startswith("degraded:")
            assert cache.errors == 3
            assert accepted  # the connection really reached the black hole (not refused)
        finally:
            await cache.close()
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_redis_whole_call_is_bounded_not_just_each_socket_read() -> None:
    """A server that answers every command, each reply just inside the socket timeout.

    No single read times out, but the connect handshake plus the command add up to several
    timeouts; only the per-call guard keeps the request bounded (without it, GET returns the
    server's slow "+OK" after ~3 replies' worth of delay).
    """

    async def main() -> None:
        # Sized so a loaded CI machine's scheduling delays (~0.1 s seen) cannot cross the bound, while
        # the unguarded call (>= 3 replies, 1.2 s) stays far above it.
        delay, timeout_s = 0.4, 0.5
        commands: list[bytes] = []

        async def slow_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():  # RESP: *N, then N times $len / data
                    args = []
                    for _ in range(int(line[1:])):
                        size = int((await reader.readline())[1:])
                        args.append((await reader.readexactly(size + 2))[:-2])
                    commands.append(b" ".join(args[:2]).upper())
                    await asyncio.sleep(delay)
                    # A RESP2-only server (Redis 5): HELLO is unknown, so the client falls back and goes on.
                    writer.write(b"-ERR unknown command 'HELLO'\r\n" if args[0].upper() == b"HELLO" else b"+OK\r\n")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(slow_ok, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_s=60, timeout_s=timeout_s)
        try:
            t0 = time.perf_counter()
            assert await cache.get("k") is None
            assert time.perf_counter() - t0 < timeout_s + 0.45
            assert cache.errors == 1 and cache.down
            assert commands  # it was talking to the slow server, not refused
        finally:
            await cache.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_server_the_client_cannot_understand_is_a_miss_not_an_error() -> None:
    """Something on the port that is not Redis (here: "+OK" to every command, HELLO included, which
    makes redis-py 8 fail inside its handshake with an AttributeError) costs a miss and a
    readiness note, never an exception out of the cache."""

    async def main() -> None:
        async def ok_to_everything(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while await reader.read(4096):
                    writer.write(b"+OK\r\n")
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(ok_to_everything, "127.0.0.1", 0)
        cache = RedisCache(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0", ttl_s=60, timeout_s=0.5)
        try:
            assert await cache.get("k") is None
            assert cache.errors == 1 and cache.down and cache.last_error
            await cache.set("k", b"v")  # inside the back-off window: not even tried
            status = await cache.status()
            assert not status.ok and status.detail.startswith("degraded:")
        finally:
            await cache.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_redis_recovers_after_real_pause(rdb: redis.Redis) -> None:
    """Freeze the real server with CLIENT PAUSE ALL: misses within the timeout, then recovery."""

    async def main() -> None:
        cache = RedisCache(REDIS_URL, ttl_s=60, timeout_s=0.05, retry_after_s=0.2)
        sticky = RedisCache(REDIS_URL, ttl_s=60, timeout_s=0.05, retry_after_s=60)
        try:
            await cache.set("k1", b"v1")
            await cache.set("k2", b"v2")
            assert await cache.get("k1") == b"v1"  # a pooled connection now exists

            rdb.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            paused_until = time.monotonic() + 1.5

            t0 = time.perf_counter()
            assert await cache.get("k1") is None
            assert time.perf_counter() - t0 < 0.3
            assert cache.errors == 1 and cache.down
            t0 = time.perf_counter()
            status = await cache.status()
            assert time.perf_counter() - t0 < 0.3
            assert not status.ok and status.detail.startswith("degraded:")
            assert await sticky.get("k1") is None and sticky.down

            await asyncio.sleep(0.25)  # past retry_after_s but still paused: tried again, fails again
            errors = cache.errors
            assert await cache.get("k1") is None
            assert cache.errors == errors + 1

            await asyncio.sleep(max(0.0, paused_until - time.monotonic()) + 0.3)
            # The server now answers the commands it held, including the cancelled GET k1.
            # That reply must not be read as the answer to this GET k2 (a reused connection would).
            assert await cache.get("k2") == b"v2"
            assert not cache.down
            await cache.set("k3", b"v3")
            assert await cache.get("k3") == b"v3"
            status = await cache.status()
            assert status.ok and status.detail.endswith("reachable")

            # Still inside its 60 s window, `sticky` skips Redis; but status() pings regardless,
            # and that first success ends the down state without waiting out the window.
            assert await sticky.get("k2") is None
            assert (await sticky.status()).ok
            assert not sticky.down
            assert await sticky.get("k2") == b"v2"
        finally:
            await cache.close()
            await sticky.close()

    # No CLIENT UNPAUSE on failure: it is held by the pause like any other command; the pause
    # ends by itself after 1.5 s (the fixture's FLUSHDB simply waits for it).
    asyncio.run(main())


# --------------------------------------------------------------------------- make_cache, helpers


def test_make_cache_picks_backend() -> None:
    async def main() -> None:
        memory = make_cache(None, ttl_s=12, max_items=7)
        assert isinstance(memory, MemoryCache) and memory.backend == "memory"
        assert (memory.ttl_s, memory.max_items) == (12, 7)
        remote = make_cache(REDIS_URL, ttl_s=12, max_items=7, timeout_s=0.02)
        assert isinstance(remote, RedisCache) and remote.backend == "redis"
        assert (remote.ttl_s, remote.timeout_s, remote.url) == (12, 0.02, REDIS_URL)
        # The timeout reaches the client's sockets too, not only the asyncio guard.
        kwargs = remote._client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.02
        await remote.close()

    asyncio.run(main())


def test_redact_hides_password_in_status_urls() -> None:
    assert _redact("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert _redact("rediss://user:s3cret@db/2") == "rediss://user:***@db/2"
    assert _redact("redis://:s3cret@[::1]:6380/1") == "redis://:***@[::1]:6380/1"
    assert _redact(REDIS_URL) == REDIS_URL
