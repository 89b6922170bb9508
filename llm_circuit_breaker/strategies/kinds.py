"""The four kinds of callable every strategy wraps -- plain, coroutine, generator and async
generator functions -- told apart in one place, so that every decorator dispatches alike."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from types import FunctionType
from typing import Any

__all__ = ["CallableKind", "default_name", "kind_of", "method_wrapper", "rewrapped"]


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
    if type(func) is FunctionType:  # the common case: read from its code's flags at once
        flags = func.__code__.co_flags
        if flags & _ASYNC_GENERATOR:
            return CallableKind.ASYNC_GENERATOR
        if flags & _COROUTINE:
            return CallableKind.COROUTINE
        if getattr(func, "_is_coroutine_marker", None) is not None:  # inspect's mark (3.12+)
            return _kind_of(func)
        return CallableKind.GENERATOR if flags & _GENERATOR else CallableKind.PLAIN
    return _kind_of(func)


_ASYNC_GENERATOR = inspect.CO_ASYNC_GENERATOR
_COROUTINE = inspect.CO_COROUTINE
_GENERATOR = inspect.CO_GENERATOR


def _kind_of(func: Callable[..., Any]) -> CallableKind:
    target: Any = func
    if inspect.iscoroutinefunction(func):  # marked as one (``unittest.mock.AsyncMock``)
        return CallableKind.COROUTINE
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


def method_wrapper(func: object) -> type | None:
    """``staticmethod`` or ``classmethod`` when ``func`` is one (a decorator stacked above
    ``@staticmethod`` / ``@classmethod``): the decorators guard the function it holds and wrap
    their wrapper alike. None for anything else."""
    if isinstance(func, staticmethod):
        return staticmethod
    if isinstance(func, classmethod):
        return classmethod
    return None


def rewrapped(kind: Any, wrapper: Any) -> Any:
    """``wrapper`` as a ``staticmethod`` / ``classmethod`` again, its ``.breaker`` (and the
    like) readable on the descriptor too."""
    method = kind(wrapper)
    for name in ("breaker", "scope", "breaker_for"):
        if hasattr(wrapper, name):
            try:
                setattr(method, name, getattr(wrapper, name))
            except AttributeError:  # pragma: no cover - descriptors without a __dict__
                pass
    return method


def default_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of what ``func`` calls: a function or method's own, the function a
    ``functools.partial`` wraps, a callable object's class."""
    import functools

    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    qualname = getattr(target, "__qualname__", None)
    module = getattr(target, "__module__", None)
    if not isinstance(qualname, str):  # a callable object: named after its class
        cls = type(target)
        qualname, module = cls.__qualname__, cls.__module__
    return f"{module}.{qualname}" if module else qualname
