"""Faults of this process around a call: a closed event loop or client, a pool or session used
from the wrong loop, an invalid header value. They say nothing about the provider, so the
breaker ignores them and ``with_retry`` raises them as they are, also when an SDK wraps them
(openai's ``APIConnectionError`` whose ``__cause__`` is one)."""

from __future__ import annotations

import re

__all__ = ["is_local"]

# RuntimeErrors (and aiohttp's "Connector is closed") raised by asyncio, anyio, httpx and
# aiohttp when a client outlives its event loop or is used after close().
_LOCAL_TEXT = re.compile(
    r"event loop is closed|attached to a different (?:event )?loop|"
    r"bound to a different event loop|client has been closed|cannot reopen a client|"
    r"session is closed|connector is closed",
    re.IGNORECASE,
)
_TEXT_CLASSES = frozenset({"RuntimeError", "ClientConnectionError"})
# h11/httpcore/httpx's LocalProtocolError: the request itself cannot be sent (a header value
# with a newline); UnsupportedProtocol: a URL without http(s); anyio's ClosedResourceError.
_LOCAL_NAMES = frozenset({"LocalProtocolError", "UnsupportedProtocol", "ClosedResourceError"})


def is_local(exc: BaseException) -> bool:
    """Whether ``exc`` itself is a fault of this process (its chain is walked by the caller)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _LOCAL_NAMES:
        return True
    if names & _TEXT_CLASSES:
        try:
            return _LOCAL_TEXT.search(str(exc)[:300]) is not None
        except Exception:  # a hostile __str__
            return False
    return False
