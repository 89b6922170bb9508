"""What a newcomer trips on: the install name, silent mistakes, errors that say why."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import warnings
from pathlib import Path

import pytest

import llm_circuit_breaker
from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    LLMCircuitBreaker,
    RateLimitError,
    ServerError,
    breaker_registry,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

PACKAGE = Path(llm_circuit_breaker.__file__).parent


def test_the_distribution_is_installed_under_its_own_name() -> None:
    """The package installs as llm-circuit-guard; every install hint names that distribution."""
    assert importlib.metadata.distribution("llm-circuit-guard").version
    docs = (PACKAGE.parent / "docs").rglob("*.md")
    for path in [*PACKAGE.rglob("*.py"), PACKAGE.parent / "README.md", *docs]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"install\W+llm-circuit-breaker", text), path


@pytest.mark.parametrize(
    "make",
    [
        lambda: circuit_breaker("ms", reset_timeout=30000),
        lambda: with_retry(initial_delay=1000, max_delay=30000),
        lambda: CircuitBreakerConfig(reset_timeout=5000),
    ],
)
def test_milliseconds_are_warned_about(make: object) -> None:
    """A time option >= 1000 asks whether milliseconds were meant."""
    with pytest.warns(UserWarning, match="milliseconds"):
        make()  # type: ignore[operator]


def test_timeout_on_the_decorator_is_refused_with_a_pointer() -> None:
    """circuit_breaker(timeout=...) would do nothing: a TypeError pointing to call_timeout."""
    with pytest.raises(TypeError, match="call_timeout"):
        circuit_breaker("t", timeout=0.2)


async def test_call_timeout_names_the_breaker_and_the_limit() -> None:
    """call_timeout raises the built-in TimeoutError, saying which breaker and which limit."""

    @circuit_breaker("slow", call_timeout=0.01)
    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError, match=r"'slow'.*call_timeout=0\.01s") as caught:
        await slow()
    assert type(caught.value) is TimeoutError
    assert breaker_registry.get("slow").failure_count == 1


def test_a_refusal_says_why_and_chains_the_cause(clock: FakeClock) -> None:
    """A quota-opened circuit tells callers why, with the provider error as __cause__."""
    quota = http_status_error(429, {}, {"error": {"code": "insufficient_quota"}})
    breaker = CircuitBreaker("q", clock=clock)

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        raise quota

    with pytest.raises(RateLimitError):
        call()
    with pytest.raises(CircuitOpenError) as caught:
        call()
    assert "insufficient_quota" in caught.value.reason
    assert "insufficient_quota" in str(caught.value)
    assert caught.value.__cause__ is quota


def test_with_retry_does_not_sleep_once_the_breaker_opened(clock: FakeClock) -> None:
    """Over a breaker that just opened, with_retry raises CircuitOpenError at once, chained."""
    breaker = CircuitBreaker("r", CircuitBreakerConfig(failure_threshold=1), clock=clock)

    @with_retry(initial_delay=1.0, jitter=False, sleep=clock.sleep, clock=clock)
    @circuit_breaker(breaker=breaker)
    def call() -> None:
        raise http_status_error(503)

    with pytest.raises(CircuitOpenError) as caught:
        call()
    assert clock.sleeps == []
    assert isinstance(caught.value.__cause__, ServerError)


def test_the_wrong_decorator_order_is_warned_about_once() -> None:
    """circuit_breaker outside with_retry warns at decoration time, once."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")

        @circuit_breaker("order")
        @with_retry
        def call() -> None: ...

        @with_retry
        @circuit_breaker("order")
        def fine() -> None: ...

    assert [str(w.message) for w in seen if "outside @with_retry" in str(w.message)] != []
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (lambda: with_retry(maxRetries=3), "max_retries"),
        (lambda: circuit_breaker("x", failure_treshold=3), "failure_threshold"),
        (lambda: circuit_breaker("x", failureThreshold=3), "failure_threshold"),
        (lambda: CircuitBreakerConfig.from_mapping({"resetTimeout": 5}), "reset_timeout"),
        (lambda: LLMCircuitBreaker(timeout=10), "circuit_breaker"),
        (lambda: LLMCircuitBreaker(maxRetries=3), "retry"),
        (lambda: LLMCircuitBreaker(retry={"max_retires": 3}), "max_retries"),
    ],
)
def test_unknown_options_suggest_the_right_name(make: object, hint: str) -> None:
    """Every entry point answers a typo or a camelCase name with a did-you-mean TypeError."""
    with pytest.raises(TypeError, match=hint):
        make()  # type: ignore[operator]


