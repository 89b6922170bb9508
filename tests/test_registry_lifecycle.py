"""Registry lifecycle: reset_all() resets every breaker in place, reset() clears the circuit
and the throttle, and after clear() everything that named a breaker agrees with the registry
on one breaker with fresh state; listings read the registry under its lock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    LLMCircuitBreaker,
    Outcome,
    breaker_registry,
    circuit_breaker,
)
from llm_circuit_breaker.httpx import CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

LIMITED = {
    "x-ratelimit-limit-requests": "100",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "60s",
}


def _trouble(breaker: CircuitBreaker) -> None:
    """Open the circuit, pause the throttle and teach it a limit; count a bit of everything."""
    first, second, third = breaker.admit(), breaker.admit(), breaker.admit()
    breaker.record_success(first)
    breaker.observe(LIMITED)
    breaker.record(second, Outcome.THROTTLED, hint=20.0)
    breaker.record(third, Outcome.FAILURE, open_for=60.0)
    assert breaker.state is CircuitState.OPEN
    assert breaker.throttle["paused_for"]


def test_reset_all_resets_every_breaker_in_place(clock: FakeClock) -> None:
    """CLOSED and clean, throttle unpaused with learned limits forgotten, statistics zeroed;
    the objects stay, so whoever holds them sees it at once."""
    registry = BreakerRegistry(clock=clock)
    configured = registry.get_or_create(
        "configured", CircuitBreakerConfig(requests_per_minute=600, throttle_max_wait=100)
    )
    learned = registry.get_or_create("learned", CircuitBreakerConfig(throttle_max_wait=100))
    for breaker in (configured, learned):
        _trouble(breaker)
    registry.reset_all()
    assert registry.breakers() == [configured, learned]
    for breaker in (configured, learned):
        assert (breaker.state, breaker.failure_count) == (CircuitState.CLOSED, 0)
        assert breaker.throttle["paused_for"] == 0.0
        assert breaker.stats.calls == breaker.stats.rejections == 0
        assert set(breaker.stats.state_changes.values()) == {0}
        assert breaker.wait_histogram.total == 0.0
    assert learned.throttle["requests_remaining"] is None  # the headers' limit is forgotten
    assert configured.throttle["requests_remaining"] == 600  # the configured one is kept
    learned.record_success(learned.admit())
    assert learned.stats.successes == 1


def test_breaker_reset_clears_the_throttle_too(clock: FakeClock) -> None:
    """reset(): the circuit closes and a rate-limit pause ends; statistics are kept."""
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(throttle_max_wait=100), clock=clock)
    _trouble(breaker)
    calls = breaker.stats.calls
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.throttle["paused_for"] == 0.0
    assert breaker.throttle["requests_remaining"] is None
    assert breaker.stats.calls == calls
    breaker.admit()  # no wait: nothing paces the call any more
    assert clock.sleeps == []


def test_clear_then_the_decorations_next_call_agree_on_one_fresh_breaker() -> None:
    """After clear(), the decorated function's next call puts its breaker back: get(name) is
    decorated.breaker, CLOSED and with statistics from zero."""

    @circuit_breaker("svc", failure_threshold=1)
    def ask(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    old = ask.breaker
    with pytest.raises(ConnectionError):
        ask(True)
    assert old.state is CircuitState.OPEN
    breaker_registry.clear()
    assert "svc" not in breaker_registry and breaker_registry.snapshot() == {}
    assert old.state is CircuitState.CLOSED and old.stats.calls == 0
    assert ask(False) == "ok"
    assert breaker_registry.get("svc") is ask.breaker is old
    assert breaker_registry.snapshot()["svc"]["stats"]["successes"] == 1


def test_naming_a_cleared_breaker_again_gives_the_same_one() -> None:
    """A new decoration (or get_or_create) naming it before the old one's next call gets the
    very breaker the old decoration holds."""

    @circuit_breaker("svc", failure_threshold=2)
    def first() -> str:
        return "first"

    breaker_registry.clear()

    @circuit_breaker("svc", failure_threshold=2)
    def second() -> str:
        return "second"

    assert second.breaker is first.breaker is breaker_registry.get("svc")
    first()
    second()
    assert breaker_registry.get("svc").stats.successes == 2


def test_a_cleared_name_reused_with_another_config_gets_a_new_breaker() -> None:
    """Isolation keeps working: after clear() a name may come back with another config, and
    the old decoration's next call does not displace the new breaker."""

    @circuit_breaker("svc", failure_threshold=2)
    def old() -> str:
        return "old"

    breaker_registry.clear()

    @circuit_breaker("svc", failure_threshold=7)
    def new() -> str:
        return "new"

    assert new.breaker is not old.breaker
    old()
    assert breaker_registry.get("svc") is new.breaker


