"""One breaker per model (scoped names), and fallbacks that skip a dead provider at once."""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitOpenError,
    CircuitState,
    FallbacksExhaustedError,
    ThrottledError,
    circuit_breaker,
    with_fallbacks,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock

# -- scoped names ---------------------------------------------------------------------------


def test_one_breaker_per_model_isolates_an_overloaded_one(clock: FakeClock) -> None:
    """529s on gpt-4o open its circuit; gpt-4o-mini stays CLOSED and keeps answering."""
    registry = BreakerRegistry(clock=clock)

    @circuit_breaker("openai:{model}", registry=registry, failure_threshold=2)
    def complete(prompt: str, model: str = "gpt-4o-mini") -> str:
        if model == "gpt-4o":
            raise http_status_error(529, None, {"error": {"type": "overloaded_error"}})
        return f"{model}: {prompt}"

    for _ in range(2):
        with pytest.raises(Exception, match="529"):
            complete("hi", model="gpt-4o")
    with pytest.raises(CircuitOpenError) as refused:
        complete("hi", "gpt-4o")  # positional works too
    assert refused.value.name == "openai:gpt-4o"
    assert complete("hi") == "gpt-4o-mini: hi"  # the default fills the name
    assert registry.get("openai:gpt-4o").state is CircuitState.OPEN
    assert registry.get("openai:gpt-4o-mini").state is CircuitState.CLOSED
    assert [b.name for b in registry.scope("openai")] == ["openai:gpt-4o", "openai:gpt-4o-mini"]
    assert list(registry.snapshot()) == ["openai:gpt-4o", "openai:gpt-4o-mini"]
    assert complete.breaker is None
    assert complete.breaker_for("x", model="gpt-4o") is registry.get("openai:gpt-4o")


async def test_scoped_coroutines_generators_and_methods(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)

    class Client:
        @circuit_breaker("anthropic:{model}", registry=registry)
        async def ask(self, *, model: str) -> str:
            return model

        @circuit_breaker("anthropic:{model}", registry=registry)
        def chunks(self, model: str) -> Iterator[str]:
            yield from model

        @circuit_breaker("anthropic:{model}", registry=registry)
        async def achunks(self, model: str) -> AsyncIterator[str]:
            for char in model:
                yield char

    client = Client()
    assert asyncio.iscoroutinefunction(Client.ask)
    assert await client.ask(model="haiku") == "haiku"
    assert "".join(client.chunks("opus")) == "opus"
    assert "".join([c async for c in client.achunks("sonnet")]) == "sonnet"
    names = [b.name for b in registry.scope("anthropic")]
    assert names == ["anthropic:haiku", "anthropic:opus", "anthropic:sonnet"]
    assert all(b.stats.successes == 1 for b in registry.scope("anthropic"))


def test_template_errors_name_the_argument() -> None:
    registry = BreakerRegistry()
    with pytest.raises(TypeError, match="'deployment'"):

        @circuit_breaker("azure:{deployment}", registry=registry)
        def complete(model: str) -> str:
            return model

    @circuit_breaker("openai:{model}", registry=registry)
    def call(model: str) -> str:
        return model

    with pytest.raises(TypeError, match="'model'"):
        call()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="fields name arguments"):
        circuit_breaker("x:{0}", registry=registry)(call)


