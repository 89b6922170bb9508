"""A scoped decoration's call keys: every call is guarded by the breaker its own arguments
name, also when arguments of two classes compare equal and hash alike (``1``, ``True``,
``1.0``, ``Decimal(1)``) or when equal values of one class format apart (``0.0`` and
``-0.0``). Each call's breaker is found by the failure it records (``failure_threshold=1``:
the one breaker it opens)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from llm_circuit_breaker import BreakerRegistry, CircuitOpenError, CircuitState, circuit_breaker
from llm_circuit_breaker.breaker.registry import ScopeCache

Invoke = Callable[..., Any]  # (*args, fail=..., **kwargs) -> the call's result, run to its end

KINDS = ["plain", "coroutine", "generator", "async_generator", "first_token"]


class Failed(Exception):
    """What a call told to fail raises."""


def _decorate(kind: str, registry: BreakerRegistry, template: str = "t:{k}") -> Invoke:
    """A decoration of ``kind`` with a one- or two-field template, and a plain callable that
    runs one call of it (to its end, for generators)."""
    fields: dict[str, Any] = {"registry": registry, "failure_threshold": 1}
    two = "{b" in template

    if kind == "plain":
        if two:

            @circuit_breaker(template, **fields)
            def plain2(k: Any, b: Any, fail: bool = False) -> Any:
                if fail:
                    raise Failed
                return (k, b)

            return plain2

        @circuit_breaker(template, **fields)
        def plain(k: Any, fail: bool = False) -> Any:
            if fail:
                raise Failed
            return k

        return plain
    if kind == "coroutine":

        @circuit_breaker(template, **fields)
        async def coroutine(k: Any, b: Any = None, fail: bool = False) -> Any:
            if fail:
                raise Failed
            return k

        return _run_coroutine(coroutine)
    if kind == "generator":

        @circuit_breaker(template, **fields)
        def generator(k: Any, b: Any = None, fail: bool = False) -> Iterator[Any]:
            yield k
            if fail:
                raise Failed

        return _run_generator(generator)

    if kind == "first_token":
        fields["first_token_timeout"] = 30.0  # a shell per breaker

    @circuit_breaker(template, **fields)
    async def agen(k: Any, b: Any = None, fail: bool = False) -> AsyncIterator[Any]:
        yield k
        if fail:
            raise Failed

    return _run_async_generator(agen)


def _run_coroutine(func: Any) -> Invoke:
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(func(*args, **kwargs))

    run.breaker_for = func.breaker_for  # type: ignore[attr-defined]
    return run


def _run_generator(func: Any) -> Invoke:
    def run(*args: Any, **kwargs: Any) -> Any:
        return list(func(*args, **kwargs))

    run.breaker_for = func.breaker_for  # type: ignore[attr-defined]
    return run


def _run_async_generator(func: Any) -> Invoke:
    def run(*args: Any, **kwargs: Any) -> Any:
        async def drain() -> list[Any]:
            return [item async for item in func(*args, **kwargs)]

        return asyncio.run(drain())

    run.breaker_for = func.breaker_for  # type: ignore[attr-defined]
    return run


def _guard(registry: BreakerRegistry, call: Invoke, *args: Any, **kwargs: Any) -> str:
    """The name of the one breaker a failing call opens (every breaker reset after)."""
    registry.reset_all()
    with pytest.raises(Failed):
        call(*args, fail=True, **kwargs)
    opened = [b.name for b in registry.breakers() if b.state is CircuitState.OPEN]
    assert len(opened) == 1, opened
    with pytest.raises(CircuitOpenError):  # and the same call is refused by it
        call(*args, **kwargs)
    registry.reset_all()
    return opened[0]


def _cache_of(call: Any) -> ScopeCache:
    """The scope cache a scoped decoration reads (through its shell, or its shells')."""
    seen: set[int] = set()
    todo = [call]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ScopeCache):
            return item
        owner = getattr(item, "__self__", None)
        if owner is not None:
            todo.append(owner)
        for cell in getattr(item, "__closure__", None) or ():
            try:
                todo.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
    raise AssertionError("no scope cache")


def _consistent(registry: BreakerRegistry, call: Any) -> None:
    """Every cached key's breaker is the one its key names, and the registry's LRU entry of
    each scope names the key its breaker is cached under."""
    cache = _cache_of(call)
    for key, breaker in list(cache.items()):
        assert breaker.name == cache.name_of(key), (key, breaker.name)
    for name, key in list(registry._scoped.items()):
        if key is not None and key in cache and registry._breakers.get(name) is cache[key]:
            assert cache.name_of(key) == name


