"""The Redis store under hostile data and production shapes: garbage in any key of a circuit,
cancelled admissions, several event loops, forked workers, glob characters, endless pauses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
import redis
import redis.asyncio

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    Outcome,
)
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests.polling import auntil, until
from tests.redis_server import RedisServer

_RATE = CircuitBreakerConfig(
    failure_threshold=100, failure_rate_threshold=0.5, window=10.0, minimum_calls=4
)


@pytest.mark.parametrize(
    "garbage",
    [{"c": "abc"}, {"c": "1.5"}, {"f": "1e3"}, {"f": "-"}, {"oops": "x"}],
    ids=["letters", "fraction", "exponent", "dash", "foreign-field"],
)
def test_garbage_in_the_window_is_repaired(
    redis_client: redis.Redis,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    garbage: dict[str, str],
) -> None:
    """Garbage in a circuit's failure-rate window is dropped with a warning; reports keep
    reaching Redis and the window counts again from there."""
    store = RedisStateStore(redis_client, prefix="w", clock=clock)
    breaker = CircuitBreaker("p", _RATE, store=store, clock=clock)
    breaker.record_success(breaker.admit())
    clock.advance(1.0)
    bucket = int(clock() / (10.0 / 20))  # the window's current bucket (20 per window)
    fields = {f"{bucket}:{kind}" if kind in "cf" else kind: v for kind, v in garbage.items()}
    redis_client.hset(store.keys("p")[2], mapping=fields)
    for _ in range(3):
        breaker.record(breaker.admit(), Outcome.FAILURE)
    assert store.available
    assert breaker.state is CircuitState.OPEN  # 3 of 4 calls in the window failed
    assert redis_client.hget(store.keys("p")[0], "state") == b"OPEN"
    assert any("corrupt or foreign" in r.getMessage() for r in caplog.records)


def test_a_script_error_for_one_circuit_leaves_the_others_shared(
    redis_client: redis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply error that concerns one circuit's keys (here a script that cannot run on them)
    decides that call locally and leaves the store available for every other circuit."""
    store = RedisStateStore(redis_client, prefix="one", clock=clock)
    broken = CircuitBreaker("broken", store=store, clock=clock)
    healthy = CircuitBreaker("healthy", CircuitBreakerConfig(failure_threshold=1), store=store)
    original = store._script

    def failing(keys: list[str], args: list[object]) -> object:
        if keys[0] == store.keys("broken")[0]:
            raise redis.ResponseError(
                "user_script:1: attempt to perform arithmetic on a nil value script: 0, on "
                "@user_script:1."
            )
        return original(keys=keys, args=args)

    store._script = failing
    with caplog.at_level(logging.WARNING, logger="llm_circuit_breaker"):
        for _ in range(3):
            broken.record(broken.admit(), Outcome.FAILURE)
        assert store.available
        healthy.record(healthy.admit(), Outcome.FAILURE)
    assert redis_client.hget(store.keys("healthy")[0], "state") == b"OPEN"
    other = CircuitBreaker(
        "healthy", store=RedisStateStore(redis_client, prefix="one", clock=clock)
    )
    assert other.state is CircuitState.OPEN
    warned = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warned) == 1 and "unavailable" not in warned[0]


@pytest.mark.parametrize("prefix", ["team*", "team?", "team[a]", "te\\am"])
def test_a_prefix_with_glob_characters_is_matched_literally(
    redis_server: RedisServer, redis_client: redis.Redis, prefix: str
) -> None:
    """A prefix holding ``*``, ``?``, ``[`` or ``\\`` lists its own circuits only, and its
    notices hear its own circuits only (a neighbour prefix that the glob would match is not
    taken for it)."""
    config = CircuitBreakerConfig(failure_threshold=1)
    neighbour = RedisStateStore(redis_client, prefix="teama")
    theirs = CircuitBreaker("theirs", config, store=neighbour)
    theirs.record_success(theirs.admit())
    store = RedisStateStore(redis_client, prefix=prefix)
    ours = CircuitBreaker("ours", config, store=store)
    ours.record_success(ours.admit())
    assert list(store.circuits()) == ["ours"]
    assert list(neighbour.circuits()) == ["theirs"]

    listening = CircuitBreaker(
        "x", config, store=RedisStateStore(redis_client, prefix=prefix, near_cache=30.0)
    )
    listening.record_success(listening.admit())  # cached CLOSED for 30 s; listening
    elsewhere = RedisStateStore(redis_server.client(), prefix=prefix)
    tripping = CircuitBreaker("x", config, store=elsewhere)
    tripping.record(tripping.admit(), Outcome.FAILURE)
    until(lambda: listening.try_admit() < 0, patience=10.0)


