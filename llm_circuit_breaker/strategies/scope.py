"""Scoped breaker names: ``"openai:{model}"`` filled from each call's arguments.

:class:`ScopedName` reads the template's fields once and finds, from the function's signature,
where each is passed (position, keyword, default), so a call costs a few lookups and one
``str.format_map``; :func:`scoped` wraps a function so that each call runs through the shell
of its own breaker, made on first use and cached.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import string
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of

if TYPE_CHECKING:
    from llm_circuit_breaker.breaker.registry import BreakerRegistry

__all__ = ["ScopedName", "is_template", "scoped"]

_EMPTY = inspect.Parameter.empty
# The shells of one scoped decoration: call key -> (breaker name, shell), oldest first.
Shells = collections.OrderedDict[Any, tuple[str, Callable[..., Any]]]
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def is_template(name: str | None) -> bool:
    """Whether ``name`` has fields to fill (``{model}``)."""
    return name is not None and "{" in name and "}" in name


class ScopedName:
    """The breaker name of one call of ``func``, from the template ``template``."""

    __slots__ = ("_lookups", "_owner", "key", "template")

    def __init__(self, template: str, func: Callable[..., Any]) -> None:
        self.template = template
        self._owner = getattr(func, "__qualname__", repr(func))
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise ValueError(f"bad circuit breaker name template {template!r}: {exc}") from None
        parameters = inspect.signature(func).parameters
        positional = [p.name for p in parameters.values() if p.kind in _POSITIONAL]
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self._lookups: list[tuple[str, int | None, bool, Any]] = []
        for root in dict.fromkeys(_root(f) for f in fields):
            if not root.isidentifier():
                raise ValueError(
                    f"circuit breaker name {template!r}: fields name arguments, as in {{model}}"
                )
            parameter = parameters.get(root)
            if (parameter is None and not takes_any) or (
                parameter is not None and parameter.kind not in (*_POSITIONAL, _KEYWORD_ONLY)
            ):
                raise TypeError(
                    f"circuit breaker name {template!r} needs argument {root!r}, which "
                    f"{self._owner} does not take"
                )
            position = positional.index(root) if root in positional else None
            by_keyword = parameter is None or parameter.kind is not _POSITIONAL[0]
            default = _EMPTY if parameter is None else parameter.default
            self._lookups.append((root, position, by_keyword, default))

        self.key = self._one_key() if len(self._lookups) == 1 else self._keys

    def _value(self, lookup: tuple[str, int | None, bool, Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:  # fmt: skip
        root, position, by_keyword, default = lookup
        if position is not None and position < len(args):
            return args[position]
        if by_keyword and root in kwargs:
            return kwargs[root]
        if default is not _EMPTY:
            return default
        raise TypeError(
            f"{self._owner}() was called without {root!r}, which its circuit breaker "
            f"name {self.template!r} needs"
        )

    def _one_key(self) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
        """The key of a call for a one-field template: the argument itself (the hot path)."""
        lookup = self._lookups[0]
        root, position, by_keyword, default = lookup
        value = self._value
        if position is not None and by_keyword:

            def key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if position < len(args):
                    return args[position]
                if root in kwargs:
                    return kwargs[root]
                return default if default is not _EMPTY else value(lookup, args, kwargs)

            return key
        return lambda args, kwargs: value(lookup, args, kwargs)

    def _keys(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The key of a call: the template's arguments, in order."""
        return tuple(self._value(lookup, args, kwargs) for lookup in self._lookups)

    def name(self, key: Any) -> str:
        """The breaker name for a call's key."""
        values = key if len(self._lookups) != 1 else (key,)
        try:
            return self.template.format_map(
                {lookup[0]: value for lookup, value in zip(self._lookups, values, strict=True)}
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise TypeError(
                f"circuit breaker name {self.template!r} cannot be filled for this call of "
                f"{self._owner}: {type(exc).__name__}: {exc}"
            ) from None

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The name for a call with ``args`` and ``kwargs``; ``TypeError`` naming a missing
        argument."""
        return self.name(self.key(args, kwargs))


_KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY


def _root(field: str) -> str:
    """``model`` of ``model``, ``model.name`` and ``model[0]``."""
    for i, char in enumerate(field):
        if char in ".[":
            return field[:i]
    return field


def scoped(
    func: Callable[..., Any],
    name_of: ScopedName,
    shell_for_name: Callable[[str], Callable[..., Any]],
    registry: BreakerRegistry,
) -> Any:
    """``func`` wrapped so that each call runs through the shell of its scope's breaker."""
    # The breaker name and shell of each call key (the template's arguments): a cache hit
    # formats nothing. ``touch`` keeps the registry's LRU order and says whether the breaker
    # is still registered.
    shells: Shells = collections.OrderedDict()
    touch, key_of, name_of_key = registry.touch, name_of.key, name_of.name
    mark_used = registry.mark_used

    def shell(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any]:
        key = key_of(args, kwargs)
        try:
            name, found = shells[key]
            mark_used(name)  # KeyError: the registry dropped it
        except KeyError:
            pass
        except TypeError:  # an unhashable argument: keyed by the name it gives
            key = name_of_key(key)
            return _cached(shells, key, key, touch, shell_for_name, registry)
        else:
            return found
        return _cached(shells, key, name_of_key(key), touch, shell_for_name, registry)

    kind = kind_of(func)
    if kind is CallableKind.ASYNC_GENERATOR:

        @functools.wraps(func)
        async def agen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            inner = shell(args, kwargs)(*args, **kwargs)
            try:
                async for item in inner:
                    yield item
            finally:
                await inner.aclose()

        return agen
    if kind is CallableKind.COROUTINE:

        @functools.wraps(func)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            try:  # the cached path inline: one frame less per call
                name, found = shells[key_of(args, kwargs)]
                mark_used(name)
            except (KeyError, TypeError):
                found = shell(args, kwargs)
            return await found(*args, **kwargs)

        return coroutine
    if kind is CallableKind.GENERATOR:

        @functools.wraps(func)
        def generator(*args: Any, **kwargs: Any) -> Any:
            return (yield from shell(args, kwargs)(*args, **kwargs))

        return generator

    @functools.wraps(func)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:  # the cached path inline: one frame less per call
            name, found = shells[key_of(args, kwargs)]
            mark_used(name)
        except (KeyError, TypeError):  # made, remade, or an unhashable argument
            found = shell(args, kwargs)
        return found(*args, **kwargs)

    return plain


def _cached(
    shells: Shells,
    key: Any,
    name: str,
    touch: Callable[[str], bool],
    shell_for_name: Callable[[str], Callable[..., Any]],
    registry: BreakerRegistry,
) -> Callable[..., Any]:
    """The shell for ``name``, made (or remade, if the registry dropped its breaker) and kept
    under ``key``."""
    entry = shells.pop(key, None)
    if entry is not None and touch(name):
        shells[key] = entry
        return entry[1]
    # Bounded as the registry is: the oldest shell goes (a shell whose breaker the registry
    # dropped goes when its key is next seen, or in its turn), one at a time, never all at once.
    if len(shells) >= registry.max_breakers:
        with contextlib.suppress(KeyError):  # another thread emptied it first
            shells.popitem(last=False)
    found = shell_for_name(name)
    shells[key] = (name, found)
    return found
