"""A scoped decoration's ``on_state_change`` listener is attached to each scope's breaker
once, however often the scope is met again (a scope pushed out of the decoration's cache
while its breaker stays registered, a scope's first calls racing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from llm_circuit_breaker import BreakerRegistry, CircuitState, StateChange, circuit_breaker


def _trip(call: object, key: str) -> None:
    try:
        call(key, fail=True)  # type: ignore[operator]
    except RuntimeError:
        pass


def test_an_open_scope_met_again_after_cycling_hears_each_change_once() -> None:
    registry = BreakerRegistry(max_breakers=2)
    seen: list[tuple[str, CircuitState]] = []

    @circuit_breaker(
        "s:{m}",
        registry=registry,
        failure_threshold=1,
        on_state_change=lambda change: seen.append((change.name, change.new)),
    )
    def complete(m: str, fail: bool = False) -> str:
        if fail:
            raise RuntimeError("provider down")
        return m

    _trip(complete, "a")  # OPEN: kept registered while the other scopes cycle past it
    for key in "bcdef":
        complete(key)
    registry.get("s:a").force_closed()
    _trip(complete, "a")  # met again: its breaker is the registered one
    assert [new for name, new in seen if name == "s:a"] == [
        CircuitState.OPEN,
        CircuitState.CLOSED,
        CircuitState.OPEN,
    ]


def test_a_streaming_scope_met_again_after_cycling_hears_each_change_once() -> None:
    registry = BreakerRegistry(max_breakers=2)
    seen: list[StateChange] = []

    @circuit_breaker(
        "g:{m}",
        registry=registry,
        failure_threshold=1,
        first_token_timeout=30.0,  # a shell per breaker (not the one shared shell)
        on_state_change=seen.append,
    )
    def chunks(m: str, fail: bool = False) -> Iterator[str]:
        if fail:
            raise RuntimeError("provider down")
        yield m

    def trip(key: str) -> None:
        try:
            list(chunks(key, fail=True))
        except RuntimeError:
            pass

    trip("a")
    for key in "bcdef":
        assert list(chunks(key)) == [key]
    registry.get("g:a").force_closed()
    trip("a")
    assert [c.new for c in seen if c.name == "g:a"] == [
        CircuitState.OPEN,
        CircuitState.CLOSED,
        CircuitState.OPEN,
    ]


def _first_calls_at_once() -> int:
    """Four threads make one scope at once; how many listener calls its opening makes."""
    registry = BreakerRegistry()
    seen: list[StateChange] = []
    start = threading.Barrier(4)

    @circuit_breaker("t:{m}", registry=registry, on_state_change=seen.append)
    def complete(m: str) -> str:
        return m

    def first_call() -> None:
        start.wait()
        complete("a")

    threads = [threading.Thread(target=first_call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    registry.get("t:a").force_open()
    return len(seen)


def test_threads_making_a_scope_at_once_attach_its_listener_once() -> None:
    assert [_first_calls_at_once() for _ in range(20)] == [1] * 20