@pytest.mark.parametrize("kind", KINDS)
def test_one_true_and_one_point_zero_are_three_scopes(kind: str) -> None:
    registry = BreakerRegistry()
    call = _decorate(kind, registry)
    values: list[tuple[Any, str]] = [
        (1, "t:1"),
        (True, "t:True"),
        (1.0, "t:1.0"),
        (Decimal(1), "t:1"),  # formats as the int does: the same breaker, rightly
        (Fraction(1), "t:1"),
        (Decimal("1.0"), "t:1.0"),
    ]
    for value, name in values:  # each met first, then again after the others
        assert _guard(registry, call, value) == name
        assert _guard(registry, call, k=value) == name
    for value, name in reversed(values):
        assert _guard(registry, call, value) == name
        assert call.breaker_for(value) is registry.get(name)  # type: ignore[attr-defined]
    _consistent(registry, call)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_false_and_both_float_zeros_are_their_own_scopes(kind: str) -> None:
    registry = BreakerRegistry()
    call = _decorate(kind, registry)
    values: list[tuple[Any, str]] = [
        (0, "t:0"),
        (False, "t:False"),
        (0.0, "t:0.0"),
        (-0.0, "t:-0.0"),
        (Decimal("-0"), "t:-0"),
        (Decimal("0.00"), "t:0.00"),
        (complex(0, 0), "t:0j"),
        (complex(-0.0, 0), "t:(-0+0j)"),
        (None, "t:None"),
    ]
    for _ in range(2):
        for value, name in values:
            assert _guard(registry, call, value) == name
    _consistent(registry, call)


def test_equal_values_of_one_class_that_format_apart_are_their_own_scopes() -> None:
    registry = BreakerRegistry()
    call = _decorate("plain", registry)
    utc = datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.timezone.utc)
    paris = utc.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
    assert utc == paris
    values: list[tuple[Any, str]] = [
        (Decimal("2"), "t:2"),
        (Decimal("2.0"), "t:2.0"),
        ((1, "a"), "t:(1, 'a')"),
        ((True, "a"), "t:(True, 'a')"),
        (frozenset({1}), "t:frozenset({1})"),
        (frozenset({True}), "t:frozenset({True})"),
        (utc, f"t:{utc}"),
        (paris, f"t:{paris}"),
        (range(0), "t:range(0, 0)"),
        (range(5, 5), "t:range(5, 5)"),
    ]
    for _ in range(2):
        for value, name in values:
            assert _guard(registry, call, value) == name
    _consistent(registry, call)


@pytest.mark.parametrize("kind", KINDS)
def test_multi_field_templates_with_mixed_types(kind: str) -> None:
    registry = BreakerRegistry()
    call = _decorate(kind, registry, "t:{k}:{b}")
    values: list[tuple[tuple[Any, Any], str]] = [
        ((1, "x"), "t:1:x"),
        ((True, "x"), "t:True:x"),
        ((1.0, "x"), "t:1.0:x"),
        (("x", 0), "t:x:0"),
        (("x", False), "t:x:False"),
        (("x", -0.0), "t:x:-0.0"),
        (("x", 0.0), "t:x:0.0"),
        ((1, True), "t:1:True"),
        ((True, 1), "t:True:1"),
    ]
    for _ in range(2):
        for (k, b), name in values:
            assert _guard(registry, call, k, b) == name
            assert _guard(registry, call, k=k, b=b) == name
            assert call.breaker_for(k, b) is registry.get(name)  # type: ignore[attr-defined]
    _consistent(registry, call)


def test_a_conversion_or_a_format_spec_names_each_call_as_it_formats() -> None:
    registry = BreakerRegistry()
    spelled = _decorate("plain", registry, "r:{k!r}")
    padded = _decorate("plain", registry, "p:{k:03d}")
    fixed = _decorate("plain", registry, "f:{k:.1f}")
    for _ in range(2):
        assert _guard(registry, spelled, 1) == "r:1"
        assert _guard(registry, spelled, True) == "r:True"
        assert _guard(registry, spelled, "1") == "r:'1'"
        assert _guard(registry, padded, 1) == "p:001"
        assert _guard(registry, padded, True) == "p:001"  # formats alike: one breaker
        assert _guard(registry, fixed, 0.0) == "f:0.0"
        assert _guard(registry, fixed, -0.0) == "f:-0.0"
        assert _guard(registry, fixed, 0) == "f:0.0"
    for call in (spelled, padded, fixed):
        _consistent(registry, call)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bound", [2, 3])
