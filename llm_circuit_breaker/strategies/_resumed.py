"""A stream whose first item was read (to decide on a failover), handed on whole: that item,
then the rest, with the stream's own attributes."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["END", "AsyncResumed", "Resumed", "first_item"]

END = object()  # a stream that ended before its first item


async def first_item(stream: Any) -> Any:
    """The async stream's first item, or :data:`END`."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return END


class Resumed:
    """A stream whose first item was read to decide on the failover: that item, then the
    rest; other attributes (``close``, ``response`` ...) are the stream's own."""

    def __init__(self, stream: Any, first: Any) -> None:
        self._stream = stream
        self._first = first

    def __iter__(self) -> Resumed:
        return self

    def __next__(self) -> Any:
        first, self._first = self._first, END
        if first is not END:
            return first
        return next(self._stream)

    def __enter__(self) -> Resumed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncResumed:
    """:class:`Resumed` for an async stream."""

    def __init__(self, stream: Any, first: Any) -> None:
        self._stream = stream
        self._first = first

    def __aiter__(self) -> AsyncResumed:
        return self

    async def __anext__(self) -> Any:
        first, self._first = self._first, END
        if first is not END:
            return first
        return await self._stream.__anext__()

    async def __aenter__(self) -> AsyncResumed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        close = getattr(self._stream, "aclose", None) or getattr(self._stream, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
