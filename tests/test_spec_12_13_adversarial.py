"""SPEC sections 12 and 13 checked as a user runs them: the pytest plugin's fixtures in an
inner pytest session, ``frozen_time()`` / ``instant()`` under threads, asyncio, trio and
anyio, the fake provider under the real SDKs and concurrent clients."""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import httpx
import openai
import pytest
import trio

from llm_circuit_breaker import circuit_breaker, with_hedging, with_retry
from llm_circuit_breaker.breaker import clock as time_source
from llm_circuit_breaker.testing import FakeLLMServer, frozen_time, instant

pytest_plugins = ["pytester"]

PLUGIN = "llm_circuit_breaker.testing.pytest_plugin"


def _inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    installed = any(
        entry.value == PLUGIN for entry in importlib.metadata.entry_points(group="pytest11")
    )
    plugin = [] if installed else ["-p", PLUGIN]
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester.runpytest(*plugin, "-p", "no:cacheprovider", "-p", "no:randomly", *args)


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as running:
        yield running


def _connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/v1"))


# -- llm_breakers yields the registry ------------------------------------------------------


def test_llm_breakers_is_the_default_registry_and_track_does_not_outlive_it(
    pytester: pytest.Pytester,
) -> None:
    """SPEC 13: ``llm_breakers`` "yields the registry": the default registry itself (``is``,
    ``isinstance``, ``registry=llm_breakers``), with ``.track(registry)`` for the test only."""
    pytester.makepyfile(
        test_registry="""
        from llm_circuit_breaker import BreakerRegistry, breaker_registry, circuit_breaker

        mine = BreakerRegistry()


        def test_it_is_the_registry(llm_breakers):
            assert llm_breakers is breaker_registry
            assert isinstance(llm_breakers, BreakerRegistry)
            assert llm_breakers.track(mine) is mine

            @circuit_breaker("kit-svc", failure_threshold=1, registry=llm_breakers)
            def call():
                raise ConnectionError("down")

            try:
                call()
            except ConnectionError:
                pass
            assert llm_breakers.get("kit-svc").state.value == "OPEN"
            mine.get_or_create("own").force_open()


        def test_nothing_left_behind():
            assert not hasattr(breaker_registry, "track")
            assert breaker_registry.get("kit-svc").state.value == "CLOSED"
            assert mine.get("own").state.value == "CLOSED"
        """
    )
    _inner(pytester).assert_outcomes(passed=2)


# -- llm_clock / frozen_time and the fake provider's rate limit ------------------------------


def test_a_retry_after_wait_on_the_frozen_clock_refills_the_fake_rate_limit(
    server: FakeLLMServer,
) -> None:
    """SPEC 13: under ``llm_clock`` a ``Retry-After`` wait advances the fake clock; the fake
    provider's ``rate_limit()`` follows that clock, so the retried call is granted (it kept
    answering 429 while its bucket refilled on real time only)."""
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)

    @with_retry(max_retries=2, max_delay=120.0)
    def ask() -> str:
        reply = client.chat.completions.create(model="m", messages=[])
        return reply.choices[0].message.content or ""

    try:
        with frozen_time() as clock:
            server.rate_limit(requests_per_minute=1)
            assert ask() == "Hello!"
            assert ask() == "Hello!"  # one 429 (retry-after: 60), then granted
            assert len(clock.sleeps) == 1 and clock.sleeps[0] >= 59
            assert server.hits == 3
    finally:
        client.close()


def test_the_rate_limit_survives_a_clock_that_goes_back(server: FakeLLMServer) -> None:
    """A quota made under a frozen clock far ahead keeps answering once real time is back."""
    with frozen_time(start=time.monotonic() + 10_000):
        server.rate_limit(requests_per_minute=2)
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    try:
        for _ in range(2):
            client.chat.completions.create(model="m", messages=[])
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=[])
    finally:
        client.close()


def test_frozen_time_nests_and_reaches_threads() -> None:
    seen: list[float] = []
    with frozen_time(100.0):
        with frozen_time(5.0) as inner:
            worker = threading.Thread(target=lambda: seen.append(time_source.now()))
            worker.start()
            worker.join()
            inner.advance(1.0)
            assert time_source.now() == 6.0
        assert time_source.now() == 100.0
    assert seen == [5.0]
    assert abs(time_source.now() - time.monotonic()) < 5


