"""A span per logical call without asking (SPEC section 18): with OpenTelemetry instrumentation
on, decorated calls, helper calls and SDK requests through the transport are CLIENT spans, their
attempts child spans; with the real opentelemetry-sdk (in-memory exporter and reader), the real
openai SDK and the fake provider."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llm_circuit_breaker import (
    BreakerRegistry,
    BudgetExceededError,
    CircuitOpenError,
    LLMCircuitBreaker,
    circuit_breaker,
    with_fallbacks,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.observability.otel import OpenTelemetryInstrumentation
from llm_circuit_breaker.strategies import tracing
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

MESSAGES = [{"role": "user", "content": "hi"}]


class Traced:
    """An instrumentation of one registry with its span exporter and metric reader."""

    def __init__(self, registry: BreakerRegistry, **options: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.otel = OpenTelemetryInstrumentation(
            registry,
            meter_provider=MeterProvider(metric_readers=[self.reader]),
            tracer_provider=self.tracer_provider,
            **options,
        ).instrument()

    def finished(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        return [s for s in spans if kind is None or s.kind is kind]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data is not None else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def registry(clock: FakeClock) -> BreakerRegistry:
    return BreakerRegistry(clock=clock)


def test_a_decorated_call_is_one_client_span_with_its_attempts_as_children(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    """with_retry over a scoped circuit_breaker, no traced(): one CLIENT span per call named
    and attributed from the scope's fields, each attempt an INTERNAL child with the filled name,
    the retries as events on the call's span, nested under the caller's span or a root."""
    traced = Traced(registry)

    @with_retry(max_retries=2, sleep=clock.sleep, jitter=False)
    @circuit_breaker("openai:{model}", registry=registry, failure_threshold=5)
    def chat(prompt: str, model: str) -> str:
        if prompt == "fail":
            raise http_status_error(503)
        return "ok"

    assert chat("hi", "gpt-4o") == "ok"
    with (
        traced.tracer_provider.get_tracer("test").start_as_current_span("request") as caller,
        pytest.raises(Exception, match="503"),
    ):
        chat("fail", "gpt-4o")
    ok, failed = traced.finished(SpanKind.CLIENT)
    assert (ok.name, ok.parent) == ("chat gpt-4o", None)
    assert ok.attributes is not None and failed.attributes is not None
    assert {k: v for k, v in ok.attributes.items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
    }
    assert failed.parent is not None and failed.parent.span_id == caller.get_span_context().span_id
    assert failed.attributes["error.type"] == "503"
    assert failed.status.status_code is StatusCode.ERROR
    attempts = [s for s in traced.finished(SpanKind.INTERNAL) if s.parent is not None]
    assert [s.parent.span_id for s in attempts if s.parent] == [ok.context.span_id] + [
        failed.context.span_id
    ] * 3
    assert {(s.attributes or {}).get("llm_circuit_breaker.name") for s in attempts} == {
        "openai:gpt-4o"
    }
    assert [(s.attributes or {}).get("llm_circuit_breaker.attempt") for s in attempts] == [
        1,
        1,
        2,
        3,
    ]
    retries = [e for e in failed.events if e.name == "llm_circuit_breaker.retry"]
    assert len(retries) == 2
    assert all((e.attributes or {})["llm_circuit_breaker.name"] == "openai:gpt-4o" for e in retries)
    durations = traced.points("gen_ai.client.operation.duration")
    assert sorted(str(p.attributes.get("error.type")) for p in durations) == ["503", "None"]
    assert sum(p.count for p in durations) == 2


def test_a_refusal_is_a_failed_span_with_its_event(registry: BreakerRegistry) -> None:
    """A call the open circuit refuses: its span carries the refusal's error.type and the
    rejected event with the breaker's name."""
    traced = Traced(registry)

    @circuit_breaker("anthropic", registry=registry, failure_threshold=1)
    def ask() -> str:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        ask()
    with pytest.raises(CircuitOpenError):
        ask()
    failed, refused = traced.finished(SpanKind.CLIENT)
    assert failed.attributes is not None and refused.attributes is not None
    assert failed.attributes["gen_ai.provider.name"] == "anthropic"
    assert failed.attributes["error.type"] == "ConnectionError"
    assert refused.attributes["error.type"].endswith("CircuitOpenError")
    (event,) = [e for e in refused.events if e.name == "llm_circuit_breaker.rejected"]
    assert (event.attributes or {})["llm_circuit_breaker.name"] == "anthropic"


