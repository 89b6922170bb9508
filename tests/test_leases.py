"""Near-caching processes on Redis: throttle slots leased in batches (a process reserves the
slots of the next ``near_cache`` seconds that its recent rate needs, hands them out without a
round trip, and never lets the fleet have more than the bucket), and changes published to
them (a trip or a pause elsewhere is seen at once; a lost notice costs only that speed)."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, Outcome, ThrottledError
from llm_circuit_breaker._core.throttle import Wait
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests.polling import until
from tests.redis_server import RedisServer

# One request every 10 s, a burst of 6.
SLOW = CircuitBreakerConfig(requests_per_minute=6, throttle_max_wait=600.0)


def _store(client: redis.Redis, clock: FakeClock, near_cache: float) -> RedisStateStore:
    return RedisStateStore(client, clock=clock, near_cache=near_cache)


def test_a_lease_takes_the_slots_within_its_horizon(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """The script leases the rest of the burst, then the slots due within ``near_cache``
    (25 s: at 10 and 20 s), and not one more; another process gets the slot after them."""
    store = _store(redis_client, clock, near_cache=25.0)
    admitted = store.admit("p", SLOW, 0.0, 10)
    assert (admitted.permit >= 0, admitted.wait) == (True, 0.0)
    assert admitted.lease == (0.0, 0.0, 0.0, 0.0, 0.0, 10.0, 20.0)
    other = _store(redis_client, clock, near_cache=25.0).admit("p", SLOW, 0.0)
    assert other.wait == pytest.approx(30.0)
    assert other.lease == ()


def test_a_lease_that_lapses_is_back_in_the_bucket(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """A process that dies holding a lease gives its slots back as their times pass: 60 s
    later the bucket has refilled as if they had been used, no more and no less."""
    dead = _store(redis_client, clock, near_cache=25.0)
    assert len(dead.admit("p", SLOW, 0.0, 10).lease) == 7  # then the process dies
    alive = _store(redis_client, clock, near_cache=25.0)
    assert alive.admit("p", SLOW, 0.0).wait == pytest.approx(30.0)
    clock.advance(60.0)
    waits = [alive.admit("p", SLOW, 0.0).wait for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 10.0, 20.0])


def test_unused_slots_are_given_back_with_the_next_admission(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """A process that leased 7 slots and used none gives them back: its next admission, and
    another process's, find them free again."""
    store = _store(redis_client, clock, near_cache=25.0)
    assert len(store.admit("p", SLOW, 0.0, 10).lease) == 7
    again = store.admit("p", SLOW, 0.0, 0, 7, 0.0)
    assert again.wait == 0.0
    other = _store(redis_client, clock, near_cache=25.0).admit("p", SLOW, 0.0)
    assert other.wait == 0.0


def test_a_lapsed_lease_goes_back_from_the_link(
    redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a breaker: a leased slot not handed out before the lease ran out goes back
    with the next admission."""
    store = _store(redis_client, clock, 25.0)
    asked: list[tuple[int, int]] = []
    admit = store.admit

    def recording(*args: Any, **riders: Any) -> Any:
        lease, unused = (*args[3:5], 0, 0)[:2]  # nothing beyond the tokens: nothing asked
        asked.append((lease, unused))
        return admit(*args, **riders)

    monkeypatch.setattr(store, "admit", recording)
    breaker = CircuitBreaker("lapse", SLOW, clock=clock, store=store)
    breaker.record_success(breaker.admit())
    breaker.record_success(breaker.admit())  # leases one slot beside its own
    clock.advance(25.0)  # the lease ran out unused
    breaker.record_success(breaker.admit())
    assert asked == [(0, 0), (1, 0), (2, 1)]


def test_no_lease_while_paused_or_without_a_near_cache(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    eager = _store(redis_client, clock, near_cache=25.0)
    assert eager.admit("p", SLOW, 0.0, 10).lease
    assert _store(redis_client, clock, near_cache=0.0).admit("q", SLOW, 0.0, 10).lease == ()
    limited = eager.admit("r", SLOW, 0.0)
    eager.record("r", SLOW, limited.permit, Outcome.THROTTLED, None, "429", 5.0)
    clock.advance(6.0)  # the pause is over, but the throttle was just rate limited
    assert eager.admit("r", SLOW, 0.0, 10).lease == ()


def test_leased_admissions_need_no_round_trip(redis_client: redis.Redis, clock: FakeClock) -> None:
    """A busy process under a generous quota: 200 admissions, a few script calls."""
    config = CircuitBreakerConfig(requests_per_minute=60_000)
    breaker = CircuitBreaker("busy", config, clock=clock, store=_store(redis_client, clock, 0.05))
    redis_client.config_resetstat()
    for _ in range(200):
        breaker.record_success(breaker.admit())
    calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls <= 20  # a lease doubles with the demand it serves
    assert breaker.stats.successes == 200


def test_a_rate_limit_elsewhere_pauses_a_leasing_process_within_its_horizon(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Process A holds a lease; B draws a 429. A's lease is spent for at most ``near_cache``
    seconds, then A waits out the pause like everyone."""
    config = CircuitBreakerConfig(requests_per_minute=60_000, throttle_max_wait=1.0)
    a, b = (
        CircuitBreaker("fleet", config, clock=clock, store=_store(redis_client, clock, 0.05))
        for _ in range(2)
    )
    for _ in range(20):
        a.record_success(a.admit())
    b.record(b.admit(), Outcome.THROTTLED, hint=30.0)
    clock.advance(0.05)
    with pytest.raises(ThrottledError) as caught:
        a.admit()
    retry_after = caught.value.retry_after
    assert retry_after is not None and 29.9 <= retry_after <= 31.0  # the hint, spread upwards


def test_a_rate_limit_in_the_process_drops_its_lease(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(requests_per_minute=60_000, throttle_max_wait=1.0)
    breaker = CircuitBreaker("own", config, clock=clock, store=_store(redis_client, clock, 5.0))
    for _ in range(20):
        breaker.record_success(breaker.admit())
    breaker.record(breaker.admit(), Outcome.THROTTLED, hint=30.0)
    with pytest.raises(ThrottledError):
        breaker.admit()


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([0.0, 0.0, 0.5, 3.0, 10.0])),
        min_size=1,
        max_size=60,
    )
)
def test_the_fleet_never_gets_more_than_the_bucket(
    redis_server: RedisServer, steps: list[tuple[int, float]]
) -> None:
    """Three leasing processes admitting in any order as time passes: the slots handed out
    (each at its admission time plus its wait) never exceed the bucket in any window."""
    clock = FakeClock()
    client = redis_server.client()
    client.flushall()
    holders = [
        CircuitBreaker("bound", SLOW, clock=clock, store=_store(client, clock, 25.0))
        for _ in range(3)
    ]
    slots: list[float] = []
    for who, later in steps:
        clock.advance(later)
        entry: Any = holders[who].enter()
        if isinstance(entry, Wait):
            slots.append(clock() + entry.seconds)
        elif isinstance(entry, int):
            slots.append(clock())
    client.close()
    slots.sort()
    for i, start in enumerate(slots):
        # GCRA with a burst of 6 and one slot per 10 s: in [start, start + w] at most 6 + w/10
        within = [t for t in slots[i:] if t <= start + 30.0 + 1e-6]
        assert len(within) <= 6 + 3, (start, slots)


