"""What one decorated function costs and keeps: one closure cell over its gate, few
GC-tracked objects, no reference cycle, and exactly the attributes ``functools.wraps`` gives
(issue: per-breaker cost). Bounded by counts, never by time."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llm_circuit_breaker import BreakerRegistry, circuit_breaker
from llm_circuit_breaker._core.permits import REJECTED
from llm_circuit_breaker.strategies.gate import ASK, Elsewhere, ShellGate

N = 300


def _plain(prompt: str, *, temperature: float = 0.0) -> str:
    """Complete a prompt."""
    return prompt


async def _coroutine(prompt: str) -> str:
    """Complete a prompt, awaited."""
    return prompt


def _generator(prompt: str) -> Iterator[str]:
    """Stream a prompt."""
    yield prompt


async def _async_generator(prompt: str) -> AsyncIterator[str]:
    """Stream a prompt, awaited."""
    yield prompt


KINDS = [_plain, _coroutine, _generator, _async_generator]


def _copy(func: Callable[..., Any]) -> Callable[..., Any]:
    """A fresh function like ``func``, with an attribute of its own."""
    made = type(func)(func.__code__, func.__globals__, func.__name__, func.__defaults__)  # type: ignore[attr-defined]
    made.__kwdefaults__ = func.__kwdefaults__
    made.__qualname__ = func.__qualname__
    made.__doc__ = func.__doc__
    made.marked = "kept"
    return made  # type: ignore[no-any-return]


@pytest.mark.parametrize("func", KINDS)
def test_a_decorated_function_has_exactly_what_functools_wraps_gives(
    func: Callable[..., Any],
) -> None:
    func = _copy(func)
    wrapper = circuit_breaker("svc", registry=BreakerRegistry())(func)

    def reference(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        return None

    expected = functools.update_wrapper(reference, func)
    for name in (*functools.WRAPPER_ASSIGNMENTS, "__wrapped__"):
        assert getattr(wrapper, name) == getattr(expected, name), name
    assert wrapper.__annotations__ is func.__annotations__
    assert list(wrapper.__dict__) == [*expected.__dict__, "breaker"]
    assert wrapper.marked == "kept"  # type: ignore[attr-defined]
    assert inspect.signature(wrapper) == inspect.signature(func)
    for check in (
        inspect.iscoroutinefunction,
        inspect.isasyncgenfunction,
        inspect.isgeneratorfunction,
        inspect.isfunction,
    ):
        assert check(wrapper) == check(func), check


@pytest.mark.skipif(
    not hasattr(inspect, "markcoroutinefunction"), reason="inspect marks from Python 3.12"
)
def test_a_marked_coroutine_function_stays_marked() -> None:
    def returns_awaitable(prompt: str) -> Any:
        return _coroutine(prompt)

    marked = inspect.markcoroutinefunction(returns_awaitable)  # type: ignore[attr-defined,unused-ignore]
    wrapper = circuit_breaker("svc", registry=BreakerRegistry())(marked)
    assert inspect.iscoroutinefunction(wrapper)
    assert asyncio.run(wrapper("hi")) == "hi"


def test_a_callable_object_is_copied_by_functools() -> None:
    class Complete:
        """A callable object."""

        def __call__(self, prompt: str) -> str:
            return prompt

    target = Complete()
    wrapper = circuit_breaker("svc", registry=BreakerRegistry())(target)
    assert wrapper.__wrapped__ is target
    assert wrapper.__doc__ == "A callable object."
    assert wrapper("hi") == "hi"


@pytest.mark.parametrize("func", KINDS)
def test_a_shell_closes_over_its_gate_alone(func: Callable[..., Any]) -> None:
    wrapper = circuit_breaker("svc", registry=BreakerRegistry())(func)
    (cell,) = wrapper.__closure__  # type: ignore[attr-defined]
    assert isinstance(cell.cell_contents, ShellGate)
    assert cell.cell_contents.breaker is wrapper.breaker


def test_a_decorated_function_holds_few_gc_tracked_objects() -> None:
    """Its function, breaker (two objects), wrapper, the wrapper's ``__dict__``, closure,
    cell and gate: 8 (32 before the shell closed over its gate alone)."""
    registry = BreakerRegistry(max_breakers=N + 10)

    def make(i: int) -> Any:
        def call(prompt: str) -> str:
            return prompt

        return circuit_breaker(f"svc-{i}", registry=registry)(call)

    make(-1)
    kept = []
    gc.collect()
    before = len(gc.get_objects())
    for i in range(N):
        kept.append(make(i))
    gc.collect()
    assert (len(gc.get_objects()) - before) / N <= 8


@pytest.mark.parametrize("func", KINDS)
def test_a_decorated_function_is_freed_by_reference_counts(func: Callable[..., Any]) -> None:
    gc.collect()
    gc.disable()
    try:
        wrapper = circuit_breaker("svc", registry=BreakerRegistry())(_copy(func))
        freed = weakref.ref(wrapper)
        del wrapper
        assert freed() is None
    finally:
        gc.enable()


def test_an_elsewhere_permit_is_never_a_local_circuits() -> None:
    """The shells tell the two apart by the lock-free permit they read."""
    assert ASK < 0
    assert ASK != REJECTED
    assert Elsewhere.lock_free_permit == ASK


def test_a_capped_breaker_is_admitted_elsewhere_and_charged() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("capped", registry=registry, max_concurrent=2, token_budget=1_000)
    def call(prompt: str) -> dict[str, Any]:
        return {"usage": {"total_tokens": 10}}

    (cell,) = call.__closure__  # type: ignore[attr-defined]
    assert isinstance(cell.cell_contents.core, Elsewhere)
    for _ in range(3):
        call("hi")
    assert call.breaker.stats.calls == 3
    assert call.breaker.stats.successes == 3
