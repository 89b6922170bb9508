"""SPEC sections 11 and 13 read sentence by sentence, as an application developer would:
scoped names and ``with_fallbacks`` across the four callable kinds, and the pytest plugin's
fixtures in an inner pytest session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    circuit_breaker,
    with_fallbacks,
)
from llm_circuit_breaker.testing import FakeClock

pytest_plugins = ["pytester"]


# -- SPEC 11: "A missing argument raises TypeError naming it", through a fallback chain too --


def _scoped_pair(registry: BreakerRegistry, kind: str) -> tuple[Callable[..., Any], ...]:
    """Two targets of ``kind`` with scoped names, recording each call that reaches them."""
    if kind == "sync":

        @circuit_breaker("one:{model}", registry=registry)
        def one(prompt: str, model: str) -> str:
            return "one"

        @circuit_breaker("two:{model}", registry=registry)
        def two(prompt: str, model: str) -> str:
            return "two"

    elif kind == "async":

        @circuit_breaker("one:{model}", registry=registry)
        async def one(prompt: str, model: str) -> str:
            return "one"

        @circuit_breaker("two:{model}", registry=registry)
        async def two(prompt: str, model: str) -> str:
            return "two"

    elif kind == "generator":

        @circuit_breaker("one:{model}", registry=registry)
        def one(prompt: str, model: str) -> Iterator[str]:
            yield "one"

        @circuit_breaker("two:{model}", registry=registry)
        def two(prompt: str, model: str) -> Iterator[str]:
            yield "two"

    else:

        @circuit_breaker("one:{model}", registry=registry)
        async def one(prompt: str, model: str) -> AsyncIterator[str]:
            yield "one"

        @circuit_breaker("two:{model}", registry=registry)
        async def two(prompt: str, model: str) -> AsyncIterator[str]:
            yield "two"

    return one, two


async def _run(kind: str, chain: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if kind == "sync":
        return chain(*args, **kwargs)
    if kind == "async":
        return await chain(*args, **kwargs)
    if kind == "generator":
        return list(chain(*args, **kwargs))
    return [item async for item in chain(*args, **kwargs)]


@pytest.mark.parametrize("kind", ["sync", "async", "generator", "async generator"])
async def test_a_missing_scope_argument_through_fallbacks_is_a_typeerror_naming_it(
    clock: FakeClock, kind: str
) -> None:
    """The same arguments go to every target: a call that cannot fill the names is the
    caller's fault, raised at once as the TypeError naming the argument (not a
    FallbacksExhaustedError of two TypeErrors), and no breaker is made or charged."""
    registry = BreakerRegistry(clock=clock)
    ask = with_fallbacks(*_scoped_pair(registry, kind))
    with pytest.raises(TypeError, match="'model'") as raised:
        await _run(kind, ask, "hi")
    assert type(raised.value) is TypeError
    assert ask.fallback_stats["one:{model}"].failed == 0
    assert list(registry.snapshot()) == []
    assert await _run(kind, ask, "hi", model="m") in ("one", ["one"])


@pytest.mark.parametrize("kind", ["sync", "async", "generator", "async generator"])
async def test_arguments_that_fit_no_target_are_raised_at_once(kind: str) -> None:
    """An unexpected keyword (or a missing positional) is raised by the first target as
    Python raises it, the alternatives never called."""
    registry = BreakerRegistry(clock=FakeClock())
    calls: list[str] = []

    if kind == "sync":

        @circuit_breaker("first", registry=registry)
        def first(prompt: str) -> str:
            calls.append("first")
            return "first"

        def second(prompt: str) -> str:
            calls.append("second")
            return "second"

    elif kind == "async":

        @circuit_breaker("first", registry=registry)
        async def first(prompt: str) -> str:
            calls.append("first")
            return "first"

        async def second(prompt: str) -> str:
            calls.append("second")
            return "second"

    elif kind == "generator":

        @circuit_breaker("first", registry=registry)
        def first(prompt: str) -> Iterator[str]:
            calls.append("first")
            yield "first"

        @circuit_breaker("second", registry=registry)
        def second(prompt: str) -> Iterator[str]:
            calls.append("second")
            yield "second"

    else:

        @circuit_breaker("first", registry=registry)
        async def first(prompt: str) -> AsyncIterator[str]:
            calls.append("first")
            yield "first"

        @circuit_breaker("second", registry=registry)
        async def second(prompt: str) -> AsyncIterator[str]:
            calls.append("second")
            yield "second"

    ask = with_fallbacks(first, second)
    with pytest.raises(TypeError, match="temperature"):
        await _run(kind, ask, "hi", temperature=0.2)
    with pytest.raises(TypeError, match="prompt"):
        await _run(kind, ask)
    assert calls == []
    assert await _run(kind, ask, "hi") in ("first", ["first"])
    await asyncio.sleep(0)


# -- SPEC 13: "loaded when installed; it changes nothing for tests that do not ask for its
# fixtures" ------------------------------------------------------------------------------------


def test_the_plugin_loads_nothing_heavy_for_tests_that_do_not_use_it(
    pytester: pytest.Pytester,
) -> None:
    """A session of tests that ask for no fixture of the plugin gets the real time source and
    pays no import of the fake provider (aiohttp) or the chaos transport: the plugin is loaded
    in every session of an environment that has the package installed."""
    import importlib.metadata

    plugin = "llm_circuit_breaker.testing.pytest_plugin"
    installed = any(e.value == plugin for e in importlib.metadata.entry_points(group="pytest11"))
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.hasplugin("llm_circuit_breaker") or any(
                getattr(p, "__name__", "") == "llm_circuit_breaker.testing.pytest_plugin"
                for p in request.config.pluginmanager.get_plugins()
            )
            assert "aiohttp" not in sys.modules
            assert "llm_circuit_breaker.testing._server" not in sys.modules
            assert "llm_circuit_breaker.testing.chaos" not in sys.modules
            from llm_circuit_breaker.breaker import clock
            assert clock.SHARED.sleep is clock.system_sleep

        def test_fixture_after(fake_llm, llm_clock):
            assert fake_llm.url.startswith("http://127.0.0.1:")
            assert "aiohttp" in sys.modules
        """
    )
    args = [] if installed else ["-p", plugin]
    result = pytester.runpytest_subprocess(
        *args, "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly", "-p", "no:asyncio"
    )
    result.assert_outcomes(passed=2)