def test_frozen_time_blocks_ending_out_of_order_in_threads_leave_no_fake_clock() -> None:
    """Two threads' blocks that end in the other order than they began (A in, B in, A out,
    B out): the real clock is back afterwards; B's exit used to put A's fake clock back."""
    steps = [threading.Event() for _ in range(3)]
    during: list[float] = []

    def first() -> None:
        with frozen_time(1000.0):
            steps[0].set()
            steps[1].wait(5)
        steps[2].set()

    def second() -> None:
        steps[0].wait(5)
        with frozen_time(2000.0):
            steps[1].set()
            steps[2].wait(5)
            during.append(time_source.now())

    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert during == [2000.0]  # the block still in force keeps its clock
    assert abs(time_source.now() - time.monotonic()) < 5


def test_a_retry_decorated_before_the_clock_is_frozen_waits_on_it() -> None:
    @with_retry(max_retries=2, initial_delay=10.0, jitter=False)
    def failing() -> None:
        raise _connection_error()

    with frozen_time() as clock, pytest.raises(openai.APIConnectionError):
        failing()
    assert clock.sleeps == [10.0, 20.0]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_frozen_time_and_instant_under_anyio_and_trio(backend: str) -> None:
    attempts = 0

    @with_retry(max_retries=2, initial_delay=10.0, jitter=False)
    async def failing() -> None:
        nonlocal attempts
        attempts += 1
        raise _connection_error()

    async def main() -> list[float]:
        with frozen_time() as clock, pytest.raises(openai.APIConnectionError):
            await failing()
        with instant(), pytest.raises(openai.APIConnectionError):
            await failing()
        return clock.sleeps

    started = time.monotonic()
    sleeps = anyio.run(main, backend=backend) if backend == "asyncio" else trio.run(main)
    assert sleeps == [10.0, 20.0] and attempts == 6
    assert time.monotonic() - started < 20  # 60 s of backoff were never slept


def test_throttle_slots_advance_the_frozen_clock_and_instant_skips_them() -> None:
    def paced(name: str) -> Callable[[], int]:
        @circuit_breaker(name, requests_per_minute=60)
        def call() -> int:
            return 1

        return call

    with frozen_time() as clock:
        call = paced("kit-throttle-frozen")
        start = clock()
        for _ in range(80):
            call()
        waited = clock() - start
    started = time.monotonic()
    with instant():
        call = paced("kit-throttle-instant")
        for _ in range(80):
            call()
    assert waited >= 15  # slots of one second each, past the first burst
    assert time.monotonic() - started < 20  # as many slots, never slept


def test_a_hedge_delay_under_the_frozen_clock_starts_the_alternative_at_once() -> None:
    """SPEC 13: under ``llm_clock`` the hedge delay advances the clock at once."""
    release = threading.Event()
    started: list[str] = []

    def primary() -> str:
        started.append("primary")
        release.wait(2.0)
        return "primary"

    def alternative() -> str:
        started.append("alternative")
        release.set()
        return "alternative"

    with frozen_time():
        answer = with_hedging(primary, alternative, delay=600.0)()
    release.set()
    assert answer == "alternative" and "alternative" in started


# -- fake_llm under the real SDKs -----------------------------------------------------------


def test_concurrent_sdk_clients_are_all_answered_and_recorded(server: FakeLLMServer) -> None:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    answers: list[str] = []

    def ask() -> None:
        for _ in range(10):
            reply = client.chat.completions.create(model="m", messages=[])
            answers.append(reply.choices[0].message.content or "")

    try:
        workers = [threading.Thread(target=ask) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        client.close()
    assert answers == ["Hello!"] * 80 and server.hits == 80


def test_a_stream_under_way_keeps_its_scenario_when_outage_then_healthy(
    server: FakeLLMServer,
) -> None:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    try:
        server.slow_first_token(0.2)
        stream = client.chat.completions.create(model="m", messages=[], stream=True)
        server.outage(status=503)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=[])
        server.healthy()
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert client.chat.completions.create(model="m", messages=[]).choices[0].message.content
    finally:
        client.close()


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_an_async_hedge_delay_under_the_frozen_clock_starts_the_alternative_at_once(
    library: str,
) -> None:
    """The same for coroutine functions on asyncio and on trio: the delay advances the fake
    clock (by the delay) instead of waiting, and the alternative answers first."""
    import trio

    sleep = trio.sleep if library == "trio" else asyncio.sleep

    async def primary() -> str:
        await sleep(5.0)  # real time: the alternative has long answered by then
        return "primary"

    async def alternative() -> str:
        return "alternative"

    hedged = with_hedging(primary, alternative, delay=600.0)
    with frozen_time() as clock:
        before = clock()
        answer = trio.run(hedged) if library == "trio" else asyncio.run(hedged())
        assert clock() - before >= 600.0
    assert answer == "alternative"
    assert hedged.hedge_stats.hedges == 1
