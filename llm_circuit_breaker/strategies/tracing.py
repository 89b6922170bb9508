"""The slot through which tracing sees each guarded call (filled by
:mod:`llm_circuit_breaker.observability.otel`; the library itself imports no tracer).

Every guarded entry point (the decorators' shells, the httpx transports) reads :data:`hook`
once per call. While it is None, that read is all a call pays. While an instrumentation is on,
the shell hands the call to the hook, which opens its span and calls the shell again with
:data:`PASSING` set to that shell, so that the second time round the call runs as usual::

    if tracing.hook is not None and tracing.passing() is not wrapper:
        return tracing.hook.call(wrapper, breaker, args, kwargs)

The hook's methods, one per kind of callable (``breaker`` is the shell's breaker, None for
the shells that hold several: ``with_retry``, ``with_fallbacks``, ``with_pool``,
``with_hedging``):

* ``call(wrapper, breaker, args, kwargs)`` and ``acall(...)`` (awaited) for functions and
  coroutine functions, ``gen(...)`` and ``agen(...)`` (iterated) for generators and async
  generators;
* ``request(transport, request)`` and ``arequest(transport, request)`` (awaited) for an httpx
  transport's ``handle_request`` / ``handle_async_request``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["PASSING", "hook", "passing"]

hook: Any = None  # the tracing hook, or None: nothing is traced

# The shell the hook is calling right now: it runs the call as usual (no second span).
PASSING: ContextVar[object] = ContextVar("llm_circuit_breaker_passing", default=None)
_get, _set = PASSING.get, PASSING.set


def passing() -> object:
    """The shell the hook is calling, read once: it is cleared as it is read, so that the
    call's own body (a recursive call of the same function, a task it starts) is traced
    again. The hook's ``PASSING.reset`` restores what was there before."""
    shell = _get()
    if shell is not None:
        _set(None)
    return shell