# -- SPEC 11: "FallbacksExhaustedError carrying each target's error in order" ----------------


def test_fallbacks_exhausted_error_survives_pickling() -> None:
    """A chain that fails in a process pool or a task queue's worker reaches the caller
    pickled: the error comes back whole (each target's error in order, its notes), not as a
    TypeError from unpickling it."""
    import pickle

    from llm_circuit_breaker import CircuitOpenError, FallbacksExhaustedError

    error = FallbacksExhaustedError(
        [CircuitOpenError("openai", 12.5, "5 consecutive failures"), TimeoutError("slow")]
    )
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note("while answering request 42")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is FallbacksExhaustedError
    assert [type(e) for e in copy.errors] == [CircuitOpenError, TimeoutError]
    assert copy.errors[0].retry_after == 12.5 and copy.errors[0].name == "openai"
    assert str(copy) == str(error)
    assert getattr(copy, "__notes__", None) == getattr(error, "__notes__", None)


# -- SPEC 11 "each attempt is visible" with SPEC 18's structured logs ---------------------------


def test_a_failover_log_record_names_the_filled_breaker_and_its_scope(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As the state and retry records do, a failover record carries the breaker's template
    and scope value as fields, and its message names the filled breaker (``'oa:gpt-4o'``,
    not ``'oa:{model}'``) that an on-call engineer can look up."""
    import logging

    registry = BreakerRegistry(clock=FakeClock())

    @circuit_breaker("oa:{model}", registry=registry)
    def primary(prompt: str, model: str) -> str:
        raise TimeoutError("slow")

    @circuit_breaker("backup", registry=registry)
    def backup(prompt: str, model: str) -> str:
        return "backup"

    ask = with_fallbacks(primary, backup)
    with caplog.at_level(logging.INFO, logger="llm_circuit_breaker.fallback"):
        assert ask("hi", model="gpt-4o") == "backup"
    (record,) = [r for r in caplog.records if r.name == "llm_circuit_breaker.fallback"]
    assert record.breaker == "oa:{model}"  # type: ignore[attr-defined]
    assert record.scope == "gpt-4o"  # type: ignore[attr-defined]
    assert "'oa:gpt-4o'" in record.getMessage() and "'backup'" in record.getMessage()


# -- SPEC 11: "throttled beyond throttle_max_wait, is skipped without waiting or calling" ------


def _paused(name: str, seconds: int, max_wait: float) -> BreakerRegistry:
    """A registry whose breaker ``name`` waits at most ``max_wait`` s for its throttle, paused
    for ``seconds`` by a rate-limited 429."""
    from llm_circuit_breaker.errors import http_status_error

    registry = BreakerRegistry()
    registry.configure(name, throttle_max_wait=max_wait)
    rate_limited = http_status_error(
        429, {"retry-after": str(seconds)}, {"error": {"code": "rate_limit_exceeded"}}
    )

    @circuit_breaker(name, registry=registry)
    def hit() -> None:
        raise rate_limited

    with pytest.raises(type(rate_limited)):
        hit()
    return registry


@pytest.mark.parametrize("kind", ["sync", "async", "generator", "async generator"])
async def test_a_retried_target_throttled_beyond_its_wait_is_skipped_at_once(kind: str) -> None:
    """With ``@with_retry`` on each target, as the guide recommends, a target whose throttle
    is paused past ``throttle_max_wait`` is skipped without a call and without the retry
    waiting out the pause (it waited 20 s, then called the target)."""
    from llm_circuit_breaker import with_retry
    from llm_circuit_breaker.testing import frozen_time

    calls: list[str] = []
    with frozen_time(0.0) as clock:
        registry = _paused("paused", seconds=20, max_wait=5)
        assert registry.get("paused").throttle["paused_for"] > 5

        def guard(func: Callable[..., Any]) -> Any:
            return with_retry(max_retries=3)(circuit_breaker("paused", registry=registry)(func))

        if kind == "sync":

            def primary(prompt: str) -> str:
                calls.append("primary")
                return "primary"

            def backup(prompt: str) -> str:
                calls.append("backup")
                return "backup"

        elif kind == "async":

            async def primary(prompt: str) -> str:
                calls.append("primary")
                return "primary"

            async def backup(prompt: str) -> str:
                calls.append("backup")
                return "backup"

        elif kind == "generator":

            def primary(prompt: str) -> Iterator[str]:
                calls.append("primary")
                yield "primary"

            def backup(prompt: str) -> Iterator[str]:
                calls.append("backup")
                yield "backup"

        else:

            async def primary(prompt: str) -> AsyncIterator[str]:
                calls.append("primary")
                yield "primary"

            async def backup(prompt: str) -> AsyncIterator[str]:
                calls.append("backup")
                yield "backup"

        ask = with_fallbacks(guard(primary), backup)
        assert await _run(kind, ask, "hi") in ("backup", ["backup"])
        assert calls == ["backup"]
        assert clock.sleeps == [] and clock() == 0.0
        assert next(iter(ask.fallback_stats.values())).refused == 1
        # outside a chain the same retried function still waits for its slot, as before
        assert await _run(kind, guard(primary), "hi") in ("primary", ["primary"])
        assert clock() >= 20


def test_partials_of_a_scoped_function_are_counted_under_their_filled_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``with_fallbacks(partial(ask, model="gpt-4o"), partial(ask, model="gpt-4o-mini"))``,
    the natural chain of one scoped function over models: its stats and failover records
    name each model's breaker, not a ``functools.partial(<function ask at 0x...>)`` repr."""
    import functools
    import logging

    registry = BreakerRegistry(clock=FakeClock())

    @circuit_breaker("openai:{model}", registry=registry, failure_threshold=1)
    def ask(prompt: str, model: str) -> str:
        if model == "gpt-4o":
            raise TimeoutError("overloaded")
        return model

    chain = with_fallbacks(
        functools.partial(ask, model="gpt-4o"), functools.partial(ask, model="gpt-4o-mini")
    )
    with caplog.at_level(logging.INFO, logger="llm_circuit_breaker.fallback"):
        assert chain("hi") == chain("hi") == "gpt-4o-mini"
    assert list(chain.fallback_stats) == ["openai:gpt-4o", "openai:gpt-4o-mini"]
    assert chain.fallback_stats["openai:gpt-4o"].failed == 1
    assert chain.fallback_stats["openai:gpt-4o"].refused == 1
    assert chain.fallback_stats["openai:gpt-4o-mini"].served == 2
    messages = [r.getMessage() for r in caplog.records]
    assert all("'openai:gpt-4o'" in m and "partial" not in m for m in messages), messages


def test_a_scope_that_cannot_be_filled_is_raised_at_once_whatever_the_signature() -> None:
    """The arguments bind (``**kwargs``; a ``{model.name}`` field given a str) but the scope's
    name cannot be made from them: still the caller's TypeError, not a failover."""
    registry = BreakerRegistry(clock=FakeClock())
    reached: list[str] = []

    @circuit_breaker("kw:{model}", registry=registry)
    def by_keywords(prompt: str, **options: Any) -> str:
        return "kw"

    @circuit_breaker("attr:{model.name}", registry=registry)
    def by_attribute(prompt: str, model: Any) -> str:
        return "attr"

    def backup(prompt: str, *args: Any, **options: Any) -> str:
        reached.append(prompt)
        return "backup"

    with pytest.raises(TypeError, match="'model'"):
        with_fallbacks(by_keywords, backup)("hi")
    with pytest.raises(TypeError, match=r"attr:\{model.name\}"):
        with_fallbacks(by_attribute, backup)("hi", "gpt-4o")
    assert reached == []


def test_a_with_retry_inside_a_chain_target_still_waits_for_its_throttle() -> None:
    """Only the target's own ``with_retry`` passes a throttle's refusal up to the chain: one
    deeper inside the target (an embedding call made by the function) waits for its slot as
    anywhere else, and the target answers."""
    from llm_circuit_breaker import with_retry
    from llm_circuit_breaker.testing import frozen_time

    with frozen_time(0.0) as clock:
        registry = _paused("embed", seconds=2, max_wait=0)  # refuses rather than wait

        @with_retry(max_retries=3)
        @circuit_breaker("embed", registry=registry)
        def embed() -> str:
            return "embedded"

        @with_retry(max_retries=3)
        @circuit_breaker("primary", registry=registry)
        def primary(prompt: str) -> str:
            return f"primary {embed()}"

        def backup(prompt: str) -> str:
            return "backup"

        assert with_fallbacks(primary, backup)("hi") == "primary embedded"
        assert clock() >= 2.0  # the inner retry waited out the pause
