"""The Redis store at fleet scale on real redis-servers: the valkey client, a full client pool
(contention, not an outage), refusals that cost no round trip, coalesced rate-limit headers,
keys that live while used, failover (backoff, READONLY) and Sentinel."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import valkey
import valkey.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    Outcome,
    StateChange,
)
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests.polling import until
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

TRIP = CircuitBreakerConfig(failure_threshold=1, reset_timeout=60)


class CountingConnection(redis.Connection):
    """Counts the commands sent (each is one round trip here: no pipelines)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def _counting_client(port: int) -> redis.Redis:
    pool = redis.ConnectionPool(port=port, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def _trip(store: RedisStateStore, name: str) -> None:
    breaker = CircuitBreaker(name, TRIP, store=store)
    breaker.record(breaker.admit(), Outcome.FAILURE)


# -- every client ------------------------------------------------------------------------


def test_valkey_client_shares_the_circuit(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A valkey.Valkey store and a redis-py store see one circuit."""
    theirs = valkey.Valkey(port=redis_server.port, socket_timeout=1)
    _trip(RedisStateStore(theirs), "valkey")
    with pytest.raises(CircuitOpenError):
        CircuitBreaker("valkey", TRIP, store=RedisStateStore(redis_client)).admit()
    theirs.close()


async def test_asyncio_valkey_client(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """A valkey.asyncio.Valkey store trips the shared circuit."""
    import valkey.asyncio

    theirs = valkey.asyncio.Valkey(port=redis_server.port, socket_timeout=1)
    breaker = CircuitBreaker("avalkey", TRIP, store=RedisStateStore(theirs))
    await breaker.arecord(await breaker.aadmit(), Outcome.FAILURE)
    with pytest.raises(CircuitOpenError):
        CircuitBreaker("avalkey", TRIP, store=RedisStateStore(redis_client)).admit()
    await theirs.aclose()


@pytest.mark.parametrize("scheme", ["redis", "valkey"])
def test_a_stopped_server_never_fails_a_call(closed_port: int, scheme: str) -> None:
    """Whichever client package, a Redis that refuses connections means "store unavailable":
    calls are decided locally, none fails."""
    store = RedisStateStore.from_url(f"{scheme}://127.0.0.1:{closed_port}/0")
    breaker = CircuitBreaker(f"down-{scheme}", TRIP, store=store)
    breaker.record(breaker.admit(), Outcome.SUCCESS)
    assert not store.available


def test_from_url_builds_safe_clients(redis_server: RedisServer) -> None:
    """from_url: 0.1 s timeouts, no client retries, a blocking pool; valkey:// through valkey."""
    store = RedisStateStore.from_url(redis_server.url)
    pool = store.client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.connection_kwargs["socket_timeout"] == 0.1
    assert pool.timeout == 0.1
    other = RedisStateStore.from_url(f"valkey://127.0.0.1:{redis_server.port}/0")
    assert isinstance(other.client, valkey.Valkey)
    assert isinstance(other.client.connection_pool, valkey.BlockingConnectionPool)
    store.client.close()
    other.client.close()


def test_unknown_clients_are_refused() -> None:
    """Anything but a redis-py or valkey client is a TypeError naming what is accepted."""
    with pytest.raises(TypeError, match="RedisCluster"):
        RedisStateStore(object())


# -- a full pool is contention, not an outage -------------------------------------------


def _small_pool(family: str, port: int) -> Any:
    """A client of ``family`` whose pool holds 4 connections and that does not retry."""
    if family == "valkey":  # valkey says "Too many connections" with a plain ConnectionError
        return valkey.Valkey(connection_pool=valkey.ConnectionPool(port=port, max_connections=4))
    pool = redis.ConnectionPool(port=port, max_connections=4)  # MaxConnectionsError beyond
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def _small_async_pool(family: str, port: int) -> Any:
    """The same with an asyncio client."""
    if family == "valkey":
        return valkey.asyncio.Valkey(
            connection_pool=valkey.asyncio.ConnectionPool(port=port, max_connections=4)
        )
    return redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool(port=port, max_connections=4)
    )


@pytest.mark.parametrize("family", ["redis", "valkey"])
def test_two_hundred_threads_behind_a_small_pool_see_the_shared_open_circuit(
    redis_server: RedisServer, redis_client: redis.Redis, family: str
) -> None:
    """200 threads through one store whose pool holds 4 connections (redis-py raises
    MaxConnectionsError beyond, valkey a plain ConnectionError): every thread is refused by
    the circuit OPEN in Redis, the store never goes local, and no listener hears of an
    unavailable store."""
    _trip(RedisStateStore(redis_client, prefix=family), "crowd")
    client = _small_pool(family, redis_server.port)
    store = RedisStateStore(client, prefix=family)
    breaker = CircuitBreaker("crowd", TRIP, store=store)
    events: list[StateChange] = []
    breaker.add_listener(events.append)
    start = threading.Barrier(200)
    outcomes: list[str] = []

    def caller() -> None:
        start.wait()
        try:
            breaker.admit()
            outcomes.append("admitted")
        except CircuitOpenError:
            outcomes.append("refused")

    threads = [threading.Thread(target=caller) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["refused"] * 200
    assert store.available
    assert events == []
    client.connection_pool.disconnect()


@pytest.mark.parametrize("family", ["redis", "valkey"])
async def test_two_hundred_tasks_behind_a_small_pool_see_the_shared_open_circuit(
    redis_server: RedisServer, redis_client: redis.Redis, family: str
) -> None:
    """The same with 200 asyncio tasks and an asyncio client of 4 connections."""
    _trip(RedisStateStore(redis_client, prefix=family), "tasks")
    client = _small_async_pool(family, redis_server.port)
    store = RedisStateStore(client, prefix=family)
    breaker = CircuitBreaker("tasks", TRIP, store=store)
    events: list[StateChange] = []
    breaker.add_listener(events.append)

    async def caller() -> str:
        try:
            await breaker.aadmit()
        except CircuitOpenError:
            return "refused"
        return "admitted"

    outcomes = await asyncio.gather(*(caller() for _ in range(200)))
    assert outcomes == ["refused"] * 200
    assert store.available
    assert events == []
    await client.aclose(close_connection_pool=True)


_GREENLETS = """
from gevent import monkey

monkey.patch_all()
import sys

import gevent
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from llm_circuit_breaker.storage import RedisStateStore

pool = redis.ConnectionPool(port=int(sys.argv[1]), max_connections=4)
store = RedisStateStore(redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0)))
breaker = CircuitBreaker("greenlets", CircuitBreakerConfig(failure_threshold=1), store=store)
events = []
breaker.add_listener(events.append)


def caller():
    try:
        breaker.admit()
    except CircuitOpenError:
        return "refused"
    return "admitted"


jobs = [gevent.spawn(caller) for _ in range(200)]
gevent.joinall(jobs)
print([job.value for job in jobs].count("refused"), store.available, len(events))
"""


def test_two_hundred_greenlets_behind_a_small_pool_see_the_shared_open_circuit(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The same with 200 gevent greenlets (monkey-patched, in a process of their own)."""
    pytest.importorskip("gevent")
    _trip(RedisStateStore(redis_client), "greenlets")
    done = subprocess.run(
        [sys.executable, "-c", _GREENLETS, str(redis_server.port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parent.parent)},
    )
    assert done.stdout.split() == ["200", "True", "0"], done.stderr


# -- an outage does not become a Redis storm ----------------------------------------------


def test_open_circuit_refusals_cost_no_round_trip(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """With near_cache, once the store said OPEN until t, refusals until t ask nobody; a
    reset elsewhere is published and ends that at once."""
    store = RedisStateStore(_counting_client(redis_server.port), near_cache=0.05)
    breaker = CircuitBreaker("storm", TRIP, store=store)
    breaker.record_success(breaker.admit())
    _trip(RedisStateStore(redis_client), "storm")
    until(lambda: breaker.try_admit() < 0)  # the notice, or the near-cache's end
    CountingConnection.sent = 0
    for _ in range(1000):
        with pytest.raises(CircuitOpenError) as refused:
            breaker.admit()
    assert CountingConnection.sent == 0
    assert 0 < refused.value.retry_after <= 60  # type: ignore[operator]
    CircuitBreaker("storm", TRIP, store=RedisStateStore(redis_client)).reset()
    until(lambda: breaker.try_admit() >= 0)
    store.close()


async def test_open_circuit_refusals_cost_no_round_trip_asyncio(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """An asyncio store with near_cache caches the refusal too (until t, and a second at
    most: no notice would tell it of a reset elsewhere)."""
    client = redis.asyncio.Redis(port=redis_server.port)
    store = RedisStateStore(client, near_cache=0.05)
    _trip(RedisStateStore(redis_client), "astorm")
    breaker = CircuitBreaker("astorm", TRIP, store=store)
    with pytest.raises(CircuitOpenError):
        await breaker.aadmit()
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    started = time.monotonic()
    for _ in range(500):
        with pytest.raises(CircuitOpenError):
            await breaker.aadmit()
    seconds = time.monotonic() - started
    after = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert after - before <= seconds  # no notices here: a refusal is asked again each second
    await client.aclose()


def test_without_near_cache_every_refusal_asks(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The default (near_cache=0) asks Redis for every call, as before: a reset anywhere is
    seen by the very next call."""
    store = RedisStateStore(_counting_client(redis_server.port))
    _trip(RedisStateStore(redis_client), "asks")
    breaker = CircuitBreaker("asks", TRIP, store=store)
    CountingConnection.sent = 0
    for _ in range(10):
        assert breaker.try_admit() < 0
    assert CountingConnection.sent == 10


def _headers(remaining: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": "60s",
    }


@pytest.mark.parametrize(("near_cache", "most"), [(0.0, 1.1), (0.05, 0.1)])
def test_rate_limit_headers_are_coalesced(
    redis_server: RedisServer, near_cache: float, most: float
) -> None:
    """A provider sending its rate-limit headers on every response, each agreeing with the
    shared model, 200 calls/s on this process's clock: 1 round trip per answered call plus
    the news (<= 1.1 with near_cache=0, <= 0.1 with 0.05)."""
    store = RedisStateStore(_counting_client(redis_server.port), near_cache=near_cache)
    clock = FakeClock()  # the near-cache and the leases run on it, whatever the machine's pace
    name = f"headers-{near_cache}"
    breaker = CircuitBreaker(name, CircuitBreakerConfig(), store=store, clock=clock)
    breaker.record_success(breaker.admit())
    CountingConnection.sent = 0
    calls = 500
    for index in range(calls):
        clock.advance(1 / 200)
        permit = breaker.admit()
        breaker.observe(_headers(9999 - index))
        breaker.record_success(permit)
    assert CountingConnection.sent <= most * calls
    store.close()


def test_headers_that_say_less_remains_ride_on_the_next_store_call(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Headers reporting fewer requests left than the shared model holds (someone else uses
    the quota) cost no round trip of their own: they ride on the next call to Redis, which
    applies them before it admits."""
    store = RedisStateStore(_counting_client(redis_server.port))
    breaker = CircuitBreaker("news", CircuitBreakerConfig(), store=store)
    other = CircuitBreaker("news", CircuitBreakerConfig(), store=RedisStateStore(redis_client))
    breaker.observe(_headers(9000))
    breaker.record_success(breaker.admit())
    CountingConnection.sent = 0
    breaker.observe(_headers(9000))
    breaker.observe(_headers(5000))
    assert CountingConnection.sent == 0  # nothing sent yet
    assert other.throttle["requests_remaining"] >= 8999  # type: ignore[operator]
    breaker.record_success(breaker.admit())
    assert CountingConnection.sent == 1  # the admission carried them
    assert other.throttle["requests_remaining"] <= 5000  # type: ignore[operator]


def test_headers_saying_a_bucket_is_used_up_are_sent_at_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Remaining 0: every process must slow down now, so the headers go at once."""
    store = RedisStateStore(_counting_client(redis_server.port))
    breaker = CircuitBreaker("used-up", CircuitBreakerConfig(), store=store)
    other = CircuitBreaker("used-up", CircuitBreakerConfig(), store=RedisStateStore(redis_client))
    breaker.record_success(breaker.admit())
    CountingConnection.sent = 0
    breaker.observe(_headers(5000))  # news, waiting for the next call
    breaker.observe(_headers(0))
    assert CountingConnection.sent == 1
    assert other.throttle["requests_remaining"] == 0
    breaker.observe(_headers(0))  # no news: the shared model says as much
    assert CountingConnection.sent == 1


# -- keys live while used ------------------------------------------------------------------


def test_admissions_refresh_the_ttl_at_most_every_half_ttl(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A busy success-only circuit does not expire: an admission resets the TTL once ttl/2
    has passed since it was last set (and not before: no write per call)."""
    now = [1_000_000.0]
    store = RedisStateStore(redis_client, ttl=100, clock=lambda: now[0])
    breaker = CircuitBreaker("busy", CircuitBreakerConfig(), store=store)
    key = store.keys("busy")[0]
    breaker.record_success(breaker.admit())
    redis_client.expire(key, 10)
    now[0] += 40
    breaker.record_success(breaker.admit())
    assert redis_client.ttl(key) <= 10
    now[0] += 20
    breaker.record_success(breaker.admit())
    assert redis_client.ttl(key) > 50


def test_a_forced_open_circuit_never_expires_while_forced(redis_client: redis.Redis) -> None:
    """force_open() removes the TTL; force_closed() puts it back."""
    store = RedisStateStore(redis_client, ttl=100)
    breaker = CircuitBreaker("held", CircuitBreakerConfig(), store=store)
    breaker.force_open()
    assert redis_client.ttl(store.keys("held")[0]) == -1
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    assert redis_client.ttl(store.keys("held")[0]) == -1
    breaker.force_closed()
    assert 0 < redis_client.ttl(store.keys("held")[0]) <= 100


def test_names_and_prefixes_with_braces_round_trip(redis_client: redis.Redis) -> None:
    """Names and prefixes holding %, { or } are listed back as they are."""
    store = RedisStateStore(redis_client, prefix="a{b}%")
    names = ["}x", "{y}", "50%", "%7B", "plain"]
    for name in names:
        CircuitBreaker(name, CircuitBreakerConfig(), store=store).admit()
    assert sorted(store.circuits()) == sorted(names)
    assert RedisStateStore(redis_client, prefix="a%7Bb%7D%25").circuits() == {}


# -- failover -----------------------------------------------------------------------------


def test_redis_is_tried_again_after_half_a_second_then_less_often(closed_port: int) -> None:
    """After a failure the store leaves Redis alone 0.5 s, then 1 s, 2 s ... up to
    retry_interval while it stays down."""
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{closed_port}/0", retry_interval=3.0)
    breaker = CircuitBreaker("backoff", TRIP, store=store)
    pauses = []
    for _ in range(4):
        breaker.try_admit()
        pauses.append(store._pause)
        store._down_until = 0.5  # as if the pause were over (monotonic time is far past it)
    assert pauses == [0.5, 1.0, 2.0, 3.0]


@pytest.fixture
def replica(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A read-only replica of the session's redis-server."""
    if redis_server.process is None:
        redis_server.start()
    server = RedisServer("--replicaof", "127.0.0.1", str(redis_server.port))
    server.start()
    yield server
    server.stop()


def test_a_replica_is_an_unavailable_store_and_its_connections_go(replica: RedisServer) -> None:
    """Writes answered READONLY (a demoted primary) make the store unavailable and drop its
    connections at once, so that a Sentinel client asks for the new primary."""
    client = replica.client()
    store = RedisStateStore(client)
    breaker = CircuitBreaker("readonly", TRIP, store=store)
    breaker.record_success(breaker.admit())  # decided locally, never failed
    assert not store.available
    assert all(c._sock is None for c in client.connection_pool._available_connections)  # type: ignore[attr-defined]
    client.close()


def test_a_demoted_primary_is_left_and_a_promoted_one_rejoined(
    redis_server: RedisServer,
) -> None:
    """A primary that becomes a replica (READONLY) then primary again: the store decides
    locally meanwhile and follows Redis again half a second after it takes writes."""
    primary = RedisServer()
    primary.start()
    other = RedisServer()
    other.start()
    try:
        admin = primary.client()
        store = RedisStateStore(primary.client())
        breaker = CircuitBreaker("failover", TRIP, store=store)
        breaker.record_success(breaker.admit())
        admin.replicaof("127.0.0.1", other.port)
        until(lambda: breaker.try_admit() >= 0 and not store.available)
        admin.replicaof("NO", "ONE")
        until(lambda: breaker.try_admit() >= 0 and store.available)
        _trip(RedisStateStore(admin), "failover")
        until(lambda: breaker.try_admit() < 0)
        admin.close()
    finally:
        primary.stop()
        other.stop()


def _sentinel(primary: RedisServer, tmp_path: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    """A Sentinel (redis-server --sentinel) watching ``primary`` as service "svc"."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nprotected-mode no\n"
        f"sentinel monitor svc 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds svc 1000\nsentinel failover-timeout svc 3000\n"
    )
    process = subprocess.Popen(
        [primary.binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


def test_from_sentinel_finds_the_primary(redis_server: RedisServer, tmp_path: pathlib.Path) -> None:
    """RedisStateStore.from_sentinel asks a Sentinel for the service's primary."""
    if redis_server.process is None:
        redis_server.start()
    process, port = _sentinel(redis_server, tmp_path)
    probe = redis.Redis(port=port, socket_timeout=1)
    try:
        until(lambda: _answers(probe))
        store = RedisStateStore.from_sentinel([("127.0.0.1", port)], "svc", prefix="sentinel")
        _trip(store, "watched")
        assert store.available
        plain = RedisStateStore(redis_server.client(), prefix="sentinel")
        with pytest.raises(CircuitOpenError):
            CircuitBreaker("watched", TRIP, store=plain).admit()
        store.client.close()
    finally:
        probe.close()
        process.terminate()
        process.wait(10)


@pytest.mark.slow
def test_after_a_sentinel_failover_the_store_follows_the_new_primary(
    tmp_path: pathlib.Path,
) -> None:
    """SENTINEL FAILOVER with min-replicas-to-write on the primary: the demoted primary
    refuses writes (NOREPLICAS, then READONLY), the store drops its connections and its next
    one reaches the new primary, where the circuit trips."""
    primary = RedisServer("--min-replicas-to-write", "1", "--min-replicas-max-lag", "2")
    primary.start()
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    process, port = _sentinel(primary, tmp_path)
    watcher = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
    promoted = redis.Redis(port=replica.port, socket_timeout=1)
    try:
        until(lambda: _knows_replica(watcher, replica.port), patience=60)
        store = RedisStateStore.from_sentinel([("127.0.0.1", port)], "svc", prefix="failover")
        breaker = CircuitBreaker("moved", TRIP, store=store)
        breaker.record_success(breaker.admit())
        until(lambda: _failed_over(watcher), patience=60)
        until(lambda: int(watcher.sentinel_get_master_addr_by_name("svc")[1]) == replica.port)

        def tripped_on_the_new_primary() -> bool:
            permit = breaker.try_admit()
            if permit >= 0:
                breaker.record(permit, Outcome.FAILURE)
            return promoted.hget(store.keys("moved")[0], "state") == b"OPEN"

        until(tripped_on_the_new_primary, patience=30)
        store.client.close()
    finally:
        watcher.close()
        promoted.close()
        process.terminate()
        process.wait(10)
        replica.stop()
        primary.stop()


def _failed_over(sentinel: redis.Redis) -> bool:
    """Ask for a failover; False while the Sentinel finds no replica fit to promote yet."""
    try:
        sentinel.execute_command("SENTINEL", "FAILOVER", "svc")
    except redis.ResponseError as exc:
        if "NOGOODSLAVE" in str(exc):
            time.sleep(0.2)
            return False
        raise
    return True


def _knows_replica(sentinel: redis.Redis, port: int) -> bool:
    try:
        replicas = sentinel.sentinel_slaves("svc")
    except redis.ConnectionError:
        return False
    return any(r["port"] == port and not r.get("is_sdown") for r in replicas)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


async def test_asyncio_store_rejoins_after_backoff() -> None:
    """An asyncio store whose Redis went away follows it again once it is back."""
    server = RedisServer()
    server.start()
    client = redis.asyncio.Redis(port=server.port, socket_timeout=0.5, retry=None)
    store = RedisStateStore(client)
    breaker = CircuitBreaker("arejoin", TRIP, store=store)
    try:
        server.stop()
        await breaker.arecord_success(await breaker.aadmit())
        assert not store.available
        server.start()

        async def rejoined() -> bool:
            await breaker.arecord_success(await breaker.aadmit())
            return store._down_until == 0.0

        deadline = time.monotonic() + 10
        while not await rejoined():
            assert time.monotonic() < deadline, "the store never followed Redis again"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
        server.stop()