async def test_an_asyncio_store_leases_too(
    redis_server: RedisServer, redis_client: redis.Redis, clock: FakeClock
) -> None:
    client = redis.asyncio.Redis(port=redis_server.port)
    config = CircuitBreakerConfig(requests_per_minute=60_000)
    store = RedisStateStore(client, clock=clock, near_cache=0.05)
    breaker = CircuitBreaker("async-lease", config, clock=clock, store=store)
    redis_client.config_resetstat()
    for _ in range(100):
        await breaker.arecord_success(await breaker.aadmit())
    assert redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] <= 15
    await client.aclose()
    await asyncio.sleep(0)


# -- notices: a change elsewhere reaches a near-caching process by pub/sub -------------------


def _pair(client_a: redis.Redis, client_b: redis.Redis, **fields: Any) -> list[CircuitBreaker]:
    config = CircuitBreakerConfig(failure_threshold=1, **fields)
    return [
        CircuitBreaker("noticed", config, store=RedisStateStore(client, near_cache=30.0))
        for client in (client_a, client_b)
    ]


def test_a_trip_reaches_a_near_caching_process_at_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A near-cache of 30 s, yet the other process refuses as soon as the notice arrives."""
    a, b = _pair(redis_client, redis_server.client())
    b.record_success(b.admit())  # b caches CLOSED for 30 s
    assert b.try_admit() >= 0
    a.record(a.admit(), Outcome.FAILURE)
    until(lambda: b.try_admit() < 0, patience=5.0)


def test_a_pause_reaches_a_leasing_process_at_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    a, b = _pair(
        redis_client, redis_server.client(), requests_per_minute=60_000, throttle_max_wait=1.0
    )
    for _ in range(200):
        b.record_success(b.admit())  # b now holds a lease of 57 slots
    a.record(a.admit(), Outcome.THROTTLED, hint=30.0)
    for _ in range(50):  # refused long before the lease would run out
        if b.try_admit() < 0:
            return
        time.sleep(0.1)
    pytest.fail("the pause never reached the leasing process")


def test_a_lost_notice_costs_only_speed(redis_client: redis.Redis, clock: FakeClock) -> None:
    """With no notice (the listener stopped), the near-cache still ends after its seconds."""
    config = CircuitBreakerConfig(failure_threshold=1)
    stores = [RedisStateStore(redis_client, near_cache=0.5) for _ in range(2)]
    a, b = (CircuitBreaker("lost", config, clock=clock, store=store) for store in stores)
    stores[1].close()
    b.record_success(b.admit())
    a.record(a.admit(), Outcome.FAILURE)
    assert b.try_admit() >= 0  # still cached: nobody told it
    clock.advance(0.5)
    assert b.try_admit() < 0


def test_the_listener_stops_when_nothing_follows_it(redis_client: redis.Redis) -> None:
    store = RedisStateStore(redis_client, near_cache=1.0)
    breaker = CircuitBreaker("gone", store=store)
    breaker.record_success(breaker.admit())
    notices = store._notices
    assert notices is not None and notices._worker is not None
    worker = notices._worker
    del breaker
    gc.collect()
    until(lambda: not worker.is_alive(), patience=5.0)


def test_notices_resume_after_redis_restarts(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The listener's connection dies with Redis; it subscribes again when Redis is back, and
    the changes published from then on reach the near-caching process (30 s of cache)."""
    config = CircuitBreakerConfig(failure_threshold=1)
    store = RedisStateStore(redis_server.client(), near_cache=30.0)
    b = CircuitBreaker("restart", config, store=store)
    b.record_success(b.admit())
    redis_server.stop()
    redis_server.start()
    a = CircuitBreaker("restart", config, store=RedisStateStore(redis_server.client()))
    for _ in range(100):  # each round publishes twice; the listener is back within a second
        a.force_closed()
        a.force_open()
        time.sleep(0.1)
        if b.try_admit() < 0:
            return
    pytest.fail("no notice reached the process after Redis restarted")
