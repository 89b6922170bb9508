"""The httpx transport under the real openai and anthropic SDKs, against the fake provider."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitOpenError,
    CircuitState,
    IncompleteStreamError,
    ThrottledError,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.httpx import (
    AsyncCircuitBreakerTransport,
    CircuitBreakerTransport,
    refusal,
)
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply
from tests.polling import auntil, until

MESSAGES = [{"role": "user", "content": "hi"}]
# The SDKs' shortest backoff sleep is 0.375 s (0.5 s less up to 25% jitter): a refusal that
# returns sooner was not retried. Its own latency is measured in benchmarks/transport.py.
NO_SDK_BACKOFF = 0.3


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


class Sdk:
    """One SDK over one httpx library, sync, with a transport in a fresh registry."""

    def __init__(self, kind: str, lib: Any, server: FakeLLMServer, **transport: Any) -> None:
        self.kind = kind
        self.registry = BreakerRegistry()
        retries = transport.pop("max_retries", 2)
        self.transport = CircuitBreakerTransport("llm", registry=self.registry, **transport)
        self.fields = {k: v for k, v in transport.items() if not k.endswith("_timeout")}
        http_client = lib.Client(transport=self.transport)
        if kind == "openai":
            self.client: Any = openai.OpenAI(
                api_key="sk-test", base_url=server.url + "/v1", http_client=http_client,
                max_retries=retries,
            )  # fmt: skip
        else:
            self.client = anthropic.Anthropic(
                api_key="sk-test", base_url=server.url, http_client=http_client,
                max_retries=retries,
            )  # fmt: skip

    @property
    def breaker(self) -> Any:
        return self.registry.get_or_create_with("llm", self.fields)

    def call(self) -> Any:
        if self.kind == "openai":
            return self.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return self.client.messages.create(model="claude", max_tokens=8, messages=MESSAGES)

    def stream(self, limit: int | None = None) -> list[Any]:
        if self.kind == "openai":
            events = self.client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
        else:
            events = self.client.messages.create(
                model="claude", max_tokens=8, messages=MESSAGES, stream=True
            )
        seen = []
        with events:
            for event in events:
                seen.append(event)
                if limit is not None and len(seen) >= limit:
                    break
        return seen

    def ok(self) -> Reply:
        if self.kind == "openai":
            return Reply.ok("hello")
        return Reply(json={"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
                           "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 1, "output_tokens": 1}})  # fmt: skip

    def stream_reply(self, *, complete: bool = True, error: str | None = None) -> Reply:
        if self.kind == "openai":
            return Reply.openai_stream(["a", "b", "c"], done=complete, error=error)
        return Reply.anthropic_stream(["a", "b"], finish=complete, error=error)


SDKS = [("openai", httpx), ("openai", httpx2), ("anthropic", httpx2)]
_MADE: list[Sdk] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every SDK client a test made is closed after it (no socket left to the GC)."""
    yield
    while _MADE:
        _MADE.pop().client.close()


@pytest.fixture(params=SDKS, ids=lambda p: f"{p[0]}-{p[1].__name__}")
def sdk(request: pytest.FixtureRequest, llm_server: FakeLLMServer) -> Sdk:
    kind, lib = request.param
    return make(kind, lib, llm_server)


def make(kind: str, lib: Any, server: FakeLLMServer, **options: Any) -> Sdk:
    made = Sdk(kind, lib, server, **options)
    _MADE.append(made)
    return made


# -- answers and failures -------------------------------------------------------------------


def test_a_success_is_counted_once(sdk: Sdk, llm_server: FakeLLMServer) -> None:
    llm_server.script(sdk.ok())
    sdk.call()
    stats = sdk.breaker.stats
    assert (stats.successes, stats.failures, stats.calls) == (1, 0, 1)


def test_sdk_retries_multiply_with_ours_and_are_counted_exactly(
    sdk: Sdk, llm_server: FakeLLMServer
) -> None:
    """The SDK's 2 retries are 3 attempts, each admitted and counted."""
    llm_server.script(*[Reply.error(503)] * 3)
    with pytest.raises(Exception) as caught:
        sdk.call()
    assert getattr(caught.value, "status_code", None) == 503
    assert llm_server.hits == 3
    assert sdk.breaker.stats.failures == 3
    assert [r.headers.get("x-stainless-retry-count") for r in llm_server.requests] == [
        "0",
        "1",
        "2",
    ]
    assert sdk.breaker.stats.retries == 2  # 3 attempts, 1 logical call


