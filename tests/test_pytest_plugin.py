"""The pytest plugin: ``llm_breakers`` isolates, ``llm_clock`` replaces the library's time,
``fake_llm`` runs a provider; tests that ask for none of them see no change. Outside pytest,
``testing.frozen_time()`` and ``testing.instant()`` do the clock's part."""

from __future__ import annotations

import importlib.metadata
import re
import time
from pathlib import Path

import pytest
import requests  # noqa: F401  # see run(): imported before any inner session

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, Outcome
from llm_circuit_breaker.breaker import clock as time_source
from llm_circuit_breaker.testing import frozen_time, instant

pytest_plugins = ["pytester"]

PLUGIN = "llm_circuit_breaker.testing.pytest_plugin"
ROOT = Path(__file__).resolve().parent.parent

APP = """
from llm_circuit_breaker import LLMCircuitBreaker, LLMCircuitBreakerError

llm = LLMCircuitBreaker(name="openai")


def answer(base_url: str, question: str) -> str:
    data = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    try:
        reply = llm.call(f"{base_url}/v1/chat/completions", data=data)
    except LLMCircuitBreakerError:
        return "busy"
    return reply["choices"][0]["message"]["content"]
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the inner session with the plugin, as an installed package would load it.

    An in-process session puts ``sys.modules`` back as it found it: a module first imported
    inside one (``requests``, by the HTTP helpers) would be imported again in the next while
    the library holds the first copy's classes, so the module imports what they use first.
    """
    installed = any(
        entry.value == PLUGIN for entry in importlib.metadata.entry_points(group="pytest11")
    )
    plugin = [] if installed else ["-p", PLUGIN]
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester.runpytest(*plugin, "-p", "no:cacheprovider", *args)


def test_the_package_declares_the_plugin() -> None:
    """pyproject registers the module under the pytest11 entry point."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"llm_circuit_breaker": PLUGIN}


def test_outage_and_recovery_as_a_user_writes_it(pytester: pytest.Pytester) -> None:
    """The app answers "busy" while the provider is down and recovers once reset_timeout has
    passed on the fake clock; retry backoffs never sleep for real."""
    pytester.makepyfile(my_app=APP)
    pytester.makepyfile(
        test_app="""
        from llm_circuit_breaker.testing import Reply
        from my_app import answer


        def test_busy_while_openai_is_down_then_recovers(fake_llm, llm_clock, llm_breakers):
            fake_llm.default = Reply.error(503)
            assert answer(fake_llm.url, "Hi") == "busy"  # retried, then given up
            assert answer(fake_llm.url, "Hi") == "busy"  # the circuit opened meanwhile
            assert llm_breakers.get("openai").state.value == "OPEN"
            hits = fake_llm.hits
            assert answer(fake_llm.url, "Hi") == "busy"
            assert fake_llm.hits == hits  # refused without a request
            fake_llm.default = Reply.ok("Hello!")
            llm_clock.advance(30)
            assert answer(fake_llm.url, "Hi") == "Hello!"
            assert llm_clock.sleeps  # the backoffs were waited on the fake clock


        def test_the_next_test_starts_clean(llm_breakers, fake_llm):
            assert llm_breakers.get("openai").state.value == "CLOSED"
            assert answer(fake_llm.url, "Hi") == "Hello!"
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_testing_guide_example_runs(pytester: pytest.Pytester) -> None:
    """The testing guide's outage-and-recovery test, at most 15 lines, passes as written."""
    guide = (ROOT / "docs" / "how-to" / "testing.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", guide, re.DOTALL)
    example = next(b for b in blocks if "def test_busy_while_openai_is_down_then_recovers" in b)
    test = example[example.index("def test_busy_while_openai_is_down_then_recovers") :]
    assert len(test.strip().splitlines()) <= 15
    pytester.makepyfile(test_guide_example=example)
    run(pytester).assert_outcomes(passed=1)