def test_a_scoped_breaker_takes_the_decorations_config_and_listener(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    heard: list[Any] = []

    @circuit_breaker(
        "p:{model}", registry=registry, failure_threshold=7, on_state_change=heard.append
    )
    def call(model: str) -> str:
        raise http_status_error(503)

    for _ in range(7):
        with pytest.raises(Exception, match="503"):
            call("m")
    breaker = registry.get("p:m")
    assert breaker.config.failure_threshold == 7 and breaker.state is CircuitState.OPEN
    assert [c.new for c in heard] == [CircuitState.OPEN]


def test_the_registry_stays_bounded_under_many_scopes() -> None:
    """20,000 distinct scopes with max_breakers=500: never more than 500 scoped breakers live;
    an OPEN one is never dropped; named breakers are never dropped."""
    registry = BreakerRegistry(max_breakers=500)
    named = registry.get_or_create("named")

    @circuit_breaker("tenant:{tenant}", registry=registry, failure_threshold=1)
    def call(tenant: int) -> int:
        if tenant == 0:
            raise http_status_error(503)
        return tenant

    with pytest.raises(Exception, match="503"):
        call(0)
    for tenant in range(1, 20_000):
        assert call(tenant) == tenant
        assert len(registry) <= 502
    assert registry.get("tenant:0").state is CircuitState.OPEN
    assert registry.get("named") is named
    assert call(5) == 5  # dropped earlier, made afresh
    assert len(registry.scope("tenant")) <= 501


def test_memory_per_scoped_breaker_is_small() -> None:
    """The memory a scoped breaker costs, measured (docs/how-to/fallbacks-pools-hedging.md
    quotes it): under 8 KiB each."""
    registry = BreakerRegistry(max_breakers=20_000)

    @circuit_breaker("m:{model}", registry=registry)
    def call(model: int) -> int:
        return model

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for model in range(5_000):
        call(model)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / 5_000 < 8 * 1024, used / 5_000


# -- fallbacks ------------------------------------------------------------------------------


def _provider(registry: BreakerRegistry, name: str, outcomes: list[Any], calls: list[str]) -> Any:
    @circuit_breaker(name, registry=registry, failure_threshold=1)
    def target(prompt: str) -> str:
        calls.append(name)
        outcome = outcomes.pop(0) if outcomes else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return f"{name}: {prompt}"

    return target


def test_an_open_primary_is_skipped_without_a_call_or_a_sleep(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    calls: list[str] = []
    primary = _provider(registry, "openai", [http_status_error(503)], calls)
    secondary = _provider(registry, "anthropic", [], calls)
    ask = with_fallbacks(primary, secondary)
    assert ask("hi") == "anthropic: hi"  # primary failed: moved on
    assert ask("hi") == "anthropic: hi"  # primary OPEN: skipped, not called
    assert calls == ["openai", "anthropic", "anthropic"]
    assert clock.sleeps == []
    stats = ask.fallback_stats  # type: ignore[attr-defined]
    assert (stats["openai"].failed, stats["openai"].refused) == (1, 1)
    assert stats["anthropic"].served == 2


@pytest.mark.parametrize(
    ("error", "moves_on"),
    [
        (http_status_error(500), True),
        (
            http_status_error(529, None, {"type": "error", "error": {"type": "overloaded_error"}}),
            True,
        ),
        (http_status_error(429, None, {"error": {"code": "insufficient_quota"}}), True),
        (
            http_status_error(
                429, {"retry-after": "1"}, {"error": {"code": "rate_limit_exceeded"}}
            ),
            True,
        ),
        (TimeoutError("read timed out"), True),
        (ConnectionError("reset"), True),
        (ThrottledError("openai", 40.0), True),
        (http_status_error(400), False),
        (http_status_error(401), False),
        (http_status_error(403), False),
        (http_status_error(404, None, {"error": {"code": "model_not_found"}}), False),
        (http_status_error(422), False),
        (KeyError("not an HTTP error: a breaker failure by default"), True),
    ],
)
def test_provider_faults_move_on_and_caller_faults_raise(
    error: Exception, moves_on: bool, clock: FakeClock
) -> None:
    registry = BreakerRegistry(clock=clock)
    calls: list[str] = []
    ask = with_fallbacks(
        _provider(registry, "a", [error], calls), _provider(registry, "b", [], calls)
    )
    if moves_on:
        assert ask("x") == "b: x"
    else:
        with pytest.raises(type(error)):
            ask("x")
        assert calls == ["a"]


def test_context_length_moves_on_only_when_asked(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    too_long = http_status_error(
        400, None, {"error": {"code": "context_length_exceeded", "message": "maximum context"}}
    )
    calls: list[str] = []
    strict = with_fallbacks(
        _provider(registry, "a", [too_long], calls), _provider(registry, "b", [], calls)
    )
    with pytest.raises(type(too_long)):
        strict("x")
    lenient = with_fallbacks(
        _provider(registry, "c", [too_long], calls),
        _provider(registry, "d", [], calls),
        on_context_length=True,
    )
    assert lenient("x") == "d: x"


def test_every_target_failing_gives_each_error_in_order(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    calls: list[str] = []
    first, second = http_status_error(503), http_status_error(529)
    ask = with_fallbacks(
        _provider(registry, "a", [first], calls), _provider(registry, "b", [second], calls)
    )
    with pytest.raises(FallbacksExhaustedError) as caught:
        ask("x")
    assert caught.value.errors == (first, second)
    if sys.version_info >= (3, 11):
        assert isinstance(caught.value, ExceptionGroup)  # noqa: F821
    with pytest.raises(FallbacksExhaustedError) as again:  # both OPEN now: two refusals
        ask("x")
    assert all(isinstance(e, CircuitOpenError) for e in again.value.errors)
    assert calls == ["a", "b"]


def test_streams_fail_over_only_before_their_first_item(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)

    @circuit_breaker("early", registry=registry)
    def early(prompt: str) -> Iterator[str]:
        raise http_status_error(503)
        yield prompt

    @circuit_breaker("late", registry=registry)
    def late(prompt: str) -> Iterator[str]:
        yield "partial"
        raise http_status_error(503)

    @circuit_breaker("good", registry=registry)
    def good(prompt: str) -> Iterator[str]:
        yield from prompt

    assert list(with_fallbacks(early, good)("ok")) == ["o", "k"]
    stream = with_fallbacks(late, good)("ok")
    assert next(stream) == "partial"
    with pytest.raises(Exception, match="503"):
        next(stream)


async def test_async_generators_fail_over_before_the_first_item(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)

    @circuit_breaker("a-early", registry=registry)
    async def early(prompt: str) -> AsyncIterator[str]:
        raise http_status_error(503)
        yield prompt

    @circuit_breaker("a-late", registry=registry)
    async def late(prompt: str) -> AsyncIterator[str]:
        yield "partial"
        raise http_status_error(503)

    @circuit_breaker("a-good", registry=registry)
    async def good(prompt: str) -> AsyncIterator[str]:
        for char in prompt:
            yield char

    assert [c async for c in with_fallbacks(early, good)("ok")] == ["o", "k"]
    seen = []
    with pytest.raises(Exception, match="503"):
        async for item in with_fallbacks(late, good)("ok"):
            seen.append(item)
    assert seen == ["partial"]


async def test_async_fallbacks_and_returned_streams(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)

    @circuit_breaker("c-a", registry=registry, failure_threshold=1)
    async def primary(prompt: str) -> str:
        raise http_status_error(503)

    @circuit_breaker("c-b", registry=registry)
    async def secondary(prompt: str) -> str:
        return prompt.upper()

    ask = with_fallbacks(primary, secondary)
    assert asyncio.iscoroutinefunction(ask)
    assert await ask("x") == "X" and await ask("y") == "Y"

    def broken_stream(prompt: str) -> Iterator[str]:  # a function *returning* an iterator
        def events() -> Iterator[str]:
            raise http_status_error(503)
            yield prompt

        return events()

    def fine_stream(prompt: str) -> Iterator[str]:
        return iter([prompt])

    assert list(with_fallbacks(broken_stream, fine_stream)("z")) == ["z"]


def test_fallbacks_compose_with_retries_per_target(clock: FakeClock) -> None:
    """with_retry inside each target: the primary's retries run, and once its circuit opens
    its CircuitOpenError comes at once and the chain moves on."""
    registry = BreakerRegistry(clock=clock)
    calls: list[str] = []

    @with_retry(max_retries=5, sleep=clock.sleep, jitter=False)
    @circuit_breaker("r-a", registry=registry, failure_threshold=2)
    def primary(prompt: str) -> str:
        calls.append("a")
        raise http_status_error(503)

    ask = with_fallbacks(primary, _provider(registry, "r-b", [], calls))
    assert ask("x") == "r-b: x"
    assert calls == ["a", "a", "r-b"]  # two failures opened it; the third attempt was refused
    assert ask("x") == "r-b: x"
    assert calls == ["a", "a", "r-b", "r-b"]


def test_mixed_kinds_are_refused() -> None:
    async def coroutine() -> None: ...

    def plain() -> None: ...

    with pytest.raises(TypeError, match="one kind"):
        with_fallbacks(plain, coroutine)
    with pytest.raises(TypeError, match="callables"):
        with_fallbacks(plain, 3)  # type: ignore[arg-type]


def test_a_failover_is_logged_and_a_span_event(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = BreakerRegistry(clock=clock)
    calls: list[str] = []
    ask = with_fallbacks(
        _provider(registry, "o-a", [http_status_error(503)], calls),
        _provider(registry, "o-b", [], calls),
    )
    caplog.set_level("INFO", logger="llm_circuit_breaker")
    with provider.get_tracer("t").start_as_current_span("call"):
        ask("x")
    assert any(
        "fallback: 'o-a'" in r.getMessage() and "'o-b'" in r.getMessage() for r in caplog.records
    )
    (span,) = spans.get_finished_spans()
    (event,) = [e for e in span.events if e.name == "llm_circuit_breaker.fallback"]
    assert event.attributes["llm_circuit_breaker.name"] == "o-a"
    assert event.attributes["llm_circuit_breaker.fallback.next"] == "o-b"


def test_the_http_helper_scopes_by_the_json_body(llm_server: Any) -> None:
    """LLMCircuitBreaker(name="openai:{model}"): one breaker per model of the request body;
    each scope's throttle hears its own answers."""
    from llm_circuit_breaker import LLMCircuitBreaker
    from llm_circuit_breaker.testing import Reply

    registry = BreakerRegistry()
    cb = LLMCircuitBreaker(
        name="openai:{model}",
        circuit_breaker={"failure_threshold": 1},
        retry={"max_retries": 0},
        registry=registry,
    )
    headers = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "3"}
    llm_server.script(Reply.error(503), Reply.ok("fine", headers=headers))
    with pytest.raises(Exception, match="503"):
        cb.call(llm_server.url, data={"model": "gpt-4o"})
    assert cb.call(llm_server.url, data={"model": "gpt-4o-mini"})
    assert registry.get("openai:gpt-4o").state is CircuitState.OPEN
    mini = cb.breaker_for(llm_server.url, {"model": "gpt-4o-mini"})
    assert mini.state is CircuitState.CLOSED and mini.throttle["requests_remaining"] == 3
    assert set(cb.get_state()["scopes"]) == {"openai:gpt-4o", "openai:gpt-4o-mini"}
    with pytest.raises(TypeError, match="model"):
        cb.call(llm_server.url, data={"messages": []})
    with pytest.raises(TypeError, match="one breaker per scope"):
        cb.breaker
    cb.close()


def test_fallbacks_over_sdks_on_transports_skip_an_open_primary(llm_server: Any) -> None:
    """Two openai SDK clients (default retries) over transports: once the primary's circuit
    opens, calls go to the secondary without a request to the primary and without the SDK's
    backoff, and each target's stats say so."""
    import time

    import httpx
    import openai

    from llm_circuit_breaker.httpx import CircuitBreakerTransport
    from llm_circuit_breaker.testing import FakeLLMServer, Reply

    registry = BreakerRegistry()

    def sdk(url: str, name: str) -> openai.OpenAI:
        transport = CircuitBreakerTransport(name, registry=registry, failure_threshold=2)
        client = httpx.Client(transport=transport)
        return openai.OpenAI(api_key="sk-test", base_url=url + "/v1", http_client=client)

    def asker(client: openai.OpenAI) -> Any:
        def ask(prompt: str) -> Any:
            message = {"role": "user", "content": prompt}
            return client.chat.completions.create(model="m", messages=[message])  # type: ignore[list-item]

        return ask

    with FakeLLMServer() as secondary_server:
        llm_server.default = Reply.error(503)
        secondary_server.default = Reply.ok("from the secondary")
        primary, secondary = sdk(llm_server.url, "primary"), sdk(secondary_server.url, "secondary")
        with primary, secondary:
            ask = with_fallbacks(asker(primary), asker(secondary))
            first = ask("hi")  # the SDK retries the 503s until the circuit opens under it
            assert first.choices[0].message.content == "from the secondary"
            assert registry.get("primary").state is CircuitState.OPEN
            reached = llm_server.hits
            started = time.monotonic()
            for _ in range(5):
                assert ask("hi").choices[0].message.content == "from the secondary"
            assert time.monotonic() - started < 5 * 0.3  # no SDK backoff sleep on a refusal
    assert llm_server.hits == reached == 2  # the primary was not asked again
    on_primary, on_secondary = ask.fallback_stats.values()
    # The first call's last SDK attempt was refused already: the circuit opened under it.
    assert (on_primary.failed, on_primary.refused, on_primary.served) == (0, 6, 0)
    assert on_secondary.served == 6