def test_a_refusal_sends_nothing_and_the_sdk_does_not_retry_it(
    sdk: Sdk, llm_server: FakeLLMServer
) -> None:
    """An OPEN circuit: with max_retries=2 the SDK's call returns at once (no backoff sleep),
    nothing reaches the provider, and refusal() reads the CircuitOpenError."""
    sdk.breaker.force_open()
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        sdk.call()
    assert time.monotonic() - started < NO_SDK_BACKOFF
    assert llm_server.hits == 0
    refused = refusal(caught.value)
    assert isinstance(refused, CircuitOpenError) and refused.name == "llm"
    assert getattr(caught.value, "status_code", None) == 503


def test_a_throttled_refusal_carries_retry_after(llm_server: FakeLLMServer) -> None:
    """requests_per_minute=1 and no wait allowed: the second call is refused with a 429 the
    SDK does not retry; refusal() gives the ThrottledError and its retry_after."""
    sdk = make("openai", httpx, llm_server, requests_per_minute=1, throttle_max_wait=0.0)
    llm_server.script(sdk.ok(), sdk.ok())
    sdk.call()
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.call()
    refused = refusal(caught.value)
    assert isinstance(refused, ThrottledError) and 55.0 < refused.retry_after <= 60.0
    assert caught.value.response.headers["retry-after"] == "60"
    assert llm_server.hits == 1


@pytest.mark.parametrize(
    ("reply", "counted"),
    [
        (Reply.error(500), 1),
        (Reply.error(529, anthropic=True), 1),
        (Reply.error(400, "invalid_request_error"), 0),
        (Reply.error(401, "authentication_error"), 0),
        (Reply.error(404, "model_not_found"), 0),
        (
            Reply(status=429, text="<html>proxy says slow down</html>"),
            0,
        ),  # an HTML page from a proxy
        (Reply(status=502, json={"error": {"code": 429}}), 0),  # a wrapped rate limit
    ],
)
def test_responses_are_judged_like_errors(
    reply: Reply, counted: int, llm_server: FakeLLMServer
) -> None:
    """Status, headers and body go through the one verdict, as errors do."""
    sdk = make("openai", httpx, llm_server, max_retries=0)
    llm_server.script(reply)
    with pytest.raises(openai.APIStatusError):
        sdk.call()
    assert sdk.breaker.stats.failures == counted


def test_a_quota_429_opens_the_circuit_and_a_rate_limit_does_not(
    llm_server: FakeLLMServer,
) -> None:
    sdk = make("openai", httpx, llm_server, max_retries=0)
    llm_server.script(Reply.error(429, "rate_limit_exceeded", headers={"retry-after": "1"}))
    with pytest.raises(openai.RateLimitError):
        sdk.call()
    assert sdk.breaker.state is CircuitState.CLOSED and sdk.breaker.stats.throttled == 1
    llm_server.script(Reply.error(429, "insufficient_quota"))
    with pytest.raises(openai.RateLimitError):
        sdk.call()
    assert sdk.breaker.state is CircuitState.OPEN


def test_transport_errors_are_failures_and_the_sdk_wraps_them(closed_port: int) -> None:
    """Connection refused: the SDK raises its APIConnectionError, we count it."""
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("down", registry=registry)
    client = openai.OpenAI(
        api_key="sk-test", base_url=f"http://127.0.0.1:{closed_port}/v1",
        http_client=httpx.Client(transport=transport), max_retries=0,
    )  # fmt: skip
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    client.close()
    assert registry.get("down").stats.failures == 1


def test_a_body_cut_short_is_a_failure(llm_server: FakeLLMServer) -> None:
    """Half a JSON body, then a hang-up."""
    sdk = make("openai", httpx, llm_server, max_retries=0)
    llm_server.script(Reply(json={"x": "y" * 500}, drop=True))
    with pytest.raises(openai.APIConnectionError):
        sdk.call()
    assert sdk.breaker.stats.failures == 1