def test_a_failover_is_one_logical_span_with_both_targets_as_attempts(
    registry: BreakerRegistry,
) -> None:
    """with_fallbacks: one CLIENT span; the failed and the serving target are attempts; the
    failover is an event on the call's span."""
    traced = Traced(registry)

    @circuit_breaker("openai", registry=registry)
    def primary() -> str:
        raise http_status_error(503)

    @circuit_breaker("anthropic", registry=registry)
    def backup() -> str:
        return "ok"

    assert with_fallbacks(primary, backup)() == "ok"
    (call,) = traced.finished(SpanKind.CLIENT)
    attempts = traced.finished(SpanKind.INTERNAL)
    assert [(s.attributes or {})["llm_circuit_breaker.name"] for s in attempts] == [
        "openai",
        "anthropic",
    ]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert all(s.parent is not None and s.parent.span_id == call.context.span_id for s in attempts)
    assert [e.name for e in call.events] == ["llm_circuit_breaker.fallback"]
    assert call.status.status_code is not StatusCode.ERROR


def test_a_generator_s_span_covers_its_items_and_times_the_first(
    registry: BreakerRegistry,
) -> None:
    """A decorated generator: the span ends with the stream; the first chunk is timed."""
    traced = Traced(registry)

    @circuit_breaker("gemini:{model}", registry=registry)
    def stream(model: str) -> Iterator[str]:
        yield "Hel"
        assert not traced.finished(), "the span is open while the stream is"
        yield "lo"

    assert list(stream(model="gemini-2.0-flash")) == ["Hel", "lo"]
    (span,) = traced.finished()
    assert span.name == "chat gemini-2.0-flash"
    assert (span.attributes or {})["gen_ai.provider.name"] == "gcp.gemini"
    (first,) = traced.points("gen_ai.client.operation.time_to_first_chunk")
    assert first.count == 1


def test_uninstrumented_nothing_is_traced(registry: BreakerRegistry) -> None:
    """uninstrument() empties the hook slot: calls make no span."""
    traced = Traced(registry)
    assert tracing.hook is not None

    @circuit_breaker("openai", registry=registry)
    def ask() -> str:
        return "ok"

    ask()
    traced.otel.uninstrument()
    assert tracing.hook is None
    ask()
    assert len(traced.finished()) == 1


def test_a_returned_sdk_stream_is_one_span_ended_with_the_stream(
    llm_server: FakeLLMServer,
) -> None:
    """A coroutine function returning the openai SDK's AsyncStream: its span ends when the
    stream does, with the time to the first chunk."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.chat("Hello there!", stream=True))

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=llm_server.url + "/v1", max_retries=0
        )

        @circuit_breaker("openai:{model}", registry=registry)
        async def ask(model: str) -> Any:
            return await client.chat.completions.create(model=model, messages=MESSAGES, stream=True)

        try:
            stream = await ask("gpt-4o-mini")
            assert not traced.finished(SpanKind.CLIENT)
            return [chunk async for chunk in stream]
        finally:
            await client.close()

    chunks = asyncio.run(run())
    assert chunks
    (span,) = traced.finished(SpanKind.CLIENT)
    assert span.name == "chat gpt-4o-mini"
    (first,) = traced.points("gen_ai.client.operation.time_to_first_chunk")
    assert first.count == 1


def test_an_sdk_request_through_the_transport_is_a_client_span(
    llm_server: FakeLLMServer,
) -> None:
    """The openai SDK over CircuitBreakerTransport: one CLIENT span per request, attributed
    from the request (model, operation, server) and the breaker's name; a refused request's
    span carries the refusal."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.chat("Hello there!", stream=True), Reply.error(503))
    transport = CircuitBreakerTransport("openai", registry=registry, failure_threshold=1)
    client = openai.OpenAI(
        api_key="sk-test",
        base_url=llm_server.url + "/v1",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )
    try:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        assert not traced.finished()  # open until the body is read
        assert list(stream)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(openai.APIStatusError):  # refused by the open circuit
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        client.close()
    ok, failed, refused = traced.finished(SpanKind.CLIENT)
    assert ok.attributes is not None and failed.attributes is not None
    assert ok.name == "chat gpt-4o-mini"
    assert ok.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert ok.attributes["gen_ai.provider.name"] == "openai"
    assert ok.attributes["server.address"] == "127.0.0.1"
    assert ok.attributes["llm_circuit_breaker.name"] == "openai"
    assert "error.type" not in ok.attributes
    assert failed.attributes["error.type"] == "503"
    assert (refused.attributes or {})["error.type"].endswith("CircuitOpenError")
    assert any(e.name == "llm_circuit_breaker.rejected" for e in refused.events)
    (first,) = traced.points("gen_ai.client.operation.time_to_first_chunk")
    assert first.count == 1


