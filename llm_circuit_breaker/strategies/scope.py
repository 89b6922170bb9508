"""Scoped breaker names: ``"openai:{model}"`` filled from each call's arguments.

:class:`ScopedName` reads the template's fields once and finds, from the function's signature,
where each is passed (position, keyword, default), so a call costs a few lookups and one
``str.format_map``; :class:`Scopes` finds each call's breaker, made on first use and cached
(the decorator's shells read it per call; :func:`scoped` gives a shell per breaker to the
kinds that need one).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import decimal
import functools
import inspect
import string
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker.breaker.registry import ScopeCache
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of

if TYPE_CHECKING:
    from llm_circuit_breaker.breaker.breaker import CircuitBreaker
    from llm_circuit_breaker.breaker.registry import BreakerRegistry

__all__ = ["ScopedName", "Scopes", "is_template", "scoped"]

_EMPTY = inspect.Parameter.empty

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def is_template(name: str | None) -> bool:
    """Whether ``name`` has fields to fill (``{model}``)."""
    return name is not None and "{" in name and "}" in name


class ScopedName:
    """The breaker name of one call of ``func``, from the template ``template``."""

    __slots__ = ("_lookups", "_owner", "inline", "key", "keyed", "parts", "template")

    def __init__(self, template: str, func: Callable[..., Any]) -> None:
        self.template = template
        self._owner = getattr(func, "__qualname__", repr(func))
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"bad circuit breaker name template {template!r}: {exc}") from None
        fields = [f for _, f, _, _ in parsed if f is not None]
        # The text around the field of a template with one plain field (``"openai:{model}"``,
        # no format spec, conversion, attribute or index): a name is then one f-string.
        self.parts: tuple[str, str] | None = None
        if len(fields) == 1 and fields[0].isidentifier():
            (before, field, spec, conversion), *after = parsed
            if field is not None and not spec and conversion is None:
                self.parts = (before, "".join(text for text, _, _, _ in after))
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
        # a one-field template's cache key for an argument that is not a str or an int
        self.keyed: Callable[[Any], Any] = self._keyed
        # What a shell reads to find a one-field template's argument in its own frame: its
        # position (past any call's arguments when it has none) and its keyword (a key no
        # call passes when it cannot be passed by keyword); ``key`` for the rest.
        self.inline: tuple[int, object] = (sys.maxsize, _NO_KEYWORD)
        if len(self._lookups) == 1:
            root, position, by_keyword, _ = self._lookups[0]
            self.inline = (
                sys.maxsize if position is None else position,
                root if by_keyword else _NO_KEYWORD,
            )

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
        """The key of a call for a one-field template: the argument itself when it is a str or
        an int (the hot path), else :meth:`_keyed`'s."""
        lookup = self._lookups[0]
        root, position, by_keyword, default = lookup
        value, keyed = self._value, self._keyed
        if position is not None and by_keyword:

            def key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if position < len(args):
                    found = args[position]
                elif root in kwargs:
                    found = kwargs[root]
                else:
                    found = default if default is not _EMPTY else value(lookup, args, kwargs)
                if found.__class__ is str or found.__class__ is int:
                    return found
                return keyed(found)

            return key

        def any_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            found = value(lookup, args, kwargs)
            return found if found.__class__ is str or found.__class__ is int else keyed(found)

        return any_key

    def _keyed(self, value: Any) -> Any:
        """The cache key of a one-field template's argument that is not a str or an int (see
        :class:`Scopes`)."""
        kind = value.__class__
        if kind in _BY_VALUE:  # True, False, None: no more to ask
            return (kind, value)
        if kind.__hash__ is None or isinstance(value, _FORMAT_APART):
            return (_BY_NAME, self._format({self._lookups[0][0]: value}))
        return (kind, value)

    def _keys(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The key of a call: the template's arguments, in order (each keyed as a one-field
        template's; the name itself when one is keyed by name)."""
        found, plain = self._value, True
        values = []
        for lookup in self._lookups:
            value = found(lookup, args, kwargs)
            if value.__class__ is not str and value.__class__ is not int:
                plain = False
            values.append(value)
        key = tuple(values)
        if plain:
            return key
        if any(
            value.__class__.__hash__ is None or isinstance(value, _FORMAT_APART) for value in key
        ):
            return (_BY_NAME, self.name(tuple(_wrapped(value) for value in key)))
        return tuple(_wrapped(value) for value in key)

    def name(self, key: Any) -> str:
        """The breaker name for a call's key (as :attr:`key` gives it)."""
        lookups = self._lookups
        if key.__class__ is tuple and len(key) == 2 and key[0] is _BY_NAME:
            return key[1]  # type: ignore[no-any-return]
        if len(lookups) == 1:  # the common case: no comprehension
            if key.__class__ is tuple:  # (class, value)
                key = key[1]
            return self._format({lookups[0][0]: key})
        return self._format(
            {
                lookup[0]: value[1] if value.__class__ is tuple else value
                for lookup, value in zip(lookups, key, strict=True)
            }
        )

    def _format(self, fields: dict[str, Any]) -> str:
        try:
            return self.template.format_map(fields)
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
_NO_KEYWORD = object()  # never a keyword argument's name
_BY_NAME = object()  # a call keyed by its name is cached as (_BY_NAME, the name)
_BY_VALUE = frozenset({bool, type(None)})  # the commonest other keys, their (class, value)
# Classes whose equal values may format apart (0.0 and -0.0, Decimal("1") and
# Decimal("1.0"), (1,) and (True,), one instant in two time zones): keyed by the name.
_FORMAT_APART = (
    float,
    complex,
    decimal.Decimal,
    tuple,
    frozenset,
    range,
    datetime.datetime,
    datetime.time,
)


def _wrapped(value: Any) -> Any:
    """A multi-field key's element: a str or an int itself, else ``(class, value)``."""
    if value.__class__ is str or value.__class__ is int:
        return value
    return (value.__class__, value)


def _root(field: str) -> str:
    """``model`` of ``model``, ``model.name`` and ``model[0]``."""
    for i, char in enumerate(field):
        if char in ".[":
            return field[:i]
    return field


class Scopes(ScopeCache):
    """The breakers of one scoped decoration by call key (the template's arguments), made on
    first use and cached (see :class:`ScopeCache`): a hit formats nothing. A key is an
    argument that is a str or an int (a model's name, a tenant's id: no cost), else
    ``(its class, it)``, so that equal arguments of two classes (``1``, ``True``, ``1.0``)
    are two scopes as their names are; an argument whose class's equal values may format
    apart (``0.0`` and ``-0.0``; floats, decimals, tuples, ...) or that is unhashable is keyed
    by the name it formats to (``(_BY_NAME, name)``: formatted per call). A multi-field
    template's key is the tuple of its arguments keyed so, or its name. The shells read
    the cache, ``key_of`` and ``mark_used`` inline (a hit costs no frame; a miss goes
    straight to ``__missing__``). The registry keeps the LRU order across decorations and drops idle
    breakers past ``max_breakers``; ``mark_used`` raises ``KeyError`` for a dropped one,
    and the shell then calls :meth:`missed`, as for an unhashable argument."""

    __slots__ = ("inline", "key_of", "keyed", "mark_used")

    def __init__(
        self,
        name_of: ScopedName,
        registry: BreakerRegistry,
        fields: Mapping[str, Any] | None = None,
        config: CircuitBreakerConfig | None = None,
        made: Callable[[CircuitBreaker], None] | None = None,
        *,
        stored_only: bool = False,
    ) -> None:
        super().__init__(
            registry,
            name_of.template,
            name_of.name,
            name_of.parts,
            fields,
            config,
            made,
            stored_only=stored_only,
        )
        self.key_of, self.keyed, self.inline = name_of.key, name_of.keyed, name_of.inline
        self.mark_used = registry.mark_used

    @property
    def cache(self) -> dict[Any, CircuitBreaker]:
        """The breakers by call key (this dict)."""
        return self

    def resolve(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CircuitBreaker:
        """The breaker of a call: cached, or made (remade if the registry dropped it)."""
        key = self.key_of(args, kwargs)
        try:
            found = self[key]
            self.mark_used(found.name)
        except (KeyError, TypeError):  # dropped, or an unhashable argument
            return self.missed(key)
        return found

    def missed(self, key: Any) -> CircuitBreaker:
        """The breaker for ``key`` after the shell's lookup raised: its breaker dropped by
        the registry (made again), or an argument whose hash raised (keyed by the name it
        gives)."""
        try:
            hash(key)
        except TypeError:
            name = self.name_of(key)
            by_name = (_BY_NAME, name)  # never a call's own key (no call passes _BY_NAME)
            found = self.get(by_name)
            if found is not None and self.registry.touch(name):
                return found
            if len(self) >= self.bound:
                self._prune()
            found = self._named(name, by_name)
            made = self.made
            if made is not None and (not self.stored_only or found.store is not None):
                made(found)
            self[by_name] = found
            return found
        return self.__missing__(key)


def scoped(
    func: Callable[..., Any],
    scopes: Scopes,
    shell_of: Callable[[CircuitBreaker], Callable[..., Any]],
) -> Any:
    """``func`` wrapped so that each call runs through a shell of its scope's breaker, one
    made per breaker and kept while the breaker is (generators, and ``first_token_timeout``,
    whose deadline names its breaker; the other decorations share one shell, see
    :mod:`.circuit`)."""
    shells: collections.OrderedDict[str, tuple[CircuitBreaker, Callable[..., Any]]] = (
        collections.OrderedDict()
    )
    resolve, registry = scopes.resolve, scopes.registry

    def shell(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any]:
        breaker = resolve(args, kwargs)
        entry = shells.get(breaker.name)
        if entry is not None and entry[0] is breaker:
            return entry[1]
        shells.pop(breaker.name, None)
        if len(shells) >= registry.max_breakers:
            with contextlib.suppress(KeyError):  # another thread emptied it first
                shells.popitem(last=False)
        found = shell_of(breaker)
        shells[breaker.name] = (breaker, found)
        return found

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
            return await shell(args, kwargs)(*args, **kwargs)

        return coroutine
    if kind is CallableKind.GENERATOR:

        @functools.wraps(func)
        def generator(*args: Any, **kwargs: Any) -> Any:
            return (yield from shell(args, kwargs)(*args, **kwargs))

        return generator

    @functools.wraps(func)
    def plain(*args: Any, **kwargs: Any) -> Any:
        return shell(args, kwargs)(*args, **kwargs)

    return plain