def test_rate_limit_headers_of_every_answer_feed_the_throttle(llm_server: FakeLLMServer) -> None:
    sdk = make("openai", httpx, llm_server)
    headers = {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "42",
        "x-ratelimit-reset-requests": "6m0s",
    }
    llm_server.script(Reply.ok("hi", headers=headers))
    sdk.call()
    assert sdk.breaker.throttle["requests_remaining"] == 42


# -- streams --------------------------------------------------------------------------------


def test_a_whole_stream_is_a_success(sdk: Sdk, llm_server: FakeLLMServer) -> None:
    llm_server.script(sdk.stream_reply())
    assert sdk.stream()
    assert (sdk.breaker.stats.successes, sdk.breaker.stats.failures) == (1, 0)


def test_a_truncated_stream_raises_in_the_sdk_and_is_a_failure(
    sdk: Sdk, llm_server: FakeLLMServer
) -> None:
    """No [DONE] / finish reason, no message_stop: the bare SDKs hand back half an answer; through
    the transport the SDK raises (openai wraps it in APIConnectionError)."""
    llm_server.script(sdk.stream_reply(complete=False))
    with pytest.raises(Exception) as caught:
        sdk.stream()
    chain = [caught.value, caught.value.__cause__]
    assert any(isinstance(e, IncompleteStreamError) for e in chain), chain
    assert sdk.breaker.stats.failures == 1


def test_a_responses_stream_without_completed_is_truncated(llm_server: FakeLLMServer) -> None:
    sdk = make("openai", httpx, llm_server, max_retries=0)
    created = {"type": "response.created", "response": {"id": "resp_1", "object": "response"}}
    delta = {"type": "response.output_text.delta", "delta": "hi", "item_id": "i", "output_index": 0,
             "content_index": 0, "sequence_number": 1}  # fmt: skip
    llm_server.script(
        Reply(events=[_sse(created, "response.created"), _sse(delta, "response.output_text.delta")])
    )
    with pytest.raises(openai.APIConnectionError) as caught:
        for _ in sdk.client.responses.create(model="gpt-4o", input="hi", stream=True):
            pass
    assert isinstance(caught.value.__cause__, IncompleteStreamError)
    assert sdk.breaker.stats.failures == 1


def test_an_error_event_in_a_200_stream_is_a_failure(sdk: Sdk, llm_server: FakeLLMServer) -> None:
    """OpenAI's {"error": ...} frame, Anthropic's event: error: the SDK raises
    its own error and the breaker counts a failure."""
    error = "server_error" if sdk.kind == "openai" else "overloaded_error"
    llm_server.script(sdk.stream_reply(error=error))
    with pytest.raises(Exception):  # noqa: B017 - each SDK raises its own class
        sdk.stream()
    assert sdk.breaker.stats.failures == 1


def test_a_dropped_stream_is_a_failure(sdk: Sdk, llm_server: FakeLLMServer) -> None:
    """The connection cut after some chunks."""
    reply = sdk.stream_reply(complete=False)
    llm_server.script(Reply(events=reply.events, drop=True))
    with pytest.raises(Exception):  # noqa: B017 - each SDK raises its own class
        sdk.stream()
    assert sdk.breaker.stats.failures == 1


def test_an_abandoned_stream_is_neither(sdk: Sdk, llm_server: FakeLLMServer) -> None:
    llm_server.script(sdk.stream_reply())
    assert len(sdk.stream(limit=1)) == 1
    stats = sdk.breaker.stats
    assert (stats.successes, stats.failures, stats.ignored) == (0, 0, 1)


def test_idle_and_first_byte_timeouts(llm_server: FakeLLMServer) -> None:
    """A stream silent for longer than idle_timeout fails fast, and so does one whose
    headers take longer than first_byte_timeout, not after the SDK's 600 s."""
    sdk = make("anthropic", httpx2, llm_server, idle_timeout=0.2, max_retries=0)
    silent = Reply.anthropic_stream(["a", "b"])
    llm_server.script(Reply(events=silent.events, event_delay=2.5))
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - the SDK's timeout class
        sdk.stream()
    assert time.monotonic() - started < 2.0  # the silence alone lasts 2.5 s
    assert sdk.breaker.stats.failures == 1
    sdk = make("openai", httpx, llm_server, first_byte_timeout=0.2, max_retries=0)
    llm_server.script(Reply.openai_stream(["a"], delay=2.5))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sdk.stream()
    assert time.monotonic() - started < 2.0


