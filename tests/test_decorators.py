"""@circuit_breaker on every kind of callable."""

from __future__ import annotations

import asyncio
import inspect
import logging
import warnings
from collections.abc import AsyncIterator, Iterator

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    HTTPStatusError,
    StateChange,
    breaker_registry,
    circuit_breaker,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock


def _open(breaker: CircuitBreaker) -> None:
    breaker.force_open()


def test_wrapper_keeps_name_doc_signature() -> None:
    """The wrapper looks like the wrapped function to humans and to inspect."""

    def complete(prompt: str, *, temperature: float = 0.0) -> str:
        """Complete a prompt."""
        return prompt

    original = complete
    complete = circuit_breaker("openai")(original)
    assert inspect.signature(complete) == inspect.signature(original)
    assert complete.__wrapped__ is original
    assert complete.__name__ == "complete"
    assert complete.__doc__ == "Complete a prompt."
    assert complete.breaker is breaker_registry.get("openai")
    assert complete("hi") == "hi"


def test_coroutine_function_stays_a_coroutine_function() -> None:
    """inspect and asyncio still see a coroutine function."""

    @circuit_breaker("anthropic")
    async def acomplete(prompt: str) -> str:
        return prompt

    assert inspect.iscoroutinefunction(acomplete)
    assert asyncio.run(acomplete("x")) == "x"


def test_unnamed_breaker_is_named_after_the_function() -> None:
    """Without a name the breaker is module.qualname; used bare the decorator works too."""

    @circuit_breaker
    def bare() -> int:
        return 1

    @circuit_breaker()
    def called() -> int:
        return 2

    assert (
        bare.breaker.name
        == f"{__name__}.test_unnamed_breaker_is_named_after_the_function.<locals>.bare"
    )
    assert called() == 2 and bare() == 1


def test_same_name_shares_one_breaker() -> None:
    """Two decorators naming one breaker share its state."""

    @circuit_breaker("shared", failure_threshold=1)
    def first() -> None:
        raise ConnectionError

    @circuit_breaker("shared")
    def second() -> str:
        return "never runs"

    with pytest.raises(ConnectionError):
        first()
    with pytest.raises(CircuitOpenError):
        second()
    assert first.breaker is second.breaker


def test_open_circuit_does_not_run_the_function() -> None:
    """While OPEN the wrapped function is not called."""
    calls = []

    @circuit_breaker("x")
    def work() -> None:
        calls.append(1)

    _open(work.breaker)
    with pytest.raises(CircuitOpenError):
        work()
    assert calls == []


def test_methods_are_guarded() -> None:
    """Methods keep working, with self bound, and expose .breaker through the instance."""

    class Client:
        def __init__(self) -> None:
            self.prefix = ">"

        @circuit_breaker("method")
        def complete(self, prompt: str) -> str:
            return self.prefix + prompt

        @circuit_breaker("amethod")
        async def acomplete(self, prompt: str) -> str:
            return self.prefix + prompt

    client = Client()
    assert client.complete("a") == ">a"
    assert asyncio.run(client.acomplete("b")) == ">b"
    assert client.complete.breaker.name == "method"


def test_fallback_runs_when_open() -> None:
    """fallback gets the same arguments when the circuit is open; failures still raise."""

    @circuit_breaker("fb", failure_threshold=1, fallback=lambda prompt: f"cached {prompt}")
    def complete(prompt: str) -> str:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        complete("a")
    assert complete("b") == "cached b"


async def test_async_fallback_may_be_a_coroutine_function() -> None:
    """For async code the fallback may be sync or async."""

    async def afallback(prompt: str) -> str:
        return f"async {prompt}"

    @circuit_breaker("afb", fallback=afallback)
    async def complete(prompt: str) -> str:
        return prompt

    @circuit_breaker("sfb", fallback=lambda prompt: f"sync {prompt}")
    async def complete2(prompt: str) -> str:
        return prompt

    _open(complete.breaker)
    _open(complete2.breaker)
    assert await complete("a") == "async a"
    assert await complete2("b") == "sync b"


