"""The shells ``@circuit_breaker`` puts around a function: plain, coroutine, generator and
async generator. Each admits through its :class:`Gate`, runs the call and reports it; the
refusal, the throttle's wait and the fallback are the gate's, written once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

from llm_circuit_breaker._core.throttle import Wait
from llm_circuit_breaker.strategies.gate import (
    PLAIN,
    AsyncGuardedStream,
    Gate,
    GuardedStream,
    is_stream,
)

__all__ = ["shell_for"]


def shell_for(func: Callable[..., Any], gate: Gate, call_timeout: float | None) -> Any:
    """The shell that fits ``func``: plain, coroutine, generator or async generator."""
    chosen = gate.breaker
    if inspect.isasyncgenfunction(func):
        return _async_gen_shell(func, gate, call_timeout)
    if inspect.iscoroutinefunction(func):
        return _async_shell(func, gate, call_timeout)
    if chosen.is_async:
        raise TypeError(
            f"circuit {chosen.name!r} keeps its state in an asyncio store: it can guard "
            f"coroutine functions and async generators, not {func.__qualname__}"
        )
    if call_timeout is not None:
        raise TypeError(
            f"call_timeout applies to coroutine functions and async generators; "
            f"{func.__qualname__} is neither (a thread cannot be timed out safely)"
        )
    if inspect.isgeneratorfunction(func):
        return _gen_shell(func, gate)
    return _sync_shell(func, gate)


def _sync_shell(func: Callable[..., Any], gate: Gate) -> Callable[..., Any]:
    enter, succeeded, failed, refuse = gate.enter, gate.succeeded, gate.failed, gate.refuse
    no_fallback, plain, waiting = gate.fallback is None, PLAIN, Wait

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        permit: Any = enter()
        if permit.__class__ is not int:  # a throttle slot to wait for, or a refusal
            if permit.__class__ is waiting:
                permit = gate.wait(permit)
            elif no_fallback:  # raised in this frame: failing fast is a hot path
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                return refuse(args, kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            failed(permit, exc)
            raise
        if result.__class__ not in plain and is_stream(result):
            return GuardedStream(result, gate, permit)
        succeeded(permit)
        return result

    return wrapper


def _async_shell(
    func: Callable[..., Any], gate: Gate, call_timeout: float | None
) -> Callable[..., Any]:
    enter, succeeded, failed, refuse = gate.enter, gate.succeeded, gate.failed, gate.refuse
    no_fallback, plain, waiting = gate.fallback is None, PLAIN, Wait
    store_io, name = gate.store_io, gate.breaker.name
    call = func if call_timeout is None else _timed(func, call_timeout, name)

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        permit: Any = (await gate.aenter()) if store_io else enter()
        if permit.__class__ is not int:
            if permit.__class__ is waiting:
                permit = await gate.await_slot(permit)
            elif no_fallback:  # raised in this frame: failing fast is a hot path
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                return await _awaited(refuse(args, kwargs))
        try:
            result = await call(*args, **kwargs)
        except BaseException as exc:
            if store_io:
                await gate.afailed(permit, exc)
            else:
                failed(permit, exc)
            raise
        if result.__class__ not in plain and is_stream(result):
            return AsyncGuardedStream(result, gate, permit)
        if store_io:
            await gate.asucceeded(permit)
        else:
            succeeded(permit)
        return result

    return wrapper


def _gen_shell(func: Callable[..., Any], gate: Gate) -> Callable[..., Any]:
    enter, succeeded, failed, refuse = gate.enter, gate.succeeded, gate.failed, gate.refuse
    no_fallback, waiting = gate.fallback is None, Wait

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Admitted when iteration starts, so a generator that is never iterated holds no permit.
        permit: Any = enter()
        if permit.__class__ is not int:
            if permit.__class__ is waiting:
                permit = gate.wait(permit)
            elif no_fallback:
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                return (yield from refuse(args, kwargs))
        try:
            result = yield from func(*args, **kwargs)
        except BaseException as exc:  # GeneratorExit (closed early) is ignored by the verdict
            failed(permit, exc)
            raise
        succeeded(permit)
        return result

    return wrapper


def _async_gen_shell(
    func: Callable[..., Any], gate: Gate, item_timeout: float | None
) -> Callable[..., Any]:
    enter, succeeded, failed, refuse = gate.enter, gate.succeeded, gate.failed, gate.refuse
    no_fallback, waiting = gate.fallback is None, Wait
    store_io, name = gate.store_io, gate.breaker.name

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        permit: Any = (await gate.aenter()) if store_io else enter()
        if permit.__class__ is not int:
            if permit.__class__ is waiting:
                permit = await gate.await_slot(permit)
            elif no_fallback:
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                async for item in _as_async_iterator(refuse(args, kwargs)):
                    yield item
                return
        stream = func(*args, **kwargs)
        try:
            async for item in _items(stream, item_timeout, name):
                yield item
        except BaseException as exc:
            if store_io:
                await gate.afailed(permit, exc)
            else:
                failed(permit, exc)
            raise
        finally:
            await stream.aclose()
        if store_io:
            await gate.asucceeded(permit)
        else:
            succeeded(permit)

    return wrapper


def _timeout_error(name: str, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"call guarded by circuit {name!r} took longer than call_timeout={timeout:g}s"
    )


def _timed(func: Callable[..., Any], timeout: float, name: str) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        import asyncio  # loaded already: a coroutine is running

        try:
            return await asyncio.wait_for(func(*args, **kwargs), timeout)
        except asyncio.TimeoutError:  # not the built-in TimeoutError on Python 3.10
            raise _timeout_error(name, timeout) from None

    return call


async def _items(stream: Any, item_timeout: float | None, name: str) -> AsyncIterator[Any]:
    """Iterate ``stream``; with ``item_timeout``, waiting longer for one item times out."""
    if item_timeout is None:
        async for item in stream:
            yield item
        return
    import asyncio  # loaded already: a coroutine is running

    while True:
        try:
            item = await asyncio.wait_for(stream.__anext__(), item_timeout)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise _timeout_error(name, item_timeout) from None
        yield item


async def _awaited(result: Any) -> Any:
    return (await result) if inspect.isawaitable(result) else result


async def _as_async_iterator(result: Any) -> AsyncIterator[Any]:
    result = await _awaited(result)
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in cast("Iterator[Any]", result):
            yield item