def test_a_stream_opening_with_a_429_is_retried_by_the_sdk_before_streaming(
    llm_server: FakeLLMServer,
) -> None:
    """The SDK retries the opening 429; the throttle is told; no duplicated chunks."""
    sdk = make("openai", httpx, llm_server)
    llm_server.script(
        Reply.error(429, "rate_limit_exceeded", headers={"retry-after-ms": "10"}),
        Reply.openai_stream(["a", "b"]),
    )
    chunks = sdk.stream()
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["a", "b"]
    stats = sdk.breaker.stats
    assert (stats.throttled, stats.successes, stats.failures) == (1, 1, 0)


# -- names, clients, composition ------------------------------------------------------------


def test_one_breaker_per_model_from_the_body(llm_server: FakeLLMServer) -> None:
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("openai:{model}", registry=registry, failure_threshold=1)
    client = openai.OpenAI(
        api_key="sk-test", base_url=llm_server.url + "/v1",
        http_client=httpx.Client(transport=transport), max_retries=0,
    )  # fmt: skip
    llm_server.script(Reply.error(503), Reply.ok("fine"))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.close()
    assert registry.get("openai:gpt-4o").state is CircuitState.OPEN
    assert registry.get("openai:gpt-4o-mini").state is CircuitState.CLOSED


def test_a_callable_names_the_breaker(llm_server: FakeLLMServer) -> None:
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport(
        lambda request: f"host:{request.url.host}", registry=registry
    )
    with httpx.Client(transport=transport) as client:
        client.post(llm_server.url + "/v1/chat/completions", json={})
    assert registry.get("host:127.0.0.1").stats.successes == 1


def test_a_template_missing_its_field_is_a_type_error(llm_server: FakeLLMServer) -> None:
    transport = CircuitBreakerTransport("openai:{deployment}", registry=BreakerRegistry())
    with httpx.Client(transport=transport) as client, pytest.raises(TypeError, match="deployment"):
        client.post(llm_server.url + "/v1/chat/completions", json={"model": "m"})


@pytest.mark.parametrize("http2", [False, True])
def test_pooling_and_http2(llm_server: FakeLLMServer, http2: bool) -> None:
    """The wrapped transport is made once and reused (one connection pool), HTTP/2 on or off."""
    inner = httpx.HTTPTransport(http2=http2)
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("pooled", inner, registry=registry)
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            assert client.post(llm_server.url + "/v1/chat/completions", json={}).status_code == 200
    assert registry.get("pooled").stats.successes == 3
    ports = {r.headers.get("Host") for r in llm_server.requests}
    assert len(ports) == 1


def test_sdk_default_clients_take_the_transport(llm_server: FakeLLMServer) -> None:
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("default-client", registry=registry)
    client = anthropic.Anthropic(
        api_key="sk-test", base_url=llm_server.url,
        http_client=anthropic.DefaultHttpxClient(transport=transport),
    )  # fmt: skip
    llm_server.script(make("anthropic", httpx2, llm_server).ok())
    client.messages.create(model="c", max_tokens=8, messages=MESSAGES)
    client.close()
    assert registry.get("default-client").stats.successes == 1


def test_with_retry_around_the_sdk_treats_a_refusal_as_one(llm_server: FakeLLMServer) -> None:
    """An outer with_retry sees the SDK's error around a refusal as the refusal: a
    CircuitOpenError is not retried, and no decorator counts it as a provider failure."""
    sdk = make("openai", httpx, llm_server)
    sdk.breaker.force_open()
    outer = BreakerRegistry()
    clock = FakeClock()

    @with_retry(max_retries=3, sleep=clock.sleep)
    @circuit_breaker("outer", registry=outer)
    def call() -> Any:
        return sdk.call()

    with pytest.raises(openai.InternalServerError):
        call()
    assert clock.sleeps == []
    assert outer.get("outer").stats.failures == 0


# -- async ----------------------------------------------------------------------------------