def test_scoped_breakers_come_back_after_clear() -> None:
    """A template's breakers are named again by the next call of each scope."""

    @circuit_breaker("llm:{model}", failure_threshold=1)
    def ask(model: str) -> str:
        return model

    before = ask.breaker_for(model="a")
    ask("a")
    breaker_registry.clear()
    ask("a")
    assert breaker_registry.get("llm:a") is before is ask.breaker_for(model="a")


def test_a_facade_and_the_registry_agree_after_clear(llm_server: FakeLLMServer) -> None:
    """LLMCircuitBreaker(name=...) keeps its breaker; its next call registers it again."""
    cb = LLMCircuitBreaker(name="facade", retry={"max_retries": 0})
    breaker = cb.breaker
    breaker.force_open()
    breaker_registry.clear()
    assert breaker.state is CircuitState.CLOSED
    llm_server.script(Reply.ok("hi"))
    cb.call(llm_server.url + "/v1/chat/completions", data={"messages": []})
    assert breaker_registry.get("facade") is cb.breaker is breaker
    cb.close()


def test_a_transport_and_the_registry_agree_after_clear() -> None:
    """A transport naming a breaker finds the same one as get(name) after clear(), fresh."""
    transport = CircuitBreakerTransport(
        "transported", transport=httpx.MockTransport(lambda request: httpx.Response(200))
    )
    with httpx.Client(transport=transport) as client:
        client.get("http://llm.test/")
        held = breaker_registry.get("transported")
        held.force_open()
        breaker_registry.clear()
        assert client.get("http://llm.test/").status_code == 200  # not refused: fresh
        assert breaker_registry.get("transported") is held


def test_listings_read_the_registry_under_its_lock() -> None:
    """breakers(), snapshot() and a Prometheus scrape wait while the registry is changing."""
    from llm_circuit_breaker.observability.prometheus import PrometheusCollector

    registry = BreakerRegistry()
    registry.get_or_create("svc")
    collector = PrometheusCollector(registry)
    for read in (registry.breakers, registry.snapshot, lambda: list(collector.collect())):
        finished = threading.Event()

        def reader(read: Callable[[], object] = read, finished: threading.Event = finished) -> None:
            read()
            finished.set()

        with registry._lock:
            thread = threading.Thread(target=reader)
            thread.start()
            assert not finished.wait(0.05)
        thread.join(30)
        assert finished.is_set()


def test_listings_never_raise_while_scoped_breakers_are_evicted() -> None:
    """Scrapes and snapshots racing with eviction of idle scoped breakers never KeyError."""
    registry = BreakerRegistry(max_breakers=5)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            registry.get_or_create_with(f"svc:{number}", {}, scoped=True)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(2000):
            try:
                registry.snapshot()
            except KeyError as exc:  # pragma: no cover - what this test guards against
                errors.append(exc)
    finally:
        stop.set()
        thread.join(30)
    assert errors == []


def test_store_backed_breakers_come_back_after_clear() -> None:
    """With a shared store too, the decoration's next call and get(name) agree after clear()."""
    from llm_circuit_breaker.storage.memory import MemoryStateStore

    registry = BreakerRegistry(store=MemoryStateStore())

    @circuit_breaker("shared", registry=registry)
    def ask() -> str:
        return "ok"

    ask()
    registry.clear()
    assert "shared" not in registry
    ask()
    assert registry.get("shared") is ask.breaker
