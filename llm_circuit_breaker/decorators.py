"""``@circuit_breaker``: guard plain functions, coroutine functions, generators and async
generators (and methods of each) with a shared breaker."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from llm_circuit_breaker._guard import ExcludeTypes, FailurePredicate, Guard, check_rules
from llm_circuit_breaker.breaker import CircuitBreaker, Listener
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.errors import CircuitOpenError
from llm_circuit_breaker.registry import BreakerRegistry, breaker_registry

__all__ = ["Guarded", "circuit_breaker"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Guarded(Protocol[P, R_co]):
    """A function wrapped by :func:`circuit_breaker`: same signature, plus ``.breaker``."""

    breaker: CircuitBreaker

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Guarded[P, R_co]: ...
    @overload
    def __get__(self, instance: object, owner: type[Any], /) -> Callable[..., R_co]: ...


@overload
def circuit_breaker(name: Callable[P, R], /) -> Guarded[P, R]: ...
@overload
def circuit_breaker(
    name: str | None = None,
    *,
    registry: BreakerRegistry = ...,
    breaker: CircuitBreaker | None = None,
    exclude: ExcludeTypes = (),
    failure_predicate: FailurePredicate | None = None,
    fallback: Callable[..., Any] | None = None,
    on_state_change: Listener | None = None,
    call_timeout: float | None = None,
    **config_fields: Any,
) -> Callable[[Callable[P, R]], Guarded[P, R]]: ...


def circuit_breaker(
    name: str | Callable[..., Any] | None = None,
    *,
    registry: BreakerRegistry = breaker_registry,
    breaker: CircuitBreaker | None = None,
    exclude: ExcludeTypes = (),
    failure_predicate: FailurePredicate | None = None,
    fallback: Callable[..., Any] | None = None,
    on_state_change: Listener | None = None,
    call_timeout: float | None = None,
    **config_fields: Any,
) -> Any:
    """Guard a function with the circuit breaker ``name`` of ``registry``.

    Without a name the breaker is named after the function's module and qualified name; with
    ``breaker=`` that instance is used. ``config_fields`` are :class:`CircuitBreakerConfig`
    fields (an existing breaker must agree with the ones given). While the circuit is open the
    call raises :class:`CircuitOpenError` without running, or returns ``fallback(*args,
    **kwargs)`` when one is given. ``call_timeout`` bounds a coroutine function's call (and
    each item of an async generator). The wrapper exposes ``.breaker``.
    """
    if callable(name):  # used bare: @circuit_breaker
        return circuit_breaker()(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"circuit_breaker name must be a str, got {name!r}")
    if breaker is not None and (name is not None or config_fields):
        raise TypeError("circuit_breaker takes either breaker= or a name and config fields")
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable, got {fallback!r}")
    if call_timeout is not None and not (
        isinstance(call_timeout, (int, float)) and 0 < call_timeout < float("inf")
    ):
        raise ValueError(f"call_timeout must be a positive number of seconds, got {call_timeout!r}")
    # Bad names or values fail here, before any breaker is registered.
    CircuitBreakerConfig.from_mapping(config_fields)
    check_rules(exclude, failure_predicate)

    def decorate(func: Callable[P, R]) -> Guarded[P, R]:
        if not callable(func):
            raise TypeError(f"circuit_breaker decorates callables, got {func!r}")
        chosen = breaker or registry.get_or_create_with(
            name or f"{func.__module__}.{func.__qualname__}", config_fields
        )
        guard = Guard(chosen, exclude, failure_predicate)
        if inspect.isasyncgenfunction(func):
            wrapper: Any = _async_gen_shell(func, guard, fallback, call_timeout)
        elif inspect.iscoroutinefunction(func):
            wrapper = _async_shell(func, guard, fallback, call_timeout)
        elif chosen.is_async:
            raise TypeError(
                f"circuit {chosen.name!r} keeps its state in an asyncio store: it can guard "
                f"coroutine functions and async generators, not {func.__qualname__}"
            )
        elif call_timeout is not None:
            raise TypeError(
                f"call_timeout applies to coroutine functions and async generators; "
                f"{func.__qualname__} is neither (a thread cannot be timed out safely)"
            )
        elif inspect.isgeneratorfunction(func):
            wrapper = _gen_shell(func, guard, fallback)
        else:
            wrapper = _sync_shell(func, guard, fallback)
        if on_state_change is not None:
            chosen.add_listener(on_state_change)
        wrapper.breaker = chosen
        return cast("Guarded[P, R]", wrapper)

    return decorate


def _sync_shell(
    func: Callable[..., Any], guard: Guard, fallback: Callable[..., Any] | None
) -> Callable[..., Any]:
    enter, succeeded, failed = guard.enter, guard.succeeded, guard.failed

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        permit = enter()
        if permit.__class__ is not int:  # refused: enter() handed back the error to raise
            if fallback is None:
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            return fallback(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            failed(permit, exc)
            raise
        succeeded(permit)
        return result

    return wrapper


def _async_shell(
    func: Callable[..., Any],
    guard: Guard,
    fallback: Callable[..., Any] | None,
    call_timeout: float | None,
) -> Callable[..., Any]:
    enter, succeeded, failed = guard.enter, guard.succeeded, guard.failed
    call = func if call_timeout is None else _timed(func, call_timeout)

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        permit = enter()
        if permit.__class__ is not int:
            if not isinstance(permit, CircuitOpenError):  # an asyncio store's coroutine
                permit = await permit
            if permit.__class__ is not int:
                if fallback is None:
                    try:
                        raise permit
                    finally:
                        del permit  # else frame -> error -> traceback -> frame: a cycle
                result = fallback(*args, **kwargs)
                return (await result) if inspect.isawaitable(result) else result
        try:
            result = await call(*args, **kwargs)
        except BaseException as exc:
            pending = failed(permit, exc)
            if pending is not None:
                await pending
            raise
        pending = succeeded(permit)
        if pending is not None:
            await pending
        return result

    return wrapper


def _gen_shell(
    func: Callable[..., Any], guard: Guard, fallback: Callable[..., Any] | None
) -> Callable[..., Any]:
    enter, succeeded, failed = guard.enter, guard.succeeded, guard.failed

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Admitted when iteration starts, so a generator that is never iterated holds no permit.
        permit = enter()
        if permit.__class__ is not int:
            if fallback is None:
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            return (yield from fallback(*args, **kwargs))
        try:
            result = yield from func(*args, **kwargs)
        except BaseException as exc:  # GeneratorExit (closed early) is ignored by the guard
            failed(permit, exc)
            raise
        succeeded(permit)
        return result

    return wrapper


def _async_gen_shell(
    func: Callable[..., Any],
    guard: Guard,
    fallback: Callable[..., Any] | None,
    item_timeout: float | None,
) -> Callable[..., Any]:
    enter, succeeded, failed = guard.enter, guard.succeeded, guard.failed

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        permit = enter()
        if permit.__class__ is not int:
            if not isinstance(permit, CircuitOpenError):  # an asyncio store's coroutine
                permit = await permit
            if permit.__class__ is not int:
                if fallback is None:
                    try:
                        raise permit
                    finally:
                        del permit  # else frame -> error -> traceback -> frame: a cycle
                async for item in _as_async_iterator(fallback(*args, **kwargs)):
                    yield item
                return
        stream = func(*args, **kwargs)
        try:
            async for item in _items(stream, item_timeout):
                yield item
        except BaseException as exc:
            pending = failed(permit, exc)
            if pending is not None:
                await pending
            raise
        finally:
            await stream.aclose()
        pending = succeeded(permit)
        if pending is not None:
            await pending

    return wrapper


def _timed(func: Callable[..., Any], timeout: float) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.wait_for(func(*args, **kwargs), timeout)

    return call


async def _items(stream: Any, item_timeout: float | None) -> AsyncIterator[Any]:
    """Iterate ``stream``; with ``item_timeout``, waiting longer for one item times out."""
    if item_timeout is None:
        async for item in stream:
            yield item
        return
    while True:
        try:
            item = await asyncio.wait_for(stream.__anext__(), item_timeout)
        except StopAsyncIteration:
            return
        yield item


async def _as_async_iterator(result: Any) -> AsyncIterator[Any]:
    if inspect.isawaitable(result):
        result = await result
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in cast("Iterator[Any]", result):
            yield item