def test_past_max_breakers_one_key_form_dropping_leaves_the_other_s_entry(
    kind: str, bound: int
) -> None:
    """``t:1`` and ``t:True`` live side by side; each drops and comes back through misses of
    other scopes, and no drop removes or corrupts the other form's entry."""
    registry = BreakerRegistry(max_breakers=bound)
    call = _decorate(kind, registry)
    forms: list[tuple[Any, str]] = [(1, "t:1"), (True, "t:True"), (1.0, "t:1.0"), (-0.0, "t:-0.0")]
    others = [f"o{i}" for i in range(3 * bound)]
    for round_ in range(4):
        for value, name in forms:
            assert _guard(registry, call, value) == name
            _consistent(registry, call)
        # another scope or two: the oldest form drops, the others stay cached
        for other in others[round_ : round_ + bound - 1]:
            assert _guard(registry, call, other) == f"t:{other}"
        for value, name in forms[round_ % 2 :: 2]:
            assert _guard(registry, call, value) == name
            assert len(registry._scoped) <= bound
        _consistent(registry, call)


def test_many_mixed_keys_through_the_cache_s_pruning_keep_each_on_its_own_breaker() -> None:
    """Past the cache's bound (``max_breakers`` plus a margin), pruning forgets entries of
    every key form; every call still finds its own breaker."""
    registry = BreakerRegistry(max_breakers=2)
    call = _decorate("plain", registry)
    forms = [1, True, 1.0, 0, False, 0.0, -0.0, Decimal("1.0"), "1", [1], (1,), None]
    names = ["1", "True", "1.0", "0", "False", "0.0", "-0.0", "1.0", "1", "[1]", "(1,)", "None"]
    for round_ in range(3):
        for i, (value, name) in enumerate(zip(forms, names, strict=True)):
            assert _guard(registry, call, value) == f"t:{name}"
            assert _guard(registry, call, f"s{round_}-{i}") == f"t:s{round_}-{i}"
        _consistent(registry, call)


@pytest.mark.parametrize("kind", KINDS)
def test_unhashable_arguments_beside_equal_hashable_ones(kind: str) -> None:
    """An unhashable argument is keyed by its name; ``[1]`` and ``[True]`` are two scopes,
    and so are the hashable forms met between them."""
    registry = BreakerRegistry(max_breakers=3)
    call = _decorate(kind, registry)
    values: list[tuple[Any, str]] = [
        ([1], "t:[1]"),
        (1, "t:1"),
        ([True], "t:[True]"),
        (True, "t:True"),
        ({"a": 1}, "t:{'a': 1}"),
        ({"a": True}, "t:{'a': True}"),
        (1.0, "t:1.0"),
    ]
    for _ in range(3):
        for value, name in values:
            assert _guard(registry, call, value) == name
            assert _guard(registry, call, k=value) == name
        _consistent(registry, call)
    two = _decorate(kind, registry, "u:{k}:{b}")
    assert _guard(registry, two, [1], 1) == "u:[1]:1"
    assert _guard(registry, two, 1, 1) == "u:1:1"
    assert _guard(registry, two, [1], True) == "u:[1]:True"
    assert _guard(registry, two, True, 1) == "u:True:1"
    _consistent(registry, two)


@pytest.mark.parametrize("kind", KINDS)
def test_two_decorations_of_one_template(kind: str) -> None:
    """Two decorations share the registry's breakers (and its LRU, which keeps the key of the
    decoration that last missed): each call of either is guarded by its own scope."""
    for bound in (10_000, 2):
        registry = BreakerRegistry(max_breakers=bound)
        first, second = _decorate(kind, registry), _decorate(kind, registry)
        for _ in range(3):
            assert _guard(registry, first, 1) == "t:1"
            assert _guard(registry, second, True) == "t:True"
            assert _guard(registry, first, True) == "t:True"
            assert _guard(registry, second, 1) == "t:1"
            assert _guard(registry, second, 1.0) == "t:1.0"
            assert _guard(registry, first, 1.0) == "t:1.0"
            assert _guard(registry, first, 0) == "t:0"
            assert _guard(registry, second, False) == "t:False"
        _consistent(registry, first)
        _consistent(registry, second)


def test_str_and_int_keys_are_cached_as_they_are() -> None:
    """The common keys (a model's name, a tenant's id) are the cache's keys themselves; any
    other argument's key never equals one of theirs."""
    registry = BreakerRegistry()
    call = _decorate("plain", registry)
    for value in ("gpt-4o", 7, True, 7.0):
        call(value)
    cache = _cache_of(call)
    assert {k for k in cache if k.__class__ in (str, int)} == {"gpt-4o", 7}
    assert all(k != 7 and k != "gpt-4o" for k in cache if k.__class__ not in (str, int))
    assert len(cache) == 4