def test_llm_breakers_resets_the_default_and_tracked_registries(
    pytester: pytest.Pytester,
) -> None:
    """An OPEN circuit or a throttle pause from one test does not reach the next, in the
    default registry and in a registry passed to .track()."""
    pytester.makepyfile(
        test_isolation="""
        from llm_circuit_breaker import BreakerRegistry, Outcome, breaker_registry

        mine = BreakerRegistry()


        def trouble(breaker):
            first, second = breaker.admit(), breaker.admit()
            breaker.record(first, Outcome.THROTTLED, hint=120.0)
            breaker.record(second, Outcome.FAILURE, open_for=60.0)


        def test_one(llm_breakers):
            llm_breakers.track(mine)
            trouble(breaker_registry.get_or_create("svc"))
            trouble(mine.get_or_create("own"))
            assert llm_breakers.get("svc").state.value == "OPEN"


        def test_two(llm_breakers):
            llm_breakers.track(mine)
            for breaker in (llm_breakers.get("svc"), mine.get("own")):
                assert breaker.state.value == "CLOSED"
                assert breaker.throttle["paused_for"] == 0.0
                assert breaker.stats.calls == 0
            assert "svc" in llm_breakers and len(llm_breakers) >= 1
        """
    )
    run(pytester, "-p", "no:randomly").assert_outcomes(passed=2)


def test_tests_without_the_fixtures_see_no_change(pytester: pytest.Pytester) -> None:
    """No autouse: real time, and a registry that is not reset between tests."""
    pytester.makepyfile(
        test_plain="""
        import time

        from llm_circuit_breaker import breaker_registry
        from llm_circuit_breaker.breaker import clock


        def test_one():
            assert clock.SHARED.now is time.monotonic
            breaker_registry.get_or_create("kept").force_open()


        def test_two():
            assert breaker_registry.get("kept").state.value == "OPEN"
        """
    )
    run(pytester, "-p", "no:randomly").assert_outcomes(passed=2)


def test_llm_clock_in_async_tests(pytester: pytest.Pytester) -> None:
    """Async waits (a throttle slot 60 s away, a retry backoff) advance llm_clock at once."""
    pytester.makepyfile(
        test_async="""
        import pytest

        from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, with_retry
        from llm_circuit_breaker.errors import http_status_error


        @pytest.mark.asyncio
        async def test_waits(llm_clock):
            start = llm_clock()
            config = CircuitBreakerConfig(requests_per_minute=1, throttle_max_wait=120)
            breaker = CircuitBreaker("paced", config)
            await breaker.arecord_success(await breaker.aadmit())
            await breaker.arecord_success(await breaker.aadmit())
            calls = []

            @with_retry(max_retries=1, initial_delay=5, jitter=False)
            async def flaky():
                calls.append(1)
                if len(calls) == 1:
                    raise http_status_error(503)
                return "ok"

            assert await flaky() == "ok"
            assert llm_clock() - start == pytest.approx(65.0, abs=1.0)
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_frozen_time_replaces_the_time_source_for_a_block() -> None:
    """Inside the block breakers read the fake clock; after it, real time is back."""
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1, reset_timeout=30))
    with frozen_time() as clock:
        breaker.record(breaker.admit(), Outcome.FAILURE)
        assert breaker.state is CircuitState.OPEN
        clock.advance(30)
        assert breaker.state is CircuitState.HALF_OPEN
    assert time_source.SHARED.now is time.monotonic


def test_instant_keeps_real_time_and_skips_waits() -> None:
    """instant(): a 60 s throttle wait returns at once; the clock stays the real one."""
    config = CircuitBreakerConfig(requests_per_minute=1, throttle_max_wait=120)
    breaker = CircuitBreaker("paced", config)
    with instant():
        assert time_source.SHARED.now is time.monotonic
        breaker.record_success(breaker.admit())
        breaker.record_success(breaker.admit())  # would sleep a minute
    assert time_source.SHARED.sleep is time_source.system_sleep
    assert breaker.stats.successes == 2