ASYNC_SDKS = [("openai", httpx), ("anthropic", httpx2)]


def _async_client(kind: str, lib: Any, server: FakeLLMServer, transport: Any) -> Any:
    if kind == "openai":
        return openai.AsyncOpenAI(
            api_key="sk-test", base_url=server.url + "/v1",
            http_client=lib.AsyncClient(transport=transport),
        )  # fmt: skip
    return anthropic.AsyncAnthropic(
        api_key="sk-test", base_url=server.url, http_client=lib.AsyncClient(transport=transport)
    )


async def _astream(kind: str, client: Any) -> list[Any]:
    if kind == "openai":
        events = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    else:
        events = await client.messages.create(
            model="c", max_tokens=8, messages=MESSAGES, stream=True
        )
    return [event async for event in events]


@pytest.mark.parametrize(("kind", "lib"), ASYNC_SDKS, ids=["openai", "anthropic"])
async def test_async_streams_refusals_and_truncation(
    kind: str, lib: Any, llm_server: FakeLLMServer
) -> None:
    registry = BreakerRegistry()
    transport = AsyncCircuitBreakerTransport("async", registry=registry)
    client = _async_client(kind, lib, llm_server, transport)
    helper = make(kind, lib, llm_server)
    llm_server.script(helper.stream_reply(), helper.stream_reply(complete=False))
    assert await _astream(kind, client)
    with pytest.raises(Exception) as caught:
        await _astream(kind, client)
    assert any(isinstance(e, IncompleteStreamError) for e in (caught.value, caught.value.__cause__))
    breaker = registry.get("async")
    assert (breaker.stats.successes, breaker.stats.failures) == (1, 1)
    await breaker.aforce_open()
    started = time.monotonic()
    with pytest.raises(Exception) as refused:
        await _astream(kind, client)
    assert time.monotonic() - started < NO_SDK_BACKOFF
    assert isinstance(refusal(refused.value), CircuitOpenError)
    assert llm_server.hits == 2
    await client.close()


async def test_async_throttle_waits_in_line(llm_server: FakeLLMServer) -> None:
    """Concurrent tasks under requests_per_minute share the slots: each is admitted in turn,
    and a task cancelled while it waits gives its slot back."""
    registry = BreakerRegistry()
    transport = AsyncCircuitBreakerTransport(
        "paced", registry=registry, requests_per_minute=2, throttle_max_wait=120.0
    )
    async with httpx.AsyncClient(transport=transport) as client:
        url = llm_server.url + "/v1/chat/completions"
        await client.post(url, json={})
        await client.post(url, json={})
        waiting = asyncio.create_task(client.post(url, json={}))
        await auntil(lambda: registry.get("paced").throttle["waiting"] == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert llm_server.hits == 2


def test_bad_breaker_arguments() -> None:
    with pytest.raises(TypeError, match="breaker must be"):
        CircuitBreakerTransport(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_timeout"):
        CircuitBreakerTransport("x", idle_timeout=-1)
    with pytest.raises(TypeError, match="did you mean"):
        CircuitBreakerTransport("x", failure_treshold=3)


def test_refusal_of_other_errors_is_none() -> None:
    assert refusal(ValueError("x")) is None
    error = CircuitOpenError("n", 1.0, "r")
    assert refusal(error) is error
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = error
    assert refusal(wrapped) is error


def test_pool_exhaustion_is_not_a_provider_failure(llm_server: FakeLLMServer) -> None:
    """The client's own pool is full (one connection, a slow call holding it): the
    waiting request times out in the pool, and the breaker counts no failure."""
    import threading

    registry = BreakerRegistry()
    inner = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1))
    transport = CircuitBreakerTransport("pool", inner, registry=registry)
    client = httpx.Client(transport=transport, timeout=httpx.Timeout(5.0, pool=0.1))
    llm_server.script(Reply.ok("slow", delay=1.0))
    slow = threading.Thread(
        target=client.post, args=(llm_server.url + "/v1/x",), kwargs={"json": {}}
    )
    slow.start()
    until(lambda: llm_server.hits == 1)  # the slow call holds the only connection
    with pytest.raises(httpx.PoolTimeout):
        client.post(llm_server.url + "/v1/x", json={})
    slow.join()
    client.close()
    stats = registry.get("pool").stats
    assert stats.failures == 0 and stats.successes == 1