def test_generator_failure_while_iterating_counts() -> None:
    """An exception raised while a generator is iterated counts as a failure."""

    @circuit_breaker("gen", failure_threshold=1)
    def stream() -> Iterator[str]:
        yield "a"
        raise ConnectionError("dropped")

    assert inspect.isgeneratorfunction(stream)
    iterator = stream()
    assert stream.breaker.state is CircuitState.CLOSED  # nothing admitted before iterating
    assert next(iterator) == "a"
    with pytest.raises(ConnectionError):
        next(iterator)
    assert stream.breaker.state is CircuitState.OPEN


def test_generator_closed_early_is_ignored(clock: FakeClock) -> None:
    """A consumer that stops early neither fails nor succeeds the call, and frees a probe slot."""
    breaker = CircuitBreaker("gen", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    breaker.force_open()
    breaker.force_closed()

    @circuit_breaker(breaker=breaker)
    def stream() -> Iterator[int]:
        yield from range(10)

    iterator = stream()
    next(iterator)
    iterator.close()
    assert breaker.stats.ignored == 1
    assert list(stream()) == list(range(10))
    assert breaker.stats.successes == 1


async def test_async_generator_guarded() -> None:
    """Async generators are guarded like generators; an open circuit refuses at first item."""

    @circuit_breaker("agen", failure_threshold=1)
    async def stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise ConnectionError("dropped")

    assert inspect.isasyncgenfunction(stream)
    seen = []
    with pytest.raises(ConnectionError):
        async for item in stream(3):
            seen.append(item)
    assert seen == [0, 1, 2]
    with pytest.raises(CircuitOpenError):
        async for _ in stream(1):
            pass


async def test_async_generator_adds_one_async_generator_per_call() -> None:
    """Without an item timeout a guarded async generator's items reach the caller through the
    wrapper alone (no second async generator per call), closed early or read to the end."""
    import sys

    @circuit_breaker("agen-layers")
    async def stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    started: list[object] = []
    hooks = sys.get_asyncgen_hooks()

    def first_iteration(agen: object) -> None:
        started.append(agen)
        if hooks.firstiter is not None:
            hooks.firstiter(agen)  # type: ignore[arg-type]

    sys.set_asyncgen_hooks(firstiter=first_iteration, finalizer=hooks.finalizer)
    try:
        assert [item async for item in stream(3)] == [0, 1, 2]
        early = stream(3)
        assert await early.__anext__() == 0
        await early.aclose()
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert len(started) == 4  # per call: the wrapper and the function's own generator
    assert stream.breaker.stats.successes == 1
    assert stream.breaker.stats.ignored == 1


async def test_call_timeout_times_out_coroutines() -> None:
    """call_timeout bounds a coroutine function's call, and the timeout is a failure."""

    @circuit_breaker("slow", call_timeout=0.01, failure_threshold=1)
    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await slow()
    assert slow.breaker.state is CircuitState.OPEN


async def test_call_timeout_bounds_each_stream_item() -> None:
    """On an async generator, call_timeout is the longest wait for one item."""

    @circuit_breaker("idle", call_timeout=0.01)
    async def stream() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(10)
        yield 2

    seen = []
    with pytest.raises(TimeoutError):
        async for item in stream():
            seen.append(item)
    assert seen == [1]
    assert stream.breaker.failure_count == 1


def test_call_timeout_on_sync_function_is_refused() -> None:
    """A sync function cannot be timed out safely: TypeError at decoration."""
    with pytest.raises(TypeError, match="call_timeout"):

        @circuit_breaker("sync", call_timeout=1.0)
        def work() -> None: ...


def test_exclude_and_client_errors_are_ignored() -> None:
    """Excluded types and 4xx client errors neither count nor reset the failure count."""

    @circuit_breaker("ex", failure_threshold=2, exclude=(KeyError,))
    def work(exc: BaseException) -> None:
        raise exc

    for exc in (ConnectionError(), KeyError("k"), http_status_error(400), http_status_error(401)):
        with pytest.raises(type(exc)):
            work(exc)
    assert work.breaker.failure_count == 1
    assert work.breaker.stats.ignored == 3
    with pytest.raises(HTTPStatusError):
        work(http_status_error(503))
    assert work.breaker.state is CircuitState.OPEN


def test_failure_predicate_overrides(caplog: pytest.LogCaptureFixture) -> None:
    """failure_predicate decides what counts; a raising predicate counts the error and logs."""

    def predicate(exc: BaseException) -> bool:
        if isinstance(exc, LookupError):
            raise RuntimeError("predicate bug")
        return isinstance(exc, ValueError)

    @circuit_breaker("pred", failure_threshold=10, failure_predicate=predicate)
    def work(exc: BaseException) -> None:
        raise exc

    for exc in (ValueError(), ConnectionError(), KeyError()):
        with pytest.raises(type(exc)):
            work(exc)
    assert work.breaker.failure_count == 2  # ValueError, and KeyError via the raising predicate
    assert "failure_predicate" in caplog.text


def test_on_state_change_and_listener_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Listeners see StateChange events; one that raises is logged and breaks nothing."""
    changes: list[StateChange] = []

    def bad_listener(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    @circuit_breaker("ls", failure_threshold=1, on_state_change=changes.append)
    def work() -> None:
        raise ConnectionError

    work.breaker.add_listener(bad_listener)
    with (
        caplog.at_level(logging.WARNING, logger="llm_circuit_breaker"),
        pytest.raises(ConnectionError),
    ):
        work()
    assert [(c.name, c.old, c.new) for c in changes] == [
        ("ls", CircuitState.CLOSED, CircuitState.OPEN)
    ]
    assert "1 consecutive failures" in changes[0].reason
    assert "listener bug" in caplog.text and "CLOSED -> OPEN" in caplog.text
    assert work.breaker.state is CircuitState.OPEN


def test_bad_arguments_raise_clear_errors() -> None:
    """Unknown fields, bad values and non-callables are refused with the name of the problem."""
    with pytest.raises(TypeError, match="failureThreshold.*failure_threshold"):
        circuit_breaker("bad", failureThreshold=3)
    with pytest.raises(ValueError, match="failure_threshold"):
        circuit_breaker("bad", failure_threshold=0)
    with pytest.raises(TypeError, match="callables"):
        circuit_breaker("bad")(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback"):
        circuit_breaker("bad", fallback=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exclude"):
        circuit_breaker("bad", exclude=("x",))(lambda: None)  # type: ignore[arg-type]
    assert "bad" not in breaker_registry


def test_conflicting_config_raises() -> None:
    """Naming an existing breaker with different fields says what differs."""
    registry = BreakerRegistry()
    circuit_breaker("p", registry=registry, failure_threshold=5)(lambda: None)
    with pytest.raises(ValueError, match=r"failure_threshold=3 \(it has 5\)"):
        circuit_breaker("p", registry=registry, failure_threshold=3)(lambda: None)
    circuit_breaker("p", registry=registry)(lambda: None)  # no fields: reused as it is


@pytest.mark.parametrize("kind", ["function", "staticmethod", "classmethod"])
def test_the_wrong_order_warning_points_at_the_decorating_line(kind: str) -> None:
    """``@circuit_breaker`` outside ``@with_retry`` warns at the user's own line, above a
    plain function, a staticmethod or a classmethod alike (not at a line of the library)."""
    from llm_circuit_breaker import BreakerRegistry, with_retry

    registry = BreakerRegistry()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if kind == "function":

            @circuit_breaker("order", registry=registry)
            @with_retry(max_retries=1)
            def call() -> int:
                return 1

        elif kind == "staticmethod":

            class Holder:
                @circuit_breaker("order", registry=registry)
                @with_retry(max_retries=1)
                @staticmethod
                def call() -> int:
                    return 1

        else:

            class Other:
                @circuit_breaker("order", registry=registry)
                @with_retry(max_retries=1)
                @classmethod
                def call(cls) -> int:
                    return 1

    ours = [w for w in seen if "outside @with_retry" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].filename == __file__
