"""The four kinds of callable every strategy wraps -- plain, coroutine, generator and async
generator functions -- told apart in one place, so that every decorator dispatches alike."""

from __future__ import annotations

import enum
import inspect
import weakref
from collections.abc import Callable
from types import FunctionType
from typing import Any

__all__ = ["CallableKind", "kind_of"]


class CallableKind(str, enum.Enum):
    """What calling a function gives: a value, a coroutine, a generator or an async generator."""

    PLAIN = "sync function"
    COROUTINE = "coroutine function"
    GENERATOR = "generator function"
    ASYNC_GENERATOR = "async generator function"

    def __str__(self) -> str:
        return self.value


def kind_of(func: Callable[..., Any]) -> CallableKind:
    """The kind of ``func``: a function, a bound method, a ``functools.partial`` of one, or an
    object whose ``__call__`` is one (a class is a plain callable)."""
    if type(func) is FunctionType:  # remembered: a scoped decoration asks per new scope
        kind = _KINDS.get(func)
        if kind is None:
            kind = _KINDS[func] = _kind_of(func)
        return kind
    return _kind_of(func)


_KINDS: weakref.WeakKeyDictionary[Callable[..., Any], CallableKind] = weakref.WeakKeyDictionary()


def _kind_of(func: Callable[..., Any]) -> CallableKind:
    target: Any = func
    if not isinstance(func, type) and not inspect.isroutine(func) and not _is_partial(func):
        try:
            target = type(func).__call__  # a callable object: what its call gives
        except AttributeError:
            pass
    if inspect.isasyncgenfunction(target):
        return CallableKind.ASYNC_GENERATOR
    if inspect.iscoroutinefunction(target):
        return CallableKind.COROUTINE
    if inspect.isgeneratorfunction(target):
        return CallableKind.GENERATOR
    return CallableKind.PLAIN


def _is_partial(func: object) -> bool:
    import functools

    return isinstance(func, functools.partial)
