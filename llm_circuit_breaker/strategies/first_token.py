"""``first_token_timeout`` for decorated functions: the longest wait from the call to a
stream's first *content* item.

What counts is :func:`~llm_circuit_breaker._judge.content.is_content`'s answer: comments,
``ping`` / keep-alive events, role-only or empty deltas and lifecycle events do not, so a
provider that keeps a connection alive without answering still times out. :func:`bounded`
wraps a function of any of the four kinds into one of the same kind: a generator's items, an
async generator's, or the iterator / async iterator a function returns (an SDK's stream) are
read against the deadline until the first content item, the items before it held back
until it comes (a timeout then finds nothing yielded, so ``with_retry`` tries again); after
it they pass untouched.

An async wait is cut at the deadline. A sync one cannot be (a thread is not interrupted): a
sync stream is checked as each item comes, so any item past the deadline, content included,
fails the attempt as it comes, while complete silence is bounded by the read timeout of the
client underneath.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_circuit_breaker._judge.content import is_content
from llm_circuit_breaker.breaker.clock import running_library
from llm_circuit_breaker.errors import RequestTimeoutError
from llm_circuit_breaker.strategies.gate import PLAIN, aclose_inner, is_stream
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of

__all__ = ["bounded"]


class Deadline:
    """One call's deadline for its first content item."""

    __slots__ = ("at", "name", "seconds")

    def __init__(self, seconds: float, name: str) -> None:
        self.seconds = seconds
        self.name = name
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"no content within {self.seconds:g} s (first_token_timeout of circuit {self.name!r})"
        )

    def check(self, item: Any) -> bool:
        """Whether ``item`` is the first content (the deadline is met); raise when it is not
        and the deadline has passed."""
        if is_content(item):
            return True
        if self.left() <= 0:
            raise self.error()
        return False

    def check_late(self, item: Any) -> bool:
        """:meth:`check` for an item read in a thread, which no deadline cut: one that came
        after the deadline missed it, content or not."""
        if self.left() <= 0:
            raise self.error()
        return is_content(item)


def bounded(func: Callable[..., Any], seconds: float, name: str) -> Callable[..., Any]:
    """``func`` (of any kind) with the deadline ``seconds`` on its stream's first content."""
    kind = kind_of(func)
    if kind is CallableKind.GENERATOR:

        @functools.wraps(func)
        def generator(*args: Any, **kwargs: Any) -> Any:
            return (yield from _items(func(*args, **kwargs), Deadline(seconds, name)))

        return generator
    if kind is CallableKind.ASYNC_GENERATOR:

        @functools.wraps(func)
        async def async_generator(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            stream = BoundedAsyncStream(func(*args, **kwargs), Deadline(seconds, name))
            try:
                async for item in stream:
                    yield item
            finally:
                await stream.aclose()

        return async_generator
    if kind is CallableKind.COROUTINE:

        @functools.wraps(func)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            deadline = Deadline(seconds, name)
            result = await func(*args, **kwargs)
            if result.__class__ not in PLAIN and hasattr(result.__class__, "__anext__"):
                return BoundedAsyncStream(result, deadline)
            if result.__class__ not in PLAIN and is_stream(result):
                return BoundedStream(result, deadline)
            return result

        return coroutine

    @functools.wraps(func)
    def plain(*args: Any, **kwargs: Any) -> Any:
        deadline = Deadline(seconds, name)
        result = func(*args, **kwargs)
        if result.__class__ in PLAIN or not is_stream(result):
            return result
        if hasattr(result.__class__, "__anext__"):
            return BoundedAsyncStream(result, deadline)
        return BoundedStream(result, deadline)

    return plain


def _items(stream: Any, deadline: Deadline) -> Any:
    """A generator's items against ``deadline``, held back until the first content (so a
    timeout finds nothing yielded yet, and ``with_retry`` may try again); then the generator
    itself, ``send`` and ``throw`` included, its return value kept."""
    held: list[Any] = []
    try:
        while True:
            if deadline.left() <= 0:
                raise deadline.error()
            try:
                item = next(stream)
            except StopIteration as stop:
                yield from held
                return stop.value
            held.append(item)
            if deadline.check_late(item):
                break
    except BaseException:
        stream.close()
        raise
    yield from held
    return (yield from stream)


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # the timeout is the error to raise
            pass


class BoundedStream:
    """An iterator read against a deadline until its first content item, the items before it
    held back until it comes (other attributes are the stream's own: an SDK stream's
    ``response`` ...)."""

    __slots__ = ("_deadline", "_held", "_inner")

    def __init__(self, inner: Any, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline: Deadline | None = deadline
        self._held: collections.deque[Any] = collections.deque()

    def __iter__(self) -> BoundedStream:
        return self

    def __next__(self) -> Any:
        held = self._held
        if held:
            return held.popleft()
        deadline = self._deadline
        if deadline is None:
            return next(self._inner)
        try:
            while True:
                if deadline.left() <= 0:
                    raise deadline.error()
                try:
                    item = next(self._inner)
                except StopIteration:
                    self._deadline = None
                    if held:
                        return held.popleft()
                    raise
                held.append(item)
                if deadline.check_late(item):
                    break
        except RequestTimeoutError:
            _close(self._inner)
            raise
        self._deadline = None
        return held.popleft()

    def close(self) -> None:
        _close(self._inner)

    def __enter__(self) -> BoundedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class BoundedAsyncStream:
    """:class:`BoundedStream` for an async iterator: each wait is cut at the deadline."""

    __slots__ = ("_deadline", "_held", "_inner")

    def __init__(self, inner: Any, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline: Deadline | None = deadline
        self._held: collections.deque[Any] = collections.deque()

    def __aiter__(self) -> BoundedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        held = self._held
        if held:
            return held.popleft()
        deadline = self._deadline
        if deadline is None:
            return await self._inner.__anext__()
        try:
            while True:
                if deadline.left() <= 0:
                    raise deadline.error()
                try:
                    item = await _within(self._inner.__anext__(), deadline)
                except StopAsyncIteration:
                    self._deadline = None
                    if held:
                        return held.popleft()
                    raise
                held.append(item)
                if deadline.check(item):
                    break
        except RequestTimeoutError:
            await self.aclose()
            raise
        self._deadline = None
        return held.popleft()

    async def aclose(self) -> None:
        await aclose_inner(self._inner)

    async def __aenter__(self) -> BoundedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def _within(awaitable: Any, deadline: Deadline) -> Any:
    """Await ``awaitable`` until the deadline, timed by the running library."""
    left = max(0.0, deadline.left())
    if running_library() == "trio":
        import trio

        try:
            with trio.fail_after(left):
                return await awaitable
        except trio.TooSlowError:
            raise deadline.error() from None
    import asyncio  # loaded already: a coroutine is running

    try:
        return await asyncio.wait_for(awaitable, left)
    except asyncio.TimeoutError:  # not the built-in TimeoutError on Python 3.10
        if deadline.left() > 0:
            raise  # the stream's own timeout
        raise deadline.error() from None