def test_transport_requests_inside_a_decorated_call_are_its_attempts(
    llm_server: FakeLLMServer,
) -> None:
    """Under a decorated call (async SDK client), the transport's request is an attempt of
    that call, not a second logical span."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.chat("Hello there!"))

    async def run() -> Any:
        transport = AsyncCircuitBreakerTransport("openai-http", registry=registry)
        client = openai.AsyncOpenAI(
            api_key="sk-test",
            base_url=llm_server.url + "/v1",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport),
        )

        @with_retry(max_retries=1)
        async def ask(model: str) -> Any:
            return await client.chat.completions.create(model=model, messages=MESSAGES)

        try:
            return await ask(model="gpt-4o")
        finally:
            await client.close()

    assert asyncio.run(run()).choices
    (call,) = traced.finished(SpanKind.CLIENT)
    (attempt,) = traced.finished(SpanKind.INTERNAL)
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert (attempt.attributes or {})["llm_circuit_breaker.name"] == "openai-http"
    assert call.name == "chat gpt-4o"
    assert (call.attributes or {})["gen_ai.provider.name"] == "openai"


def test_a_helper_call_is_one_client_span(llm_server: FakeLLMServer) -> None:
    """LLMCircuitBreaker.call: one CLIENT span with the body's model; its attempt a child."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.chat("Hello there!"))
    with LLMCircuitBreaker("openai", registry=registry) as cb:
        answer = cb.call(
            llm_server.url + "/v1/chat/completions", data={"model": "gpt-4o", "messages": []}
        )
    assert answer["choices"]
    (call,) = traced.finished(SpanKind.CLIENT)
    assert call.name == "chat gpt-4o"
    assert (call.attributes or {})["gen_ai.provider.name"] == "openai"
    assert (call.attributes or {})["server.address"] == "127.0.0.1"


def test_a_failover_event_names_the_filled_breakers(registry: BreakerRegistry) -> None:
    """Scoped targets: the failover event carries the filled names and the status."""
    traced = Traced(registry)

    @circuit_breaker("openai:{model}", registry=registry)
    def primary(model: str) -> str:
        raise http_status_error(529)

    @circuit_breaker("anthropic:{model}", registry=registry)
    def backup(model: str) -> str:
        return "ok"

    assert with_fallbacks(primary, backup)(model="big") == "ok"
    (call,) = traced.finished(SpanKind.CLIENT)
    (event,) = call.events
    assert dict(event.attributes or {}) == {
        "llm_circuit_breaker.name": "openai:big",
        "llm_circuit_breaker.fallback.next": "anthropic:big",
        "error.type": "529",
    }
    assert call.name == "chat big"


def test_hedges_are_attempts_of_one_logical_call(registry: BreakerRegistry) -> None:
    """with_hedging with delay 0: both attempts start at once, each in its own thread, and
    both are attempt spans of the one logical call (the thread gets the caller's context)."""
    from llm_circuit_breaker import with_hedging

    traced = Traced(registry)
    answer = threading.Event()

    @circuit_breaker("openai", registry=registry)
    def slow() -> str:
        answer.wait(5)
        return "late"

    @circuit_breaker("anthropic", registry=registry)
    def fast() -> str:
        return "ok"

    try:
        assert with_hedging(slow, fast, delay=0)() == "ok"
    finally:
        answer.set()
    for _ in range(1000):  # the loser's thread ends its span once released
        if len(traced.finished(SpanKind.INTERNAL)) == 2:
            break
        time.sleep(0.01)
    (call,) = traced.finished(SpanKind.CLIENT)
    attempts = traced.finished(SpanKind.INTERNAL)
    assert sorted((s.attributes or {})["llm_circuit_breaker.name"] for s in attempts) == [
        "anthropic",
        "openai",
    ]
    assert all(s.parent is not None and s.parent.span_id == call.context.span_id for s in attempts)