def test_a_failed_responses_stream_is_a_failure(llm_server: FakeLLMServer) -> None:
    """Response.created, then response.failed with server_error, in a 200 stream."""
    sdk = make("openai", httpx, llm_server, max_retries=0)
    created = {"type": "response.created", "response": {"id": "r", "object": "response"}}
    failed = {"type": "response.failed", "sequence_number": 2,
              "response": {"id": "r", "object": "response", "status": "failed",
                           "error": {"code": "server_error", "message": "boom"}}}  # fmt: skip
    llm_server.script(
        Reply(events=[_sse(created, "response.created"), _sse(failed, "response.failed")])
    )
    try:
        for _ in sdk.client.responses.create(model="gpt-4o", input="hi", stream=True):
            pass
    except Exception:
        pass
    assert sdk.breaker.stats.failures == 1


async def test_one_probe_through_the_transport_under_concurrency(
    llm_server: FakeLLMServer,
) -> None:
    """Concurrent 503s open the circuit; once HALF_OPEN, of 10 concurrent calls one
    probe reaches the provider and the others are refused without a request."""
    clock = FakeClock()
    registry = BreakerRegistry(clock=clock)
    transport = AsyncCircuitBreakerTransport(
        "probe", registry=registry, failure_threshold=3, reset_timeout=10.0
    )
    async with httpx.AsyncClient(transport=transport) as client:
        url = llm_server.url + "/v1/chat/completions"
        llm_server.script(*[Reply.error(503)] * 3)
        await asyncio.gather(*(client.post(url, json={}) for _ in range(3)))
        assert registry.get("probe").state is CircuitState.OPEN
        clock.advance(10.0)
        llm_server.script(Reply.ok("probe", delay=0.2))
        answers = await asyncio.gather(*(client.post(url, json={}) for _ in range(10)))
    assert sorted(a.status_code for a in answers) == [200] + [503] * 9
    assert llm_server.hits == 4
    assert sum(a.headers.get("x-llm-circuit-breaker") == "circuit-open" for a in answers) == 9


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=20))
def test_any_body_is_watched_without_a_crash(chunks: list[bytes]) -> None:
    """Hostile SSE bodies: the watch returns errors of our hierarchy or nothing, and always
    answers whether the stream was cut."""
    from llm_circuit_breaker.errors import LLMCircuitBreakerError
    from llm_circuit_breaker.httpx._watch import Watch

    watch = Watch("http://x")
    for chunk in chunks:
        found = watch.feed(chunk)
        assert found is None or isinstance(found, LLMCircuitBreakerError)
    assert watch.truncated() in (True, False)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.one_of(
            st.just('data: {"error": {"message": "x", "type": "server_error"}}\n\n'),
            st.just("data: [DONE]\n\n"),
            st.just('data: {"object": "chat.completion.chunk", "choices": []}\n\n'),
            st.just("event: error\ndata: not json\n\n"),
            st.text(max_size=40),
        ),
        max_size=10,
    )
)
def test_stream_frames_in_any_order_never_crash(events: list[str]) -> None:
    from llm_circuit_breaker.httpx._watch import Watch

    watch = Watch("http://x")
    for event in events:
        watch.feed(event.encode())
    watch.truncated()