def _guarded_calls(store: RedisStateStore, name: str, count: int) -> Callable[[], Awaitable[int]]:
    """A coroutine function making ``count`` guarded calls through ``store``; their number."""
    breaker = CircuitBreaker(name, store=store)

    async def calls() -> int:
        done = 0
        for _ in range(count):
            await breaker.arecord_success(await breaker.aadmit())
            done += 1
        return done

    return calls


async def _closing_the_given_client(
    store: RedisStateStore, calls: Callable[[], Awaitable[int]]
) -> int:
    """``calls()`` in the first loop, which the store's given client serves; that client is
    the caller's to close (the copies for later loops close with their loop)."""
    try:
        return await calls()
    finally:
        await store.client.aclose()


def test_an_asyncio_store_serves_one_asyncio_run_after_another(redis_server: RedisServer) -> None:
    """One asyncio store and breaker, used by five ``asyncio.run()`` in a row: every call is
    admitted through Redis (no loop-mismatch error reaches the caller, nothing goes local)."""
    store = RedisStateStore.from_url(redis_server.url, prefix="loops", asyncio=True, timeout=2)
    calls = _guarded_calls(store, "runs", 3)
    assert asyncio.run(_closing_the_given_client(store, calls)) == 3
    for _ in range(4):
        assert asyncio.run(calls()) == 3
        assert store.available
    assert redis_server.client().hget(store.keys("runs")[0], "state") == b"CLOSED"


def test_an_asyncio_store_serves_two_threads_each_running_a_loop(
    redis_server: RedisServer,
) -> None:
    """Two threads, each with its own event loop running at the same time, share one asyncio
    store: every call of both is admitted, none fails."""
    store = RedisStateStore.from_url(redis_server.url, prefix="threads", asyncio=True, timeout=2)
    calls = _guarded_calls(store, "both", 50)
    assert asyncio.run(_closing_the_given_client(store, calls)) == 50
    start = threading.Barrier(2)

    def run() -> int:
        start.wait()
        return asyncio.run(calls())

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run(), range(2)))
    assert results == [50, 50]
    assert store.available


class GatedConnection(redis.asyncio.Connection):
    """Holds every reply until ``gate`` is set; ``sent`` counts the commands sent."""

    gate: asyncio.Event | None = None
    sent = 0
    made: ClassVar[list[GatedConnection]] = []  # every one, closed by the test: a cancelled call's
    # connection may have left the pool, whose close would not reach it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        GatedConnection.made.append(self)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await super().send_packed_command(command, check_health)
        GatedConnection.sent += 1

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if GatedConnection.gate is not None:
            await GatedConnection.gate.wait()
        return await super().read_response(*args, **kwargs)


async def test_a_probe_cancelled_during_its_admission_gives_its_lease_back(
    redis_server: RedisServer, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """A probe whose task is cancelled while its admission is in flight: the lease Redis gave
    it goes back at once, so the next caller anywhere probes; a caller refused while a probe
    runs is told the circuit is half-open, not open."""
    config = CircuitBreakerConfig(failure_threshold=1, reset_timeout=1.0)
    pool = redis.asyncio.ConnectionPool(port=redis_server.port, connection_class=GatedConnection)
    client = redis.asyncio.Redis(connection_pool=pool)
    mine = CircuitBreaker("probe", config, store=RedisStateStore(client, clock=clock))
    elsewhere = CircuitBreaker("probe", config, store=RedisStateStore(redis_client, clock=clock))
    inflight = mine.store.keys("probe")[1]  # type: ignore[union-attr]
    await mine.arecord(await mine.aadmit(), Outcome.FAILURE)
    clock.advance(2.0)  # HALF_OPEN: one probe at a time

    GatedConnection.gate, sent = asyncio.Event(), GatedConnection.sent
    admission = asyncio.create_task(mine.aadmit())
    await auntil(lambda: GatedConnection.sent > sent)  # the script runs; its reply is held
    admission.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admission
    assert redis_client.zcard(inflight) == 1  # Redis gave the cancelled caller the probe
    GatedConnection.gate.set()
    await auntil(lambda: redis_client.zcard(inflight) == 0)  # ... and has it back

    permit = elsewhere.admit()  # the probe is free for anyone
    with pytest.raises(CircuitOpenError) as refused:
        await mine.aadmit()
    assert refused.value.reason.startswith("half-open")
    elsewhere.record_success(permit)
    GatedConnection.gate = None
    # the cancelled admission's store call runs on (its budget sync counts once): let it end
    # before the pool closes, or its connection is collected unclosed during a later test
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=10.0)
    await client.aclose(close_connection_pool=True)
    for connection in GatedConnection.made:
        await connection.disconnect()
    GatedConnection.made.clear()