def test_a_wrong_type_names_no_private_class() -> None:
    """A wrong type is a TypeError (and ValueError) whose class is not a private name."""
    with pytest.raises(TypeError) as caught:
        CircuitBreakerConfig(failure_threshold="5")  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert not type(caught.value).__name__.startswith("_")
    assert "failure_threshold" in str(caught.value)


def test_name_reuse_says_how_to_fix_it() -> None:
    """Naming a breaker again with other fields explains where the config belongs."""
    registry = BreakerRegistry()
    circuit_breaker("x", registry=registry)(lambda: None)
    with pytest.raises(ValueError, match=r"configure\('x'"):
        circuit_breaker("x", registry=registry, failure_threshold=2)(lambda: None)
    registry.configure("y", failure_threshold=2)
    assert (
        circuit_breaker("y", registry=registry)(lambda: None).breaker.config.failure_threshold == 2
    )


def test_a_returned_stream_is_guarded_to_its_end() -> None:
    """An error while iterating a returned iterator counts; exhausting one is a success."""

    def chunks(fail: bool):  # type: ignore[no-untyped-def]
        yield "a"
        if fail:
            raise http_status_error(500)
        yield "b"

    @circuit_breaker("stream", failure_threshold=2)
    def complete(fail: bool):  # type: ignore[no-untyped-def]
        return iter(list(chunks(False))) if not fail else chunks(True)

    breaker = breaker_registry.get("stream")
    assert list(complete(False)) == ["a", "b"]
    assert breaker.stats.successes == 1
    with pytest.raises(ServerError):
        list(complete(True))
    assert breaker.failure_count == 1


def test_real_openai_stream_errors_count(llm_server: FakeLLMServer) -> None:
    """A decorated function returning the openai SDK's Stream: a mid-stream error frame counts."""
    openai = pytest.importorskip("openai")
    llm_server.script(Reply.openai_stream(["Hel", "lo"], error="server_error"))
    client = openai.OpenAI(base_url=llm_server.url + "/v1", api_key="sk-test", max_retries=0)

    @circuit_breaker("openai-stream")
    def complete():  # type: ignore[no-untyped-def]
        return client.chat.completions.create(model="m", messages=[], stream=True)

    stream = complete()
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert breaker_registry.get("openai-stream").failure_count == 1
    client.close()


async def test_real_async_openai_stream_success_counts_at_the_end(
    llm_server: FakeLLMServer,
) -> None:
    """An AsyncStream returned by a coroutine function reports success once exhausted."""
    openai = pytest.importorskip("openai")
    llm_server.script(Reply.openai_stream(["Hel", "lo"]))
    client = openai.AsyncOpenAI(base_url=llm_server.url + "/v1", api_key="sk-test", max_retries=0)

    @circuit_breaker("openai-astream")
    async def complete():  # type: ignore[no-untyped-def]
        return await client.chat.completions.create(model="m", messages=[], stream=True)

    breaker = breaker_registry.get("openai-astream")
    stream = await complete()
    assert breaker.stats.successes == 0  # not yet: the stream is still open
    texts = [chunk.choices[0].delta.content async for chunk in stream]
    assert texts == ["Hel", "lo"]
    assert breaker.stats.successes == 1
    await client.close()


def test_real_anthropic_stream_error_event_counts(llm_server: FakeLLMServer) -> None:
    """A decorated function returning the anthropic SDK's Stream: an overloaded event counts."""
    anthropic = pytest.importorskip("anthropic")
    llm_server.script(Reply.anthropic_stream(["Hel"], error="overloaded_error"))
    client = anthropic.Anthropic(base_url=llm_server.url, api_key="sk-ant-test", max_retries=0)

    @circuit_breaker("anthropic-stream")
    def complete():  # type: ignore[no-untyped-def]
        return client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
        )

    with pytest.raises(anthropic.APIStatusError):
        for _ in complete():
            pass
    assert breaker_registry.get("anthropic-stream").failure_count == 1
    client.close()


def test_option_lists_name_options_only() -> None:
    """An unknown option's error lists the options, never the classes' private constants."""
    from llm_circuit_breaker import RetryConfig

    with pytest.raises(TypeError) as caught:
        RetryConfig.check_names({"breaker": 1})
    assert "_what" not in str(caught.value) and "max_retries" in str(caught.value)
    with pytest.raises(TypeError):
        CircuitBreakerConfig.check_names({"_what": "x"})