_EVENTS = (
    'data: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}\n\n',
    'data: {"object": "chat.completion.chunk", "choices": [{"finish_reason": "stop"}]}\n\n',
    # the compact spelling the API sends: a finish reason of null, then one that ends it
    'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"x"},'
    '"finish_reason":null}]}\n\n',
    'data: {"object":"chat.completion.chunk","choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
    'data: {"error": {"message": "x", "type": "server_error"}}\n\n',
    "data: [DONE]\n\n",
    'event: message_start\ndata: {"type": "message_start"}\n\n',
    'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n',
    'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n',
    'event: message_stop\ndata: {"type": "message_stop"}\n\n',
    'data: {"type": "response.created"}\n\n',
    'data: {"type": "response.completed"}\n\n',
    "event: ping\ndata: {}\n\n",
    'data: {"partial": \n',
)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.sampled_from(_EVENTS), max_size=12))
def test_whole_events_are_judged_as_byte_by_byte(events: list[str]) -> None:
    """Chunks of whole events may skip being cut into lines: the errors found and the verdict
    on truncation are those of the same body fed one byte at a time."""
    from llm_circuit_breaker.httpx._watch import Watch

    def watched(chunks: list[bytes]) -> tuple[list[str], bool]:
        watch = Watch("http://x")
        found = [type(watch.feed(chunk)).__name__ for chunk in chunks]
        return found, watch.truncated()

    body = "".join(events).encode()
    by_event, by_byte = (
        watched([e.encode() for e in events]),
        watched([body[i : i + 1] for i in range(len(body))]),
    )
    assert [n for n in by_event[0] if n != "NoneType"] == [n for n in by_byte[0] if n != "NoneType"]
    assert by_event[1] == by_byte[1]


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.sampled_from(_EVENTS), max_size=12),
    cuts=st.lists(st.integers(1, 400), max_size=12),
    metered=st.booleans(),
)
def test_reads_cut_anywhere_are_judged_as_byte_by_byte(
    events: list[str], cuts: list[int], metered: bool
) -> None:
    """Reads that end inside an event (as 64 KiB reads do) are judged as the same body fed
    one byte at a time: the first error found, the usage, the verdict on truncation."""
    from llm_circuit_breaker.httpx._watch import Watch

    def watched(chunks: list[bytes]) -> tuple[list[str], float | None, bool]:
        watch = Watch("http://x")
        watch.metered = metered
        found = [type(watch.feed(chunk)).__name__ for chunk in chunks]
        errors = [n for n in found if n != "NoneType"]
        return errors[:1], watch.usage, watch.truncated()  # a read reports its first error

    body = "".join(events).encode()
    reads, at = [], 0
    for size in cuts:
        reads.append(body[at : at + size])
        at += size
    reads.append(body[at:])
    assert watched(reads) == watched([body[i : i + 1] for i in range(len(body))])


