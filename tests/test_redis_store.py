"""RedisStateStore on a real redis-server: round trips, processes, outages, bad data."""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LLMCircuitBreaker,
    Outcome,
    StateChange,
    circuit_breaker,
)
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests import redis_workers
from tests.redis_server import RedisServer


class CountingConnection(redis.Connection):
    """Counts the commands sent (each is one round trip here: no pipelines)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def test_success_path_costs_one_round_trip(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Without the near-cache, a successful guarded call in CLOSED is one EVALSHA: admit, and
    no report."""
    pool = redis.ConnectionPool(port=redis_server.port, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
    store_registry = BreakerRegistry(store=RedisStateStore(client, near_cache=0.0))

    @circuit_breaker("counted", registry=store_registry)
    def call() -> str:
        return "ok"

    call()  # loads the script (NOSCRIPT -> SCRIPT LOAD) once
    CountingConnection.sent = 0
    for _ in range(100):
        call()
    assert CountingConnection.sent == 100
    assert store_registry.get("counted").stats.successes == 101


def test_the_near_cache_admits_closed_calls_without_a_round_trip(
    redis_server: RedisServer, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """While the shared circuit was seen CLOSED and clean less than near_cache ago, calls need
    no round trip; one per near_cache after that. A failure is reported at once."""
    pool = redis.ConnectionPool(port=redis_server.port, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
    store_registry = BreakerRegistry(store=RedisStateStore(client, near_cache=0.05), clock=clock)
    outcomes: list[BaseException | None] = []

    @circuit_breaker("cached", registry=store_registry, failure_threshold=2)
    def call() -> str:
        if outcomes:
            raise outcomes.pop()
        return "ok"

    call()
    CountingConnection.sent = 0
    for _ in range(100):
        call()
    assert CountingConnection.sent == 0
    clock.advance(0.05)
    for _ in range(100):
        call()
    assert CountingConnection.sent == 1
    outcomes.append(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        call()
    assert CountingConnection.sent == 2  # reported at once
    call()  # the failure made the circuit unclean: this admission asks Redis
    assert CountingConnection.sent == 4  # admission, and the success that clears the count
    assert store_registry.get("cached").failure_count == 0


def test_by_default_a_trip_elsewhere_is_seen_at_once(
    redis_server: RedisServer, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Without a near-cache (the default) every admission asks Redis: one circuit, no lag."""
    config = CircuitBreakerConfig(failure_threshold=1)
    a = CircuitBreaker("exact", config, clock=clock, store=RedisStateStore(redis_server.client()))
    b = CircuitBreaker("exact", config, clock=clock, store=RedisStateStore(redis_server.client()))
    b.record_success(b.admit())
    a.record(a.admit(), Outcome.FAILURE)
    with pytest.raises(CircuitOpenError):
        b.admit()


def test_a_trip_elsewhere_is_seen_within_the_near_cache(
    redis_server: RedisServer, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Process A trips the circuit; process B, serving CLOSED from its near-cache and not
    told (it does not listen), refuses from its first admission after near_cache seconds."""
    config = CircuitBreakerConfig(failure_threshold=1)
    stores = [RedisStateStore(redis_server.client(), near_cache=0.05) for _ in range(2)]
    stores[1].close()
    a = CircuitBreaker("fleet", config, clock=clock, store=stores[0])
    b = CircuitBreaker("fleet", config, clock=clock, store=stores[1])
    b.record_success(b.admit())  # B has seen it CLOSED and clean
    a.record(a.admit(), Outcome.FAILURE)
    assert a.state is CircuitState.OPEN
    b.record_success(b.admit())  # within near_cache: B still admits locally
    clock.advance(0.05)
    with pytest.raises(CircuitOpenError):
        b.admit()


def test_keys_are_namespaced_and_expire(redis_client: redis.Redis) -> None:
    """Keys live under prefix:{name} and carry a TTL."""
    breaker = CircuitBreaker(
        "openai", store=RedisStateStore(redis_client, prefix="team-a", ttl=3600)
    )
    breaker.record(breaker.admit(), Outcome.FAILURE)
    keys = {k.decode() for k in redis_client.keys("*")}
    assert "team-a:{openai}" in keys
    assert 0 < redis_client.ttl("team-a:{openai}") <= 3600


def test_script_reloaded_after_flush(redis_client: redis.Redis) -> None:
    """After SCRIPT FLUSH (a restarted or failed-over server) EVALSHA falls back to loading it."""
    breaker = CircuitBreaker("flush", store=RedisStateStore(redis_client))
    breaker.record_success(breaker.admit())
    redis_client.script_flush()
    breaker.record(breaker.admit(), Outcome.FAILURE)
    assert breaker.failure_count == 1


def test_processes_share_one_circuit(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """One process trips the circuit; others fail fast without calling; then 4x4 racers get one probe."""
    context = multiprocessing.get_context("spawn")
    redis_client.set(redis_workers.CLOCK_KEY, "1000.0")
    with context.Pool(4) as pool:
        assert pool.apply(redis_workers.trip, (redis_server.port,)) == "OPEN"
        followers = pool.starmap(redis_workers.follow, [(redis_server.port,)] * 3)
        assert followers == [(0, 5)] * 3
        later = 1000.0 + redis_workers.CONFIG.reset_timeout + 0.5
        redis_client.set(redis_workers.CLOCK_KEY, repr(later))
        admitted = pool.starmap(redis_workers.race, [(redis_server.port, 4)] * 4)
    assert sum(admitted) == 1


def test_redis_outage_never_fails_a_call(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Kill Redis mid-run: calls go on (local state), one WARNING, listener events; back after restart."""
    if redis_server.process is None:
        redis_server.start()
    store = RedisStateStore(redis_server.client(), retry_interval=0.2, near_cache=0.0)
    events: list[StateChange] = []
    config = CircuitBreakerConfig(failure_threshold=3)

    @circuit_breaker(
        "outage",
        registry=BreakerRegistry(store=store),
        on_state_change=events.append,
        failure_threshold=3,
    )
    def call() -> str:
        return "ok"

    with caplog.at_level(logging.WARNING, logger="llm_circuit_breaker"):
        assert call() == "ok"
        redis_server.stop()
        started = time.monotonic()
        results = [call() for _ in range(200)]
        elapsed = time.monotonic() - started
        assert results == ["ok"] * 200
        assert elapsed < 3.0  # a failed command is not retried on every call
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1
        assert any("deciding locally" in e.reason for e in events)
        redis_server.start()
        time.sleep(0.25)
        assert call() == "ok"
    assert any("reachable again" in e.reason for e in events)
    # Rejoined: a circuit tripped by another breaker is now seen by this one.
    other = CircuitBreaker("outage", config, store=RedisStateStore(redis_server.client()))
    for _ in range(3):
        other.record(other.admit(), Outcome.FAILURE)
    with pytest.raises(CircuitOpenError):
        call()


def test_not_a_redis_client() -> None:
    """Anything but a redis client is a TypeError at construction."""
    with pytest.raises(TypeError, match="redis.Redis"):
        RedisStateStore(object())


def test_corrupt_data_is_treated_as_closed(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Foreign or corrupt data under our keys: a CLOSED circuit and a logged warning."""
    store = RedisStateStore(redis_client, prefix="c")
    redis_client.set("c:{bad}", "not a hash")
    redis_client.hset("c:{worse}", mapping={"state": "EXPLODED", "gen": "x"})
    for name in ("bad", "worse"):
        breaker = CircuitBreaker(name, store=store)
        breaker.record_success(breaker.admit())
        assert breaker.state is CircuitState.CLOSED
    assert sum("corrupt or foreign" in r.getMessage() for r in caplog.records) == 2


def test_facade_and_registry_share_through_redis(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """A registry with a store hands it to every breaker, facades included."""
    registry = BreakerRegistry(store=RedisStateStore(redis_client, clock=clock))
    cb = LLMCircuitBreaker(
        name="provider", registry=registry, circuit_breaker={"failure_threshold": 1}
    )
    cb.breaker.record(cb.breaker.admit(), Outcome.FAILURE)
    assert registry.snapshot()["provider"]["state"] == "OPEN"
    assert (
        CircuitBreaker("provider", store=RedisStateStore(redis_client, clock=clock)).state
        is CircuitState.OPEN
    )


async def test_asyncio_store_guards_coroutines_only(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """An asyncio store guards coroutine functions; a sync function is refused at decoration."""
    store = RedisStateStore.from_url(redis_server.url, asyncio=True, timeout=2)
    client = store.client
    registry = BreakerRegistry(store=store)

    @circuit_breaker("aio", registry=registry, failure_threshold=1)
    async def fail() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        await fail()
    with pytest.raises(CircuitOpenError):
        await fail()
    assert (await fail.breaker.asnapshot())["state"] == "OPEN"  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="asyncio store"):
        circuit_breaker("aio", registry=registry)(lambda: None)
    await fail.breaker.areset()  # type: ignore[attr-defined]
    assert fail.breaker.state is CircuitState.CLOSED
    await client.aclose()


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "CLOSED", "gen": "-1", "seq": "0", "fc": "0", "sc": "0"},
        {"state": "CLOSED", "gen": "1e300", "seq": "1e300", "fc": "0", "sc": "0"},
        {"state": "OPEN", "gen": "1", "seq": "1", "fc": "5", "sc": "0", "open_until": "nan"},
        {"state": "OPEN", "gen": "1", "seq": "1", "fc": "5", "sc": "0", "open_until": "inf"},
        {"state": "OPEN", "gen": "1", "seq": "1", "fc": "5", "sc": "0", "open_until": "1e18"},
    ],
    ids=["gen=-1", "gen=1e300", "open_until=nan", "open_until=inf", "open_until=1e18"],
)
def test_garbage_fields_are_repaired(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture, fields: dict[str, str]
) -> None:
    """Garbage in a breaker's fields never refuses calls forever: repaired to CLOSED, warned."""
    redis_client.hset("g:{provider}", mapping={**fields, "held": "0"})
    breaker = CircuitBreaker("provider", store=RedisStateStore(redis_client, prefix="g"))
    breaker.record_success(breaker.admit())
    assert breaker.state is CircuitState.CLOSED
    assert any("corrupt or foreign" in r.getMessage() for r in caplog.records)


def test_a_lease_stamped_in_the_future_does_not_block_probes(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """A HALF_OPEN lease scored 1e18 is garbage: the next probe is admitted."""
    store = RedisStateStore(redis_client, prefix="l", clock=clock)
    breaker = CircuitBreaker(
        "p", CircuitBreakerConfig(failure_threshold=1, reset_timeout=1.0), store=store
    )
    breaker.record(breaker.admit(), Outcome.FAILURE)
    clock.advance(2.0)
    assert breaker.state is CircuitState.HALF_OPEN
    redis_client.zadd("l:{p}:inflight", {"999999": 1e18})
    assert breaker.admit() >= 0


def test_refused_writes_keep_the_store_unavailable(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that answers reads but refuses writes (full) is unavailable: one warning, no
    flapping between shared and local, and the dead provider gets only the local threshold."""
    store = RedisStateStore(redis_client, prefix="oom", retry_interval=0.01)
    events: list[StateChange] = []
    breaker = CircuitBreaker("dead", CircuitBreakerConfig(failure_threshold=5), store=store)
    breaker.add_listener(events.append)
    breaker.record_success(breaker.admit())  # the circuit's key exists before Redis fills up
    calls = 0

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("provider down")

    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", "1")
    try:
        for _ in range(100):
            try:
                call()
            except (ConnectionError, CircuitOpenError):
                pass
            time.sleep(0.005)  # several retry intervals pass: each retry must write, and fails
    finally:
        redis_client.config_set("maxmemory", "0")
    warnings = [r for r in caplog.records if "Redis state store" in r.getMessage()]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    assert [e.reason for e in events] == [
        "shared store unavailable: deciding locally",
        "5 consecutive failures",
    ]
    assert calls <= 6  # one shared attempt whose report failed, then the local threshold


def test_an_admission_into_a_quiet_circuit_runs_no_type_check(
    redis_client: redis.Redis,
) -> None:
    """The lean script: admitting into a plain CLOSED circuit reads the hash, nothing else
    (the TYPE checks run only on the paths that touch the probe and window keys)."""
    breaker = CircuitBreaker("lean", store=RedisStateStore(redis_client, near_cache=0.0))
    breaker.record_success(breaker.admit())
    redis_client.config_resetstat()
    for _ in range(20):
        breaker.record_success(breaker.admit())
    stats = redis_client.info("commandstats")
    assert "cmdstat_type" not in stats
    assert stats["cmdstat_hmget"]["calls"] == 20


def test_foreign_keys_are_repaired_on_the_paths_that_use_them(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """A string where the probe leases live: the first probe admission replaces it."""
    store = RedisStateStore(redis_client, near_cache=0.0, clock=clock)
    config = CircuitBreakerConfig(failure_threshold=1, reset_timeout=1.0)
    breaker = CircuitBreaker("repair", config, store=store, clock=clock)
    breaker.record(breaker.admit(), Outcome.FAILURE)
    redis_client.set(store.keys("repair")[1], "not a sorted set")
    clock.advance(1.0)  # the reset timeout is over
    permit = breaker.admit()  # a probe: its lease goes where the string was
    assert redis_client.type(store.keys("repair")[1]) == b"zset"
    breaker.record_success(permit)
