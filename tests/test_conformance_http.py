"""SPEC sections 4, 9 and 10 against a provider of our own: the facade, the throttle and the
httpx transport driven through a small aiohttp server that answers as the providers do
(status codes, error bodies, rate-limit headers, server-sent events)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    IncompleteStreamError,
    LLMCircuitBreaker,
    Outcome,
    RateLimitError,
    ThrottledError,
)
from llm_circuit_breaker.httpx import (
    AsyncCircuitBreakerTransport,
    CircuitBreakerTransport,
    refusal,
)
from llm_circuit_breaker.storage import MemoryStateStore, RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests.redis_server import RedisServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RATE_LIMITED = {
    "error": {
        "message": "Rate limit reached for requests",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


class Provider:
    """An LLM provider on 127.0.0.1 (a random port) in a thread of its own: each request takes
    the next scripted handler, or the default answer (an OpenAI chat completion)."""

    def __init__(self) -> None:
        self.script: deque[Handler] = deque()
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {"path": request.path_qs, "headers": dict(request.headers), "body": body}
        )
        if self.script:
            return await self.script.popleft()(request)
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def then(self, *handlers: Handler) -> None:
        self.script.extend(handlers)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A JSON answer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=b"" if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json", **(headers or {})},
        )

    return handler


def events(*frames: str, status: int = 200) -> Handler:
    """A server-sent event stream of ``frames`` (each a whole event, its blank line included)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame.encode())
        await response.write_eof()
        return response

    return handler


@pytest.fixture
def provider() -> Iterator[Provider]:
    made = Provider()
    yield made
    made.close()


def _facade(**breaker: Any) -> LLMCircuitBreaker:
    return LLMCircuitBreaker(
        name="conformance",
        circuit_breaker={"failure_threshold": 3, **breaker},
        retry={"max_retries": 2, "initial_delay": 0.01, "max_delay": 5.0},
        registry=BreakerRegistry(),
    )


# -- section 9: a pause lasts at most max_open_for; reset() and force_closed() clear it --------


@pytest.mark.parametrize("config", [{"max_open_for": 60.0}, {"reset_timeout": 5.0}])
def test_a_hinted_pause_lasts_at_most_max_open_for(
    provider: Provider, config: dict[str, Any]
) -> None:
    """A rate-limit 429 asking for 1000 s pauses the throttle for max_open_for at most (60 s,
    or 10 x a reset_timeout of 5 s), not for the 300 s of throttle_max_pause."""
    provider.then(answer(429, RATE_LIMITED, {"retry-after": "1000"}))
    with _facade(**config) as cb:
        with pytest.raises(RateLimitError):
            cb.call(provider.url + "/v1/chat/completions", data={"model": "m"})
        cap = cb.breaker.config.effective_max_open_for
        assert cap in (50.0, 60.0)
        assert 0.9 * cap < cb.breaker.throttle["paused_for"] <= cap
        assert cb.get_state()["state"] == "CLOSED"
    assert len(provider.requests) == 1  # past max_delay: not retried


def test_headers_saying_nothing_is_left_pause_at_most_max_open_for(provider: Provider) -> None:
    """A success whose headers say 0 requests left until an hour from now makes the next call
    wait max_open_for at most."""
    provider.then(
        answer(
            200,
            {"ok": True},
            {
                "x-ratelimit-limit-requests": "1",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1h0m0s",
            },
        )
    )
    with _facade(max_open_for=20.0, throttle_max_wait=0.0) as cb:
        assert cb.call(provider.url + "/v1/chat/completions", data={}) == {"ok": True}
        assert cb.breaker.throttle["reset_in"] <= 20.0 + 1e-6


def _stores(redis_server: RedisServer) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "local", {}
    yield "memory store", {"store": MemoryStateStore()}
    yield "redis store", {"store": RedisStateStore(redis_server.client())}


@pytest.mark.parametrize("action", ["reset", "force_closed"])
def test_reset_and_force_closed_clear_a_pause(redis_server: RedisServer, action: str) -> None:
    """reset() and force_closed() clear a throttle pause, whatever keeps the breaker's state
    (in the breaker, a memory store, Redis)."""
    for where, store in _stores(redis_server):
        breaker = CircuitBreaker(f"clear-{action}", CircuitBreakerConfig(), **store)
        breaker.record(breaker.admit(), Outcome.THROTTLED, hint=100.0)
        assert breaker.throttle["paused_for"] > 99.0, where
        getattr(breaker, action)()
        assert breaker.throttle["paused_for"] == 0.0, where
        assert breaker.throttle["requests_remaining"] is None, where
        permit = breaker.admit()  # at once: no wait for a slot
        assert isinstance(permit, int), where
        breaker.record(permit, Outcome.SUCCESS)