def _refuses_soon(breaker: CircuitBreaker, ready: Any, result: Any) -> None:
    """In a forked worker: say it is ready, then report whether ``breaker`` refuses within
    10 s (its near-cache would admit for 30 s: only a notice can make it refuse)."""
    admitted = breaker.try_admit() >= 0  # cached CLOSED before the trip
    ready.set()
    given_up = time.monotonic() + 10.0
    while time.monotonic() < given_up:
        if breaker.try_admit() < 0:
            result.put(("refused", admitted))
            return
        time.sleep(0.005)
    result.put(("still admitting", admitted))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="this platform does not fork"
)
def test_a_forked_worker_hears_of_a_trip(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """gunicorn --preload: a near-caching breaker made before the fork follows notices in the
    forked worker too, so a trip elsewhere reaches the worker in about a round trip."""
    config = CircuitBreakerConfig(failure_threshold=1)
    store = RedisStateStore(redis_server.client(), prefix="fork", near_cache=30.0)
    preloaded = CircuitBreaker("forked", config, store=store)
    preloaded.record_success(preloaded.admit())  # listening, and cached CLOSED for 30 s
    context = multiprocessing.get_context("fork")
    ready, result = context.Event(), context.Queue()
    worker = context.Process(target=_refuses_soon, args=(preloaded, ready, result))
    with warnings.catch_warnings():  # 3.12+: forking a process that runs threads warns
        warnings.simplefilter("ignore", DeprecationWarning)
        worker.start()
    try:
        assert ready.wait(30.0)
        elsewhere = CircuitBreaker("forked", config, store=RedisStateStore(redis_client, "fork"))
        elsewhere.record(elsewhere.admit(), Outcome.FAILURE)  # published: the circuit's key
        given_up = time.monotonic() + 60.0
        while result.empty() and worker.is_alive() and time.monotonic() < given_up:
            # the same notice again, in case the worker subscribed after the first one
            redis_client.publish(store.keys("forked")[0], "OPEN")
            time.sleep(0.05)
        assert result.get(timeout=30.0) == ("refused", True)
    finally:
        worker.join(30.0)
        if worker.is_alive():
            worker.kill()
    store.close()


@pytest.mark.parametrize("field", ["open_until", "opened_at"])
@pytest.mark.parametrize("value", ["1e400", "inf", "-inf", "nan"])
def test_a_stored_number_no_float_holds_is_listed_as_garbage_never_as_infinity(
    redis_server: RedisServer, field: str, value: str
) -> None:
    """A circuit's hash with an endless or not-a-number time (written by hand or by another
    program) is left out of the listing as any garbage is: `status --json` never prints
    Infinity or NaN, which JSON does not have."""
    import io
    import json

    from llm_circuit_breaker._cli.status import run_status

    store = RedisStateStore(redis_server.client(), prefix="odd")
    tripped = CircuitBreaker("tripped", CircuitBreakerConfig(failure_threshold=1), store=store)
    tripped.record(tripped.admit(), Outcome.FAILURE)
    fine = CircuitBreaker("fine", store=store)
    fine.record_success(fine.admit())
    client = redis_server.client()
    client.hset(store.keys("tripped")[0], field, value)
    listed = store.circuits()
    assert "tripped" not in listed and listed["fine"]["state"] == "CLOSED"
    out = io.StringIO()
    assert run_status(redis_server.url, "odd", as_json=True, out=out) == 0
    json.loads(out.getvalue(), parse_constant=lambda constant: pytest.fail(constant))