def test_a_long_read_of_plain_events_is_not_cut_into_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the first content event, the whole events of a read that ends inside one are not
    cut into lines when none can matter: only the lines of the event it ends in are read."""
    from llm_circuit_breaker.httpx._watch import Watch

    read: list[bytes] = []
    line = Watch._line

    def counted(self: Watch, text: bytes) -> BaseException | None:
        read.append(text)
        return line(self, text)

    monkeypatch.setattr(Watch, "_line", counted)
    watch = Watch("http://x")
    delta = 'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": null}]}\n\n'
    watch.feed(delta.encode())
    assert watch.content
    read.clear()
    body = (delta * 300).encode()
    watch.feed(body + b'data: {"choices": [{"delta"')
    assert read == []  # the unfinished line waits for its end
    watch.feed(b': {"content": "!"}, "finish_reason": null}]}\n\n' + body)
    assert len(read) == 2  # that event's data line and the blank line that ends it


def test_refusal_of_a_hostile_error_is_none() -> None:
    class Hostile(Exception):
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("no attributes here")

    class BadResponse(Exception):
        response = property(lambda self: 1 / 0)

    assert refusal(Hostile()) is None
    assert refusal(BadResponse()) is None


def _mock_client(registry: BreakerRegistry, **fields: Any) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.dumps({"choices": [], "usage": {"total_tokens": 7}}).encode()
        return httpx.Response(
            200, headers={"Content-Type": "application/json"}, stream=httpx.ByteStream(body)
        )

    transport = CircuitBreakerTransport(
        "mock", httpx.MockTransport(answer), registry=registry, **fields
    )
    return httpx.Client(transport=transport)


def test_a_request_body_is_parsed_only_when_something_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No name template, no "stream" key read for a stream's timeouts, no throttle pacing and
    no budget: the body of a long conversation is not parsed; with a stream timeout, a
    "stream" key is read from the parsed body; a token budget still counts the answer's
    usage."""
    from types import SimpleNamespace

    from llm_circuit_breaker.httpx import _core

    parsed: list[bytes] = []

    def loads(content: bytes) -> Any:
        parsed.append(content)
        return json.loads(content)

    monkeypatch.setattr(_core, "json", SimpleNamespace(loads=loads, dumps=json.dumps))
    conversation = {"model": "m", "messages": MESSAGES * 100, "max_tokens": 50}
    registry = BreakerRegistry()
    with _mock_client(registry) as client:
        for _ in range(3):
            client.post("http://provider/v1/chat/completions", json=conversation).read()
        assert parsed == []
        client.post("http://provider/v1/chat/completions", json={**conversation, "stream": False})
        assert parsed == []  # no timeout of a stream's own: whether it streams does not matter
    assert registry.get_or_create("mock").stats.successes == 4
    timed = BreakerRegistry()
    with _mock_client(timed, first_byte_timeout=5.0) as client:
        client.post("http://provider/v1/chat/completions", json=conversation).read()
        assert parsed == []
        client.post("http://provider/v1/chat/completions", json={**conversation, "stream": False})
        assert len(parsed) == 1
    budgeted = BreakerRegistry()
    with _mock_client(budgeted, token_budget=1000) as client:
        client.post("http://provider/v1/chat/completions", json=conversation).read()
    assert budgeted.get_or_create("mock").budget["spent"] == 7


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["model", "max_tokens", "max_output_tokens", "max_completion_tokens"])
        | st.text(max_size=8),
        st.none()
        | st.integers(-10, 10**6)
        | st.floats(allow_nan=False, allow_infinity=False, width=32)
        | st.text(max_size=30)
        | st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 99), max_size=2)
        | st.fixed_dictionaries({"max_tokens": st.fixed_dictionaries({"type": st.just("int")})}),
        max_size=5,
    )
)
def test_a_token_estimate_read_from_the_bytes_is_the_parsed_one(body: dict[str, Any]) -> None:
    """The token estimate of a body left unparsed equals the one of its parsed JSON (a cap
    named in a string, a tool schema's field of that name, or a cap that is not a number
    included)."""
    from llm_circuit_breaker.httpx._core import UNREAD, Core

    core = Core("x", BreakerRegistry(), None, None, {})
    request = httpx.Request("POST", "http://provider/v1/chat/completions", json=body)
    assert core.tokens(request, UNREAD) == core.tokens(request, core.body_of(request))


# -- the work per request -------------------------------------------------------------------


def _calls_into_the_package(send: Any, requests: int) -> float:
    """Python functions of this package called per request by ``send()`` (a count, not a
    time: the same on any machine)."""
    import sys

    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and "llm_circuit_breaker" in frame.f_code.co_filename:
            calls += 1

    sys.setprofile(count)
    try:
        for _ in range(requests):
            send()
    finally:
        sys.setprofile(None)
    return calls / requests


def _plain_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "application/json"}, stream=httpx.ByteStream(b"{}")
    )


def test_a_plain_answer_costs_few_calls_and_is_counted() -> None:
    # A JSON answer with nothing to watch (no SSE, no first-token deadline, no token budget):
    # the body passes through one generator, the breaker is looked up once, no estimate made.
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport(
        "plain", httpx.MockTransport(_plain_answer), registry=registry
    )
    with httpx.Client(transport=transport) as client:
        url = "http://provider/v1/chat/completions"
        client.post(url, json={"model": "m"}).read()
        per_request = _calls_into_the_package(
            lambda: client.post(url, json={"model": "m"}).read(), 20
        )
    # 36 with a generic guarded body, 22 with an attempt apart, 15 through admit() and two
    # property calls of reads_token_cost
    assert per_request <= 13, per_request
    stats = registry.get_or_create("plain").stats
    assert (stats.successes, stats.failures, stats.calls) == (21, 0, 21)


async def test_an_async_plain_answer_costs_few_calls_and_is_counted() -> None:
    registry = BreakerRegistry()
    transport = AsyncCircuitBreakerTransport(
        "aplain", httpx.MockTransport(_plain_answer), registry=registry
    )
    async with httpx.AsyncClient(transport=transport) as client:
        url = "http://provider/v1/chat/completions"
        for _ in range(3):
            (await client.post(url, json={"model": "m"})).read()
    stats = registry.get_or_create("aplain").stats
    assert (stats.successes, stats.failures, stats.calls) == (3, 0, 3)