def test_an_async_generator_and_a_helper_stream_are_one_span_each(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """A decorated async generator under with_retry, and LLMCircuitBreaker.stream: the span
    of each covers its items (one CLIENT span, its attempt a child)."""
    traced = Traced(registry)

    @with_retry(max_retries=1)
    @circuit_breaker("anthropic:{model}", registry=registry)
    async def stream(model: str) -> Any:
        for piece in ("Hel", "lo"):
            yield piece

    async def consume() -> list[str]:
        return [piece async for piece in stream(model="claude-x")]

    assert asyncio.run(consume()) == ["Hel", "lo"]
    (call,) = traced.finished(SpanKind.CLIENT)
    (attempt,) = traced.finished(SpanKind.INTERNAL)
    assert call.name == "chat claude-x"
    assert (call.attributes or {})["gen_ai.provider.name"] == "anthropic"
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    llm_server.script(Reply.chat("Hello there!", stream=True))
    with LLMCircuitBreaker("openai", registry=registry) as cb:
        events = cb.stream(
            llm_server.url + "/v1/chat/completions",
            data={"model": "gpt-4o", "messages": [], "stream": True},
        )
        assert len(traced.finished(SpanKind.CLIENT)) == 1  # the stream's span is open
        assert list(events)
    assert [s.name for s in traced.finished(SpanKind.CLIENT)] == ["chat claude-x", "chat gpt-4o"]
    firsts = traced.points("gen_ai.client.operation.time_to_first_chunk")
    assert sum(point.count for point in firsts) == 2  # each stream's first chunk, once


def test_a_throttle_wait_is_an_event_of_the_attempt_that_waited(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    """After a 429 with retry-after, the next call waits for its slot: the wait is an event
    on that call's attempt span, named after the filled breaker; the 429 is the first call's
    error.type."""

    @with_retry(max_retries=0)
    @circuit_breaker("openai:{model}", registry=registry)
    def ask(model: str, error: BaseException | None = None) -> str:
        if error is not None:
            raise error
        return "ok"

    traced = Traced(registry)
    limited = http_status_error(
        429, {"retry-after": "2"}, {"error": {"code": "rate_limit_exceeded"}}
    )
    with pytest.raises(Exception, match="429"):
        ask("gpt-4o", limited)
    assert ask("gpt-4o") == "ok"
    assert clock.sleeps  # the second call waited for its slot
    first, second = traced.finished(SpanKind.CLIENT)
    assert (first.attributes or {})["error.type"] == "429"
    (attempt,) = [
        s
        for s in traced.finished(SpanKind.INTERNAL)
        if s.parent is not None and s.parent.span_id == second.context.span_id
    ]
    (wait,) = [e for e in attempt.events if e.name == "llm_circuit_breaker.throttle_wait"]
    assert (wait.attributes or {})["llm_circuit_breaker.name"] == "openai:gpt-4o"
    assert (wait.attributes or {})["llm_circuit_breaker.throttle.wait"] == pytest.approx(
        clock.sleeps[0]
    )


def _client(server: FakeLLMServer, transport: Any = None, *, max_retries: int = 0) -> Any:
    return openai.OpenAI(
        api_key="sk-test",
        base_url=server.url + "/v1",
        max_retries=max_retries,
        http_client=None if transport is None else httpx.Client(transport=transport),
    )


def test_a_returned_sdk_stream_dropped_unclosed_ends_its_call(
    llm_server: FakeLLMServer,
) -> None:
    """A decorated call returning the openai SDK's stream, one chunk read, then dropped without
    close(): its span ends (marked dropped, not an error) and its duration is recorded."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.chat("Hello there!", stream=True))
    client = _client(llm_server)

    @circuit_breaker("openai", registry=registry)
    def ask() -> Any:
        return client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)

    try:
        stream = ask()
        next(iter(stream))
        assert not traced.finished(SpanKind.CLIENT)
        del stream
        gc.collect()
    finally:
        client.close()
    (span,) = traced.finished(SpanKind.CLIENT)
    assert (span.attributes or {})["llm_circuit_breaker.dropped"] is True
    assert span.status.status_code is not StatusCode.ERROR
    assert "error.type" not in (span.attributes or {})
    (duration,) = traced.points("gen_ai.client.operation.duration")
    assert duration.count == 1


def test_a_returned_async_stream_dropped_unclosed_ends_its_call(
    registry: BreakerRegistry,
) -> None:
    """The same for a coroutine function returning an async stream, never iterated."""
    traced = Traced(registry)

    async def chunks() -> Any:
        yield "a"

    @circuit_breaker("anthropic", registry=registry)
    async def ask() -> Any:
        return chunks()

    async def run() -> None:
        stream = await ask()
        assert not traced.finished(SpanKind.CLIENT)
        del stream
        gc.collect()

    asyncio.run(run())
    (span,) = traced.finished(SpanKind.CLIENT)
    assert (span.attributes or {})["llm_circuit_breaker.dropped"] is True
    assert span.status.status_code is not StatusCode.ERROR
    assert sum(p.count for p in traced.points("gen_ai.client.operation.duration")) == 1


def test_a_refusal_is_named_by_its_class_not_the_failure_it_carries(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """A circuit opened by a 503 refuses: the refusal's span says CircuitOpenError (not the
    503 the error carries), as the transport's refused request does; a budget's refusal says
    BudgetExceededError."""
    traced = Traced(registry)

    @circuit_breaker("openai", registry=registry, failure_threshold=1)
    def ask() -> str:
        raise http_status_error(503)

    with pytest.raises(Exception, match="503"):
        ask()
    with pytest.raises(CircuitOpenError):
        ask()

    @circuit_breaker("openai-budget", registry=registry, token_budget=5)
    def spend() -> str:
        return "ok"

    spend.breaker.spend(10)  # type: ignore[attr-defined]
    with pytest.raises(BudgetExceededError):
        spend()

    llm_server.script(Reply.error(503))
    transport = CircuitBreakerTransport("openai-http", registry=registry, failure_threshold=1)
    client = _client(llm_server, transport)
    try:
        for _ in range(2):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        client.close()
    kinds = [(s.attributes or {}).get("error.type") for s in traced.finished(SpanKind.CLIENT)]
    assert kinds == [
        "503",
        "llm_circuit_breaker.errors.CircuitOpenError",
        "llm_circuit_breaker.errors.BudgetExceededError",
        "503",
        "llm_circuit_breaker.errors.CircuitOpenError",
    ]


def test_an_sdk_retry_through_the_transport_is_an_attempt_of_its_call(
    llm_server: FakeLLMServer,
) -> None:
    """The openai SDK retries a 503 itself (max_retries=2): one logical CLIENT span and one
    call in the duration histogram; the retry is an attempt span under it, counted as a retry
    of the breaker."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.error(503, headers={"retry-after-ms": "1"}), Reply.chat("hey"))
    transport = CircuitBreakerTransport("openai", registry=registry, failure_threshold=10)
    client = _client(llm_server, transport, max_retries=2)
    try:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        client.close()
    assert reply.choices[0].message.content == "hey"
    (call,) = traced.finished(SpanKind.CLIENT)
    (retry,) = traced.finished(SpanKind.INTERNAL)
    assert retry.parent is not None and retry.parent.span_id == call.context.span_id
    assert (retry.attributes or {})["llm_circuit_breaker.attempt"] == 2
    assert [e.name for e in retry.events] == ["llm_circuit_breaker.retry"]
    durations = traced.points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == 1
    (retries,) = traced.points("llm_circuit_breaker.retries")
    assert retries.value == 1


def test_an_async_sdk_retry_through_the_transport_is_an_attempt_of_its_call(
    llm_server: FakeLLMServer,
) -> None:
    """The same with the async SDK client over AsyncCircuitBreakerTransport."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.error(503, headers={"retry-after-ms": "1"}), Reply.chat("hey"))

    async def run() -> Any:
        transport = AsyncCircuitBreakerTransport("openai", registry=registry)
        client = openai.AsyncOpenAI(
            api_key="sk-test",
            base_url=llm_server.url + "/v1",
            max_retries=2,
            http_client=httpx.AsyncClient(transport=transport),
        )
        try:
            return await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        finally:
            await client.close()

    assert asyncio.run(run()).choices[0].message.content == "hey"
    (call,) = traced.finished(SpanKind.CLIENT)
    (retry,) = traced.finished(SpanKind.INTERNAL)
    assert retry.parent is not None and retry.parent.span_id == call.context.span_id
    assert sum(p.count for p in traced.points("gen_ai.client.operation.duration")) == 1


def test_a_task_outliving_its_call_is_a_call_of_its_own(registry: BreakerRegistry) -> None:
    """A task started inside a traced call that runs its guarded call after that call ended:
    a logical span of its own (in the same trace), timed, not an attempt of the ended one."""
    traced = Traced(registry)
    go = threading.Event()

    @circuit_breaker("openai-background", registry=registry)
    async def background() -> int:
        return 1

    tasks: list[asyncio.Task[Any]] = []

    @circuit_breaker("openai", registry=registry)
    async def outer() -> int:
        async def later() -> int:
            while not go.is_set():
                await asyncio.sleep(0)
            return await background()

        tasks.append(asyncio.get_running_loop().create_task(later()))
        return 0

    async def run() -> None:
        await outer()
        assert len(traced.finished(SpanKind.CLIENT)) == 1  # the outer call has ended
        go.set()
        await tasks[0]

    asyncio.run(run())
    first, second = traced.finished(SpanKind.CLIENT)
    assert not traced.finished(SpanKind.INTERNAL)
    assert (second.attributes or {})["llm_circuit_breaker.name"] == "openai-background"
    assert second.context.trace_id == first.context.trace_id
    assert sum(p.count for p in traced.points("gen_ai.client.operation.duration")) == 2


def test_a_json_answer_through_the_transport_has_no_time_to_first_chunk(
    llm_server: FakeLLMServer,
) -> None:
    """time_to_first_chunk is for streams: a JSON answer through the transport records none."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.chat("hey"), Reply.chat("Hello there!", stream=True))
    client = _client(llm_server, CircuitBreakerTransport("openai", registry=registry))
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert not traced.points("gen_ai.client.operation.time_to_first_chunk")
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        assert list(stream)
    finally:
        client.close()
    (first,) = traced.points("gen_ai.client.operation.time_to_first_chunk")
    assert first.count == 1


def test_a_fallback_that_served_is_named_on_the_logical_span(registry: BreakerRegistry) -> None:
    """with_fallbacks a -> b over a scoped breaker: the logical span keeps the requested model
    and says which breaker and model served it."""
    traced = Traced(registry)

    @circuit_breaker("openai:{model}", registry=registry)
    def ask(model: str) -> str:
        if model == "gpt-4o":
            raise ConnectionError("down")
        return model

    assert with_fallbacks(lambda: ask(model="gpt-4o"), lambda: ask(model="gpt-4o-mini"))() == (
        "gpt-4o-mini"
    )
    assert with_fallbacks(lambda: ask(model="gpt-4o-mini"), lambda: ask(model="gpt-4o"))() == (
        "gpt-4o-mini"
    )
    served, first = traced.finished(SpanKind.CLIENT)
    attributes = served.attributes or {}
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes["llm_circuit_breaker.name"] == "openai:gpt-4o"
    assert attributes["llm_circuit_breaker.served_by"] == "openai:gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert "llm_circuit_breaker.served_by" not in (first.attributes or {})


def test_a_call_of_the_same_function_inside_a_traced_call_is_traced_too(
    registry: BreakerRegistry,
) -> None:
    """The shell the hook is calling is marked for that one entry only: a recursive call of
    the same decorated function, and a task it starts, are attempts of the running call."""
    traced = Traced(registry)

    @circuit_breaker("openai", registry=registry)
    def countdown(n: int) -> int:
        return 0 if n == 0 else 1 + countdown(n - 1)

    @circuit_breaker("openai-async", registry=registry)
    async def fan(n: int) -> int:
        if n == 0:
            return 0
        return 1 + await asyncio.get_running_loop().create_task(fan(n - 1))

    assert countdown(2) == 2
    assert asyncio.run(fan(2)) == 2
    calls = traced.finished(SpanKind.CLIENT)
    assert len(calls) == 2
    attempts = traced.finished(SpanKind.INTERNAL)
    assert sorted((s.attributes or {})["llm_circuit_breaker.name"] for s in attempts) == [
        "openai",
        "openai",
        "openai-async",
        "openai-async",
    ]
    ids = {c.context.span_id for c in calls} | {a.context.span_id for a in attempts}
    assert all(a.parent is not None and a.parent.span_id in ids for a in attempts)
    assert sum(p.count for p in traced.points("gen_ai.client.operation.duration")) == 2


@pytest.mark.parametrize("count", ["²", "1" * 5000])
def test_an_odd_sdk_retry_count_is_a_call_of_its_own_when_traced(
    llm_server: FakeLLMServer, count: str
) -> None:
    """A retry-count header that is no SDK's count ("²", thousands of digits) is a first
    attempt for the spans as for the transport: one CLIENT span, no retry, no ValueError."""
    registry = BreakerRegistry()
    traced = Traced(registry)
    llm_server.script(Reply.chat("hey"))
    transport = CircuitBreakerTransport("odd-count", registry=registry)
    with httpx.Client(transport=transport) as client:
        answer = client.post(
            llm_server.url + "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"x-stainless-retry-count": count.encode("utf-8")},
        )
    assert answer.status_code == 200
    assert len(traced.finished(SpanKind.CLIENT)) == 1
    assert not traced.finished(SpanKind.INTERNAL)
    assert registry.get("odd-count").stats.retries == 0