def test_a_pause_cap_is_the_same_in_the_core_and_in_redis(redis_server: RedisServer) -> None:
    """One 429 hinting a day pauses a Redis-shared throttle for max_open_for too."""
    clock = FakeClock()
    for where, store in _stores(redis_server):
        breaker = CircuitBreaker(
            f"cap-{where}", CircuitBreakerConfig(reset_timeout=3.0), clock=clock, **store
        )
        breaker.record(breaker.admit(), Outcome.THROTTLED, hint=86_400.0)
        assert breaker.throttle["paused_for"] == pytest.approx(30.0, abs=0.5), where


# -- section 4: call() / acall() of a streaming request --------------------------------------

CHAT_CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
}
LAST_CHUNK = {**CHAT_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
SERVER_ERROR_FRAME = (
    'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n'
)


def _frame(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _call(cb: LLMCircuitBreaker, driver: str, url: str, data: Any) -> Any:
    if driver == "sync":
        return cb.call(url, data=data)
    return asyncio.run(cb.acall(url, data=data))


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_streamed_answer_read_by_call_is_its_events(provider: Provider, driver: str) -> None:
    """call() / acall() of a request answered with server-sent events return its events (the
    answer the provider was paid for), not a "body is not JSON" failure that is re-sent."""
    provider.then(events(_frame(CHAT_CHUNK), _frame(LAST_CHUNK), "data: [DONE]\n\n"))
    with _facade() as cb:
        got = _call(cb, driver, provider.url + "/v1/chat/completions", {"stream": True})
        assert [event.data for event in got] == [CHAT_CHUNK, LAST_CHUNK]
        assert cb.breaker.stats.failures == 0 and cb.breaker.stats.successes == 1
    assert len(provider.requests) == 1


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_streamed_answer_read_by_call_is_judged_as_a_stream(
    provider: Provider, driver: str
) -> None:
    """An error frame in, or a cut before the end of, a streamed answer read by call() is a
    provider failure retried (nothing was handed over); the next attempt's events come back."""
    provider.then(
        events(SERVER_ERROR_FRAME, "data: [DONE]\n\n"),
        events(_frame(CHAT_CHUNK)),  # no finish reason, no [DONE]: cut short
        events(_frame(CHAT_CHUNK), _frame(LAST_CHUNK)),
    )
    with _facade() as cb:
        got = _call(cb, driver, provider.url + "/v1/chat/completions", {"stream": True})
        assert [event.data for event in got] == [CHAT_CHUNK, LAST_CHUNK]
        assert cb.breaker.stats.failures == 2
    assert len(provider.requests) == 3


# -- section 10: the transport under the official SDKs, left at their default retries ---------

QUOTA = {
    "error": {
        "message": "You exceeded your current quota",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
SPEND_LIMIT = {
    "type": "error",
    "error": {
        "type": "rate_limit_error",
        "message": "Spend limit reached",
        "details": {"error_code": "enforced_spend_limit_reached"},
    },
    "request_id": "req_1",
}


def _openai(provider: Provider, breaker: CircuitBreaker, asynchronous: bool = False) -> Any:
    import httpx
    import openai

    if asynchronous:
        return openai.AsyncOpenAI(
            api_key="sk-test",
            base_url=provider.url + "/v1",
            http_client=httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(breaker)),
        )
    return openai.OpenAI(
        api_key="sk-test",
        base_url=provider.url + "/v1",
        http_client=httpx.Client(transport=CircuitBreakerTransport(breaker)),
    )


def _chat(client: Any) -> Any:
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_quota_429_reaches_the_caller_as_the_providers_error_at_once(
    provider: Provider, asynchronous: bool
) -> None:
    """A quota 429 opens the circuit; an SDK at its default max_retries does not sleep and
    retry into a refusal (hiding the quota error behind a 503): it raises the provider's
    RateLimitError at once, one request sent."""
    import openai

    breaker = BreakerRegistry().get_or_create("openai-quota")
    provider.then(answer(429, QUOTA))
    client = _openai(provider, breaker, asynchronous)
    with pytest.raises(openai.RateLimitError) as caught:
        if asynchronous:
            asyncio.run(_chat(client))
        else:
            _chat(client)
    assert caught.value.code == "insufficient_quota"
    assert refusal(caught.value) is None
    assert len(provider.requests) == 1
    assert breaker.state is CircuitState.OPEN


def test_a_spend_limit_429_reaches_the_caller_as_anthropics_error_at_once(
    provider: Provider,
) -> None:
    """Anthropic's enforced spend limit opens the circuit and is raised at once."""
    import anthropic
    import httpx2

    breaker = BreakerRegistry().get_or_create("anthropic-spend")
    provider.then(answer(429, SPEND_LIMIT))
    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url=provider.url,
        http_client=httpx2.Client(transport=CircuitBreakerTransport(breaker)),
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model="c", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 429 and refusal(caught.value) is None
    assert len(provider.requests) == 1
    assert breaker.state is CircuitState.OPEN


def test_a_hint_that_opens_the_circuit_is_not_slept_on_by_the_sdk(provider: Provider) -> None:
    """A 503 asking for 2 s opens a circuit whose reset_timeout is 1 s for those 2 s: the SDK
    does not sleep them to probe the circuit, it raises the 503 at once."""
    import openai

    breaker = BreakerRegistry().get_or_create(
        "openai-hint", CircuitBreakerConfig(reset_timeout=1.0)
    )
    provider.then(answer(503, {"error": {"message": "down"}}, {"retry-after": "2"}))
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(_openai(provider, breaker))
    assert caught.value.status_code == 503 and refusal(caught.value) is None
    assert len(provider.requests) == 1
    assert breaker.state is CircuitState.OPEN


def test_metrics_only_never_stops_the_sdk_s_own_retries(provider: Provider) -> None:
    """In metrics-only mode (``enabled=False``) nothing is refused: an answer that would open
    the circuit gets no ``x-should-retry: false``, and the SDK retries it as without us."""
    import openai

    breaker = BreakerRegistry().get_or_create(
        "openai-metrics-only", CircuitBreakerConfig(reset_timeout=0.05, enabled=False)
    )
    # a hint past reset_timeout: enforced, this answer would open the circuit at once
    for _ in range(2):
        provider.then(answer(503, {"error": {"message": "down"}}, {"retry-after-ms": "100"}))
    client = _openai(provider, breaker)
    client = client.with_options(max_retries=1)
    with pytest.raises(openai.InternalServerError):
        _chat(client)
    assert len(provider.requests) == 2  # the SDK's retry went out


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_spend_limit_opens_the_circuit_naming_the_limit(provider: Provider, driver: str) -> None:
    """Anthropic's spend-limit 429 (a rate_limit_error by type) opens the circuit at once, not
    retried, and the reason names the limit: "quota exhausted: enforced_spend_limit_reached"."""
    provider.then(answer(429, SPEND_LIMIT))
    with _facade() as cb:
        with pytest.raises(RateLimitError):
            _call(cb, driver, provider.url + "/v1/messages", {"model": "c", "max_tokens": 8})
        with pytest.raises(CircuitOpenError) as refused:
            _call(cb, driver, provider.url + "/v1/messages", {"model": "c", "max_tokens": 8})
    assert refused.value.reason == "quota exhausted: enforced_spend_limit_reached"
    assert len(provider.requests) == 1


# -- section 9: pacing from Anthropic's RFC 3339 reset headers ---------------------------------


@pytest.mark.parametrize(
    "shape", ["{day}T{time}Z", "{day}T{time}.5Z", "{day}T{time}.123456789Z", "{day}t{time}z"]
)
def test_anthropic_resets_in_every_rfc3339_shape_pace_calls(provider: Provider, shape: str) -> None:
    """anthropic-ratelimit-requests-reset is RFC 3339: fractions of any length and a lower-case
    "t" / "z" are read too (Python 3.10's fromisoformat takes 3 or 6 digits, upper case only),
    so "0 remaining until 10 s from now" paces the next call."""
    import time

    at = time.gmtime(time.time() + 10.0)
    stamp = shape.format(day=time.strftime("%Y-%m-%d", at), time=time.strftime("%H:%M:%S", at))
    provider.then(
        answer(
            200,
            {"ok": True},
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": stamp,
            },
        )
    )
    with _facade() as cb:
        cb.call(provider.url + "/v1/messages", data={"model": "c", "max_tokens": 8})
        throttle = cb.breaker.throttle
    assert throttle["requests_remaining"] == 0
    assert throttle["reset_in"] is not None and 5.0 < throttle["reset_in"] < 11.0


# -- sections 4 and 10: what is an error frame ------------------------------------------------


def _stream(cb: LLMCircuitBreaker, driver: str, url: str, data: Any) -> list[Any]:
    if driver == "sync":
        return list(cb.stream(url, data=data))

    async def collect() -> list[Any]:
        return [event async for event in cb.astream(url, data=data)]

    return asyncio.run(collect())


NULL_ERRORS = [None, "", {}]


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("error", NULL_ERRORS)
def test_a_chunk_whose_error_is_null_is_no_error_frame(
    provider: Provider, driver: str, error: Any
) -> None:
    """A chat chunk carrying "error": null (or empty), as some compatible servers send, is
    content: the SDKs test the error's truth, and so does the facade's stream."""
    chunks = [{**CHAT_CHUNK, "error": error}, {**LAST_CHUNK, "error": error}]
    provider.then(events(*map(_frame, chunks), "data: [DONE]\n\n"))
    with _facade() as cb:
        got = _stream(cb, driver, provider.url + "/v1/chat/completions", {"stream": True})
        assert [event.data for event in got] == chunks
        assert cb.breaker.stats.failures == 0


@pytest.mark.parametrize("error", NULL_ERRORS)
def test_a_chunk_whose_error_is_null_is_no_failure_through_the_transport(
    provider: Provider, error: Any
) -> None:
    """Through the transport the SDK reads such a stream whole, and the breaker counts a
    success, not a failure (which would open the circuit on a healthy provider)."""
    breaker = BreakerRegistry().get_or_create("null-errors")
    chunks = [{**CHAT_CHUNK, "error": error}, {**LAST_CHUNK, "error": error}]
    provider.then(events(*map(_frame, chunks), "data: [DONE]\n\n"))
    client = _openai(provider, breaker)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert [chunk.choices[0].delta.content for chunk in stream] == ["Hel", None]
    assert (breaker.stats.failures, breaker.stats.successes) == (0, 1)


# -- no credential in an error's message or repr ----------------------------------------------

KEYS = ["sk-proj-AbCdEfGhIjKlMnOp1234", "AIzaSyD-EXAMPLEexampleEXAMPLE0123"]


@pytest.mark.parametrize("key", KEYS)
def test_a_provider_echoing_the_key_in_its_error_codes_leaks_it_nowhere(
    provider: Provider, key: str
) -> None:
    """A hostile provider puts the caller's key in every field of a billing error (type, code,
    message) and in the URL's query: neither the error raised, nor the refusal that follows,
    nor a state change shows it, in any case."""
    provider.then(answer(402, {"error": {"type": key, "code": key, "message": f"bad {key}"}}))
    changes: list[str] = []
    with _facade() as cb:
        cb.breaker.add_listener(lambda change: changes.append(repr(change)))
        url = f"{provider.url}/v1beta/models/g:generateContent?key={key}"
        shown = []
        for _ in range(2):
            try:
                cb.call(url, headers={"x-goog-api-key": key}, data={})
            except Exception as exc:
                shown += [str(exc), repr(exc)]
        state = str(cb.get_state())
    assert any("CircuitOpenError" in text for text in shown)
    for text in [*shown, *changes, state]:
        assert key.lower() not in text.lower()


def _nothing_left(family: str) -> dict[str, str]:
    import time

    if family == "openai":
        return {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10s"}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 10.0))
    return {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": stamp,
    }


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("family", ["openai", "anthropic"])
def test_headers_saying_nothing_is_left_without_a_limit_pause_until_the_reset(
    provider: Provider, driver: str, family: str
) -> None:
    """A success whose headers say 0 requests remain until a reset 10 s away (no limit header
    to pace by) pauses the throttle until then: the next call is not sent (ThrottledError at
    once with throttle_max_wait=0), where it went out unpaced."""
    provider.then(answer(200, {"ok": True}, _nothing_left(family)))
    url = provider.url + "/v1/chat/completions"
    with _facade(throttle_max_wait=0.0) as cb:
        assert _call(cb, driver, url, {}) == {"ok": True}
        assert 5.0 < cb.breaker.throttle["paused_for"] <= 10.5
        with pytest.raises(ThrottledError) as refused:
            cb.breaker.admit()  # what the facade's next attempt asks first
        assert 5.0 < refused.value.retry_after <= 10.5
        assert cb.get_state()["state"] == "CLOSED"
    assert len(provider.requests) == 1


WHOLE_ANSWER = {
    "id": "chatcmpl-2",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
}


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_streaming_request_answered_with_json_is_no_silent_empty_stream(
    provider: Provider, driver: str
) -> None:
    """A 200 JSON answer to stream() / astream() (a gateway's error object, a server that does
    not stream) is judged, not read as an event stream with no events: an error object is a
    failure retried before anything was yielded, a whole answer comes as the one event."""
    provider.then(
        answer(200, {"error": {"message": "upstream overloaded", "type": "server_error"}}),
        answer(200, WHOLE_ANSWER),
    )
    with _facade() as cb:
        got = _stream(cb, driver, provider.url + "/v1/chat/completions", {"stream": True})
        assert [event.data for event in got] == [WHOLE_ANSWER]
        assert (cb.breaker.stats.failures, cb.breaker.stats.successes) == (1, 1)
    assert len(provider.requests) == 2


# -- server-sent events with every line end SSE allows (CR LF, LF, a lone CR) ---------------


def _cr_only(*frames: str) -> list[str]:
    return [frame.replace("\n", "\r") for frame in frames]


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("newline", ["\r", "\r\n"])
def test_events_whose_lines_end_with_a_lone_cr_are_read(
    provider: Provider, driver: str, newline: str
) -> None:
    """SSE ends a line with CR LF, LF or a lone CR: a stream whose lines end with CR alone is
    read event by event, not as one line (whose data would be the whole body)."""
    frames = [_frame(CHAT_CHUNK), _frame(LAST_CHUNK), "data: [DONE]\n\n"]
    provider.then(events(*(frame.replace("\n", newline) for frame in frames)))
    with _facade() as cb:
        got = _stream(cb, driver, provider.url + "/v1/chat/completions", {"stream": True})
        assert [event.data for event in got] == [CHAT_CHUNK, LAST_CHUNK]


def test_a_cut_stream_with_lone_cr_line_ends_is_a_failure_through_the_transport(
    provider: Provider,
) -> None:
    """Through the transport, a chat stream with CR line ends cut before its end (no finish
    reason, no [DONE]) raises an error the SDK surfaces and counts a failure, as with LF."""
    import openai

    breaker = BreakerRegistry().get_or_create("cr-stream")
    provider.then(events(*_cr_only(_frame(CHAT_CHUNK), _frame(CHAT_CHUNK))))
    client = _openai(provider, breaker).with_options(max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        for _ in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    assert (breaker.stats.failures, breaker.stats.successes) == (1, 0)


# -- section 10: a Responses stream that fails ----------------------------------------------

_RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 0,
    "model": "m",
    "output": [],
    "status": "in_progress",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "temperature": 1,
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1,
}


def _event(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': 0, **fields})}\n\n"


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_a_failed_responses_stream_raises_naming_the_providers_error(provider: Provider) -> None:
    """A Responses stream ending in response.failed (which the SDK yields, not raises) counts a
    failure, and the error the SDK surfaces names what the provider said, not "cut short"."""
    import openai

    failed = {**_RESPONSE, "status": "failed", "error": {"code": "server_error", "message": "boom"}}
    provider.then(
        events(
            _event("response.created", response=_RESPONSE),
            _event("response.failed", response=failed),
        )
    )
    breaker = BreakerRegistry().get_or_create("responses")
    client = _openai(provider, breaker).with_options(max_retries=0)
    with pytest.raises(openai.APIError) as caught:
        for _ in client.responses.create(model="m", input="hi", stream=True):
            pass
    ours = [exc for exc in _chain(caught.value) if isinstance(exc, IncompleteStreamError)]
    assert ours and "boom" in str(ours[0])
    assert (breaker.stats.failures, breaker.stats.successes) == (1, 0)
