"""Adversarial probes of the httpx transport and the HTTP helpers: hostile headers, bodies
read partly, twice or never, probes that must always report, slots that must come back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    Outcome,
)
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply
from tests.polling import until
from tests.redis_server import RedisServer

HALF_OPEN_SOON = CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0, success_threshold=1)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.record(breaker.admit(), Outcome.FAILURE)
    clock.advance(10.0)
    assert breaker.state is CircuitState.HALF_OPEN


def _probe_breaker(name: str = "probe") -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(name, HALF_OPEN_SOON, clock=clock)
    _half_open(breaker, clock)
    return breaker, clock


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"id": "x", "choices": []})


# -- the SDK's retry-count header ------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["\u00b2", "9" * 5000, "\u0661", "00", "", "-1", "1e3", " 1", "1, 1", "\uff10"]
)
def test_odd_retry_counts_are_no_crash_and_no_retry(value: str) -> None:
    """A retry-count header that is no plain ASCII number (a superscript digit, 5000 digits,
    another script's digits, several headers joined) is not the SDK's count: the request is
    sent, no retry is counted and no retry budget spent."""
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport(
        "retries", httpx.MockTransport(_ok), registry=registry, retry_budget=0.1
    )
    with httpx.Client(transport=transport) as client:
        answer = client.get(
            "http://llm.test/", headers={"x-stainless-retry-count": value.encode("utf-8")}
        )
    assert answer.status_code == 200
    breaker = registry.get("retries")
    assert breaker.stats.retries == 0
    assert breaker.stats.calls == 1


# -- a body the inner transport read already ------------------------------------------------


def test_a_body_in_hand_reports_success_sync() -> None:
    """A transport that answers with its body read (``httpx.MockTransport``, respx, a cache):
    nothing ever reads the stream again, yet the attempt reports its success at once -- a
    HALF_OPEN probe closes the circuit while the response is still held."""
    breaker, _ = _probe_breaker()
    transport = CircuitBreakerTransport(breaker, httpx.MockTransport(_ok))
    with httpx.Client(transport=transport) as client:
        held = client.post("http://llm.test/v1/chat/completions", json=CHAT)
        assert held.json() == {"id": "x", "choices": []}
        assert breaker.state is CircuitState.CLOSED
        assert breaker.stats.successes == 1


async def test_a_body_in_hand_reports_success_async() -> None:
    breaker, _ = _probe_breaker()
    transport = AsyncCircuitBreakerTransport(breaker, httpx.MockTransport(_ok))
    async with httpx.AsyncClient(transport=transport) as client:
        held = await client.post("http://llm.test/v1/chat/completions", json=CHAT)
        assert held.status_code == 200
        assert breaker.state is CircuitState.CLOSED
        assert breaker.stats.successes == 1


def test_an_sse_body_in_hand_is_watched() -> None:
    """A stream answered with its body in hand is still read for its error frame."""
    frames = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'

    def sse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=frames)

    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("sse", httpx.MockTransport(sse), registry=registry)
    with httpx.Client(transport=transport) as client:
        held = client.post("http://llm.test/v1/chat/completions", json={**CHAT, "stream": True})
        assert held.content == frames
        assert registry.get("sse").stats.failures == 1


# -- probes through bodies read partly, never, or broken --------------------------------------


def _next_probe_admitted(breaker: CircuitBreaker) -> bool:
    """Whether the HALF_OPEN breaker admits a probe now (the slot is free); released again."""
    from llm_circuit_breaker import CircuitOpenError

    try:
        permit = breaker.admit()
    except CircuitOpenError:
        return False
    breaker.record(permit, Outcome.IGNORED)
    return True


def test_a_probe_dropped_unread_frees_its_slot(llm_server: FakeLLMServer) -> None:
    breaker, _ = _probe_breaker()
    transport = CircuitBreakerTransport(breaker)
    llm_server.script(Reply.ok())
    with httpx.Client(transport=transport) as client:
        gc.disable()
        try:
            request = client.build_request(
                "POST", llm_server.url + "/v1/chat/completions", json=CHAT
            )
            response = client.send(request, stream=True)
            assert not _next_probe_admitted(breaker)
            del response
        finally:
            gc.enable()
        gc.collect()
        assert _next_probe_admitted(breaker)
    assert breaker.state is CircuitState.HALF_OPEN


@pytest.mark.parametrize("how", ["iter_raw", "iter_bytes", "iter_lines"])
def test_a_probe_read_partly_then_closed_frees_its_slot(
    llm_server: FakeLLMServer, how: str
) -> None:
    breaker, _ = _probe_breaker()
    llm_server.script(Reply(chunks=[b"a" * 10, b"b" * 10, b"c\n" * 10]))
    with httpx.Client(transport=CircuitBreakerTransport(breaker)) as client:
        with client.stream("GET", llm_server.url + "/raw") as response:
            next(iter(getattr(response, how)()))
            assert not _next_probe_admitted(breaker)
        assert _next_probe_admitted(breaker)
        with pytest.raises(httpx.StreamError):
            next(iter(response.iter_raw()))
    assert breaker.stats.ignored >= 1


async def test_a_probe_read_partly_then_closed_frees_its_slot_async(
    llm_server: FakeLLMServer,
) -> None:
    breaker, _ = _probe_breaker()
    llm_server.script(Reply(chunks=[b"a" * 10, b"b" * 10]))
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(breaker)) as client:
        async with client.stream("GET", llm_server.url + "/raw") as response:
            async for _ in response.aiter_raw():
                break
            assert not _next_probe_admitted(breaker)
        assert _next_probe_admitted(breaker)


def test_a_probe_whose_body_breaks_reports_a_failure(llm_server: FakeLLMServer) -> None:
    """The server hangs up half-way through the body: the probe fails, the circuit reopens."""
    breaker, _ = _probe_breaker()
    llm_server.script(Reply.ok("x" * 5000, drop=True))
    with (
        httpx.Client(transport=CircuitBreakerTransport(breaker)) as client,
        pytest.raises(httpx.HTTPError),
    ):
        client.post(llm_server.url + "/v1/chat/completions", json=CHAT)
    assert breaker.state is CircuitState.OPEN


def test_a_probe_whose_stream_is_replaced_frees_its_slot(llm_server: FakeLLMServer) -> None:
    breaker, _ = _probe_breaker()
    llm_server.script(Reply.ok())
    with httpx.Client(transport=CircuitBreakerTransport(breaker)) as client:
        gc.disable()
        try:
            with client.stream("POST", llm_server.url + "/v1/chat/completions", json=CHAT) as r:
                r.stream = httpx.ByteStream(b"{}")
                assert r.read() == b"{}"
        finally:
            gc.enable()
        gc.collect()
        assert _next_probe_admitted(breaker)


def test_a_body_iterated_twice_reports_once(llm_server: FakeLLMServer) -> None:
    registry = BreakerRegistry()
    llm_server.script(Reply.ok())
    transport = CircuitBreakerTransport("twice", registry=registry)
    url = llm_server.url + "/v1/chat/completions"
    with httpx.Client(transport=transport) as client, client.stream("POST", url, json=CHAT) as r:
        body = r.read()
        assert r.read() == body
        with pytest.raises(httpx.StreamConsumed):
            list(r.iter_raw())
    stats = registry.get("twice").stats
    assert (stats.successes, stats.failures, stats.ignored) == (1, 0, 0)


# -- hostile response headers ------------------------------------------------------------------


def _answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"{}") -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    return handler


HOSTILE_HEADERS = [
    [(b"x-ratelimit-remaining-requests", b"\xff\xfe" * 600)],
    [(b"x-ratelimit-reset-requests", "\uff16s".encode())] * 3,
    [(b"x-ratelimit-limit-tokens", b"1e400"), (b"x-ratelimit-remaining-tokens", b"nan")],
    [(b"anthropic-ratelimit-tokens-reset", b"0001-01-01T00:00:00+23:59")],
    [(b"anthropic-ratelimit-tokens-reset", b"9999-12-31T23:59:59.999999-23:59")],
    [(b"x-ratelimit-reset-tokens", b"99999999999999h99999999999m")],
    [(b"retry-after", b"Wed, 21 Oct 99999 07:28:00 GMT"), (b"retry-after-ms", b"-1")],
    [(b"X-%d" % i, b"v") for i in range(10_000)] + [(b"x-ratelimit-remaining-tokens", b"1")],
    [("x-\u00e9\u00e8".encode("latin-1"), "\u00ff".encode("latin-1"))],
    [(b"content-type", b"text/event-stream"), (b"content-type", b"application/json")],
    [(b"content-encoding", b"gzip, br")],
]


@pytest.mark.parametrize("status", [200, 429, 500])
@pytest.mark.parametrize("headers", HOSTILE_HEADERS, ids=range(len(HOSTILE_HEADERS)))
def test_hostile_response_headers_never_crash(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    """Throttled by hints and limits of any shape: the answer reaches the caller, the attempt
    reports exactly once, the breaker stays usable."""
    registry = BreakerRegistry(clock=FakeClock())  # a 429's pause is not slept
    transport = CircuitBreakerTransport(
        "hostile", httpx.MockTransport(_answer(status, headers)), registry=registry,
        throttle=True, max_concurrent=1,
    )  # fmt: skip
    with httpx.Client(transport=transport) as client:
        for _ in range(2):
            try:
                answer = client.get("http://llm.test/")
            except httpx.DecodingError:  # httpx's own: "gzip, br" over a body that is neither
                assert (b"content-encoding", b"gzip, br") in headers
                continue
            assert answer.status_code in (status, 429, 503)
    stats = registry.get("hostile").stats
    assert stats.successes + stats.failures + stats.ignored + stats.throttled == 2


class _CountedHeaders(httpx.Headers):
    lookups = 0

    def __getitem__(self, key: str) -> str:
        _CountedHeaders.lookups += 1
        return super().__getitem__(key)


@pytest.mark.parametrize("status", [429, 500])
def test_an_error_answer_with_ten_thousand_headers_is_judged_in_bounded_work(status: int) -> None:
    """``dict(httpx.Headers)`` looks every name up again (quadratic: seconds of CPU for 10k
    headers); the error is judged from the first 256 headers, each read once."""
    many = [(b"x-%d" % i, b"v") for i in range(10_000)]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = httpx.Response(status, headers=many, stream=httpx.ByteStream(b"{}"))
        answer.headers = _CountedHeaders(answer.headers)
        return answer

    registry = BreakerRegistry(clock=FakeClock())
    transport = CircuitBreakerTransport("many", httpx.MockTransport(handler), registry=registry)
    _CountedHeaders.lookups = 0
    answer = transport.handle_request(httpx.Request("GET", "http://llm.test/"))
    assert answer.status_code == status
    assert _CountedHeaders.lookups < 100
    assert registry.get("many").stats.calls == 1


# -- stores, budgets and a client shared by threads --------------------------------------------


def test_a_sync_transport_refuses_an_asyncio_store_before_admitting(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, asyncio=True, clock=clock, timeout=2)
    breaker = CircuitBreaker("astore", HALF_OPEN_SOON, clock=clock, store=store)
    transport = CircuitBreakerTransport(breaker, httpx.MockTransport(_ok))
    with httpx.Client(transport=transport) as client:
        for _ in range(2):  # the same answer each time: no breaker fixed half-way
            with pytest.raises(TypeError, match="AsyncCircuitBreakerTransport"):
                client.get("http://llm.test/")
    assert transport._core.fixed is None
    assert breaker.stats.calls == 0


async def test_an_asyncio_store_probe_dropped_unread_gives_its_permit_back(
    redis_server: RedisServer, redis_client: redis.Redis, llm_server: FakeLLMServer
) -> None:
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, asyncio=True, clock=clock, timeout=2)
    breaker = CircuitBreaker("aprobe", HALF_OPEN_SOON, clock=clock, store=store)
    permit = await breaker.aadmit()
    await breaker.arecord(permit, Outcome.FAILURE)
    clock.advance(10.0)
    llm_server.script(Reply.ok(), Reply.ok())
    url = llm_server.url + "/v1/chat/completions"
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(breaker)) as client:
        gc.disable()
        try:
            response = await client.send(client.build_request("POST", url, json=CHAT), stream=True)
            inflight = store.keys("aprobe")[1]
            assert redis_client.zcard(inflight) == 1
            refused = await client.post(url, json=CHAT)  # the probe slot is taken
            assert refused.headers["x-llm-circuit-breaker"] == "circuit-open"
            del response
        finally:
            gc.enable()
        gc.collect()
        for _ in range(100):  # the report is scheduled on this loop
            if redis_client.zcard(inflight) == 0:
                break
            await asyncio.sleep(0.01)
        assert redis_client.zcard(inflight) == 0
        assert (await client.post(url, json=CHAT)).status_code == 200
    await store.client.aclose()


def test_a_sync_store_with_a_token_budget_through_the_shortcut(
    redis_server: RedisServer, redis_client: redis.Redis, llm_server: FakeLLMServer
) -> None:
    """A breaker passed in with a token budget and a store: admission reads the request's
    estimate every time (``costly``), the answers' usage is spent, a spent budget refuses."""
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, clock=clock, timeout=2)
    config = CircuitBreakerConfig(token_budget=7.0, token_budget_window=60.0)
    breaker = CircuitBreaker("spent", config, clock=clock, store=store)
    transport = CircuitBreakerTransport(breaker)
    answers = []
    llm_server.script(*[Reply.ok()] * 10)
    with httpx.Client(transport=transport) as client:
        for _ in range(10):
            body = {**CHAT, "max_tokens": 40}
            answers.append(client.post(llm_server.url + "/v1/chat/completions", json=body))
    assert transport._core.costly
    statuses = [a.status_code for a in answers]
    assert 200 in statuses and 429 in statuses
    assert statuses.index(429) == statuses.count(200)  # once refused, refused
    assert statuses.count(200) == 4  # 2 tokens each (the answers' usage): 8 > 7 after four
    assert breaker.stats.throttle_refusals["token_budget"] == statuses.count(429)
    assert breaker.budget is not None and breaker.budget["spent"] == 8.0
    store.client.close()


def test_threads_sharing_a_client_at_one_call_in_flight_leave_no_slot(
    llm_server: FakeLLMServer,
) -> None:
    """Eight threads, one client, one slot: every call ends in an answer or a refusal, the
    outcomes add up, and no slot or waiter is left."""
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport(
        "shared", registry=registry, max_concurrent=1, throttle_max_wait=0.5
    )
    llm_server.script(*[Reply.ok()] * 40)
    statuses: list[int] = []
    with httpx.Client(transport=transport) as client:

        def calls() -> None:
            for n in range(5):
                if n % 2:  # half of them read as a stream, dropped half-read
                    with client.stream("GET", llm_server.url + "/v1/models") as r:
                        statuses.append(r.status_code)
                        next(r.iter_raw(), None)
                else:
                    statuses.append(client.get(llm_server.url + "/v1/models").status_code)

        threads = [threading.Thread(target=calls) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    breaker = registry.get("shared")
    assert len(statuses) == 40 and set(statuses) <= {200, 429}
    assert breaker.concurrency is not None
    assert breaker.concurrency["in_flight"] == 0 and breaker.concurrency["waiting"] == 0
    stats = breaker.stats
    assert stats.successes + stats.ignored + stats.throttled == 40


# -- the requests / aiohttp helpers' streams ---------------------------------------------------


def _helper(clock: FakeClock, **fields: Any) -> Any:
    from llm_circuit_breaker import LLMCircuitBreaker

    registry = BreakerRegistry(clock=clock)
    config = {"failure_threshold": 1, "reset_timeout": 10.0, "success_threshold": 1, **fields}
    return LLMCircuitBreaker("helper", config, {"max_retries": 0}, registry=registry)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_helper_stream_abandoned_half_read_frees_its_probe(
    llm_server: FakeLLMServer, kind: str
) -> None:
    clock = FakeClock()
    cb = _helper(clock)
    breaker = cb.breaker
    _half_open(breaker, clock)
    url = llm_server.url + "/v1/chat/completions"
    llm_server.script(Reply.openai_stream(["a", "b", "c"]), Reply.openai_stream(["d"]))
    gc.disable()
    try:
        if kind == "sync":
            events = cb.stream(url, data={**CHAT, "stream": True})
            next(events)
        else:
            aevents = cb.astream(url, data={**CHAT, "stream": True})
            await anext(aevents)
        assert not _next_probe_admitted(breaker)
        if kind == "sync":
            del events
        else:
            del aevents
    finally:
        gc.enable()
    gc.collect()
    for _ in range(100):  # an async generator is closed by its loop
        if _next_probe_admitted(breaker):
            break
        await asyncio.sleep(0.01)
    assert _next_probe_admitted(breaker)
    if kind == "sync":
        assert [e.data["choices"][0]["delta"]["content"] for e in cb.stream(url, data=CHAT)] == [
            "d"
        ]
    else:
        assert len([e async for e in cb.astream(url, data=CHAT)]) == 1
        await cb.aclose()
    cb.close()
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    "reply",
    [
        Reply.openai_stream(["a"], error="server_error"),
        Reply.openai_stream(["a", "b"], done=False),
        Reply(events=['data: {"error": {"message": "boom", "type": "server_error"}}\n\n']),
        Reply.openai_stream(["a", "b", "c"], done=False, drop=True),
    ],
    ids=["error-frame", "no-final", "error-first", "hung-up"],
)
async def test_a_broken_helper_stream_fails_its_probe(
    llm_server: FakeLLMServer, kind: str, reply: Reply
) -> None:
    from llm_circuit_breaker import LLMCircuitBreakerError

    clock = FakeClock()
    cb = _helper(clock)
    _half_open(cb.breaker, clock)
    llm_server.script(reply)
    url = llm_server.url + "/v1/chat/completions"
    with pytest.raises(LLMCircuitBreakerError):
        if kind == "sync":
            for _ in cb.stream(url, data={**CHAT, "stream": True}):
                pass
        else:
            async for _ in cb.astream(url, data={**CHAT, "stream": True}):
                pass
    await cb.aclose()
    cb.close()
    assert cb.breaker.state is CircuitState.OPEN


# -- numbers too big for a float ---------------------------------------------------------------

_HUGE = b"9" * 400  # a JSON integer float() refuses (OverflowError)


@pytest.mark.parametrize("kind", ["json", "sse"])
def test_a_usage_too_big_for_a_float_still_settles_the_probe(kind: str) -> None:
    """An answer whose ``usage`` is an integer no float holds: the whole answer is a success
    (its usage unknown: the estimate is spent), the probe reports, the caller reads it."""
    if kind == "json":
        content, kind_header = b'{"usage": {"total_tokens": ' + _HUGE + b"}}", "application/json"
    else:
        content = (
            b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"x"},'
            b'"finish_reason":"stop"}],"usage":{"total_tokens":' + _HUGE + b"}}\n\n"
            b"data: [DONE]\n\n"
        )
        kind_header = "text/event-stream"

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": kind_header}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(content))

    clock = FakeClock()
    config = CircuitBreakerConfig(
        failure_threshold=1, reset_timeout=10.0, success_threshold=1, token_budget=1e6
    )
    breaker = CircuitBreaker("huge-usage", config, clock=clock)
    _half_open(breaker, clock)
    transport = CircuitBreakerTransport(breaker, httpx.MockTransport(handler))
    with httpx.Client(transport=transport) as client:
        answer = client.post("http://llm.test/v1/chat/completions", json={**CHAT, "stream": True})
        assert answer.content == content
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats.successes == 1
    assert breaker.budget["spent"] > 0  # the request's estimate


@pytest.mark.parametrize(
    "body",
    [
        b'{"max_tokens": 1e999}',
        b'{"max_tokens": Infinity}',
        b'{"max_tokens": ' + _HUGE + b', "messages": [{"max_tokens": 1}]}',  # parsed whole
    ],
    ids=["1e999", "Infinity", "huge-int"],
)
@pytest.mark.parametrize(
    "fields",
    [{"token_budget": 1000.0}, {"throttle": True, "throttle_max_wait": 0.0}],
    ids=["budget", "throttle"],
)
def test_an_output_cap_no_float_holds_is_no_crash(body: bytes, fields: dict[str, Any]) -> None:
    """A request whose ``max_tokens`` is infinite or past a float: no OverflowError from the
    estimate or from a refusal's retry-after; each request is answered or refused."""
    limits = {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "10"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=limits, stream=httpx.ByteStream(b"{}"))

    registry = BreakerRegistry(clock=FakeClock())
    transport = CircuitBreakerTransport(
        "cap", httpx.MockTransport(handler), registry=registry, **fields
    )
    with httpx.Client(transport=transport) as client:
        answers = [client.post("http://llm.test/", content=body) for _ in range(3)]
    for answer in answers:
        assert answer.status_code in (200, 429)
        assert answer.headers.get("retry-after", "0").isdigit()
        json.loads(answer.content)  # strict JSON: no Infinity in a refusal's body


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_helper_stream_whose_usage_no_float_holds_settles(
    llm_server: FakeLLMServer, kind: str
) -> None:
    """The helpers' streams under a token budget: a usage past a float is unknown, the stream
    is a success and its probe reports."""
    huge = int(_HUGE)
    last = {"object": "chat.completion.chunk", "usage": {"total_tokens": huge},
            "choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]}  # fmt: skip
    frames = [
        'data: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "a"}}]}\n\n',
        f"data: {json.dumps(last)}\n\n",
        "data: [DONE]\n\n",
    ]
    clock = FakeClock()
    cb = _helper(clock, token_budget=1e6)
    _half_open(cb.breaker, clock)
    llm_server.script(Reply(events=frames))
    url = llm_server.url + "/v1/chat/completions"
    if kind == "sync":
        events = list(cb.stream(url, data={**CHAT, "stream": True}))
    else:
        events = [e async for e in cb.astream(url, data={**CHAT, "stream": True})]
    await cb.aclose()
    cb.close()
    assert len(events) == 2
    assert cb.breaker.state is CircuitState.CLOSED


async def test_cancelled_waits_sends_and_reads_leave_no_slot(llm_server: FakeLLMServer) -> None:
    """One slot: a request cancelled while it waits for the slot, one cancelled while it is
    sent, and one cancelled while its body is read all give back what they held."""
    registry = BreakerRegistry()
    transport = AsyncCircuitBreakerTransport(
        "cancelled", registry=registry, max_concurrent=1, throttle_max_wait=30.0
    )
    url = llm_server.url + "/raw"
    llm_server.script(
        Reply(chunks=[b"a"] * 3),
        Reply.ok(delay=30.0),  # sent, never answered in time
        Reply(chunks=[b"x" * 10] * 3),
        Reply.ok(),
    )
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", url) as held:
            breaker = registry.get("cancelled")
            waiting = asyncio.ensure_future(client.get(url))
            for _ in range(200):
                await asyncio.sleep(0.005)
                if breaker.concurrency is not None and breaker.concurrency["waiting"] == 1:
                    break
            assert breaker.concurrency["waiting"] == 1
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert breaker.concurrency["waiting"] == 0
            await held.aread()
        sending = asyncio.ensure_future(client.get(url))
        for _ in range(200):
            await asyncio.sleep(0.005)
            if llm_server.hits == 2:
                break
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert breaker.concurrency["in_flight"] == 0

        async def read_slowly() -> None:
            async with client.stream("GET", url) as response:
                async for _ in response.aiter_raw():
                    await asyncio.sleep(30.0)

        reading = asyncio.ensure_future(read_slowly())
        for _ in range(200):
            await asyncio.sleep(0.005)
            if breaker.concurrency["in_flight"] == 1 and llm_server.hits == 3:
                break
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert breaker.concurrency == {**breaker.concurrency, "in_flight": 0, "waiting": 0}
        assert (await client.get(llm_server.url + "/v1/chat/completions")).status_code == 200


class _OwnResponse(httpx.Response):
    """A response class of a module other than httpx (a test's, an SDK's)."""


class _OwnRequest(httpx.Request):
    pass


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, "text/event-stream"), (200, "application/json"), (500, "application/json")],
)
async def test_request_and_response_subclasses_are_guarded(status: int, kind: str) -> None:
    """The library a message belongs to is found through its class's bases: no
    AttributeError for a subclass defined elsewhere (this module has no ``SyncByteStream``)."""
    chunk = b'{"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}'
    body = b"data: " + chunk + b"\n\ndata: [DONE]\n\n"  # an answer (one with none is ignored)

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": kind}
        return _OwnResponse(status, headers=headers, stream=httpx.ByteStream(body))

    registry = BreakerRegistry()
    sync = CircuitBreakerTransport("own", httpx.MockTransport(handler), registry=registry)
    answer = sync.handle_request(_OwnRequest("POST", "http://llm.test/", json={"stream": True}))
    answer.read()
    both = AsyncCircuitBreakerTransport("own", httpx.MockTransport(handler), registry=registry)
    answer = await both.handle_async_request(_OwnRequest("POST", "http://llm.test/"))
    await answer.aread()
    stats = registry.get("own").stats
    assert stats.calls == 2
    assert (stats.failures if status >= 400 else stats.successes) == 2


def test_a_dropped_body_collected_on_another_thread_frees_its_slot(
    llm_server: FakeLLMServer,
) -> None:
    """A response left in a reference cycle, collected by a collection another thread runs:
    its slot comes back (the finaliser never waits for a lock)."""
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("cycle", registry=registry, max_concurrent=1)
    llm_server.script(Reply(chunks=[b"a"] * 3), Reply.ok())
    with httpx.Client(transport=transport) as client:
        gc.disable()
        try:
            response = client.send(
                client.build_request("GET", llm_server.url + "/raw"), stream=True
            )
            response.cycle = response  # type: ignore[attr-defined]
            del response
            breaker = registry.get("cycle")
            assert breaker.concurrency is not None and breaker.concurrency["in_flight"] == 1
            collector = threading.Thread(target=gc.collect)
            collector.start()
            collector.join()
        finally:
            gc.enable()
        assert breaker.concurrency["in_flight"] == 0
        assert client.get(llm_server.url + "/v1/chat/completions").status_code == 200
    assert breaker.stats.ignored == 1 and breaker.stats.successes == 1


def test_no_credential_reaches_an_error_or_a_log(
    llm_server: FakeLLMServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key in the URL's query (as Gemini's API takes it) and in the headers: absent from
    the errors the breaker judged, their reprs and the log, whatever failed."""
    import logging

    secret = "sk-SECRETSECRETSECRET0123456789"
    seen: list[BaseException] = []
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("creds", registry=registry, failure_threshold=100)
    real_record = CircuitBreaker.record

    def record(self: CircuitBreaker, permit: int, outcome: Outcome, **details: Any) -> None:
        if details.get("error") is not None:
            seen.append(details["error"])
        real_record(self, permit, outcome, **details)

    monkeypatch.setattr(CircuitBreaker, "record", record)
    error_frame = (
        'data: {"error": {"message": "bad key ' + secret + '", "type": "server_error"}}\n\n'
    )
    llm_server.script(
        Reply.error(500, message=f"invalid key {secret}"),
        Reply(events=[error_frame]),
        Reply.openai_stream(["a"], done=False),
    )
    url = f"{llm_server.url}/v1/chat/completions?key={secret}"
    headers = {"authorization": f"Bearer {secret}", "x-api-key": secret}
    caplog.set_level(logging.DEBUG, logger="llm_circuit_breaker")
    with httpx.Client(transport=transport, headers=headers) as client:
        for _ in range(3):
            with contextlib.suppress(httpx.HTTPError):
                client.post(url, json={**CHAT, "stream": True}).read()
    assert len(seen) == 3
    for error in seen:
        assert secret not in str(error) and secret not in repr(error)
        assert secret not in str(getattr(error, "url", ""))
    assert secret not in caplog.text


def _held(frames: list[bytes], release: threading.Event) -> Iterator[bytes]:
    """A body sent once ``release`` is set (its headers go at once): the attempt stays in
    flight until then."""
    release.wait(5.0)
    yield from frames


@pytest.mark.parametrize("shape", ["plain", "sse-error-first", "sse-cut", "sse-whole"])
def test_one_probe_among_threads_and_it_always_reports(
    llm_server: FakeLLMServer, shape: str
) -> None:
    """Threads call a HALF_OPEN circuit through the real openai SDK while its probe is in
    flight: they are refused without a request, and the probe's outcome settles the circuit
    (closed on a whole answer, open again on an error frame or a cut stream)."""
    import openai

    from llm_circuit_breaker.testing._reply import completion

    def chunk(text: str, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        data = {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
        return f"data: {json.dumps(data)}\n\n".encode()

    bodies = {
        "plain": [json.dumps(completion("hi")).encode()],
        "sse-error-first": [
            b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
        ],
        "sse-cut": [chunk("a"), chunk("b")],
        "sse-whole": [chunk("a"), chunk("b", "stop"), b"data: [DONE]\n\n"],
    }
    kind = "application/json" if shape == "plain" else "text/event-stream"
    release = threading.Event()
    llm_server.script(Reply(chunks=_held(bodies[shape], release), headers={"content-type": kind}))
    breaker, _ = _probe_breaker()
    http_client = httpx.Client(transport=CircuitBreakerTransport(breaker))
    client = openai.OpenAI(
        api_key="sk-test", base_url=llm_server.url + "/v1", http_client=http_client, max_retries=0
    )
    outcomes: list[str] = []

    def call() -> None:
        try:
            if shape == "plain":
                client.chat.completions.create(model="m", messages=CHAT["messages"])
            else:
                for _ in client.chat.completions.create(
                    model="m", messages=CHAT["messages"], stream=True
                ):
                    pass
            outcomes.append("ok")
        except openai.APIStatusError as exc:
            outcomes.append(exc.response.headers.get("x-llm-circuit-breaker") or "status")
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    probe = threading.Thread(target=call)
    probe.start()
    until(lambda: llm_server.hits == 1)
    others = [threading.Thread(target=call) for _ in range(7)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join()
    assert outcomes == ["circuit-open"] * 7
    release.set()
    probe.join()
    http_client.close()
    assert llm_server.hits == 1
    whole = shape in ("plain", "sse-whole")
    assert outcomes[-1] == "ok" if whole else outcomes[-1] != "ok"
    assert breaker.state is (CircuitState.CLOSED if whole else CircuitState.OPEN)


@pytest.mark.parametrize("cap", [10**400, float("inf"), 1e999, -5])
def test_the_helpers_token_estimate_of_a_cap_no_float_holds_is_zero(cap: float) -> None:
    """The helpers' estimate (``estimate_tokens``) reads an output cap as the transport does:
    one past a float, infinite or negative estimates nothing, never an OverflowError."""
    from llm_circuit_breaker._core.throttle import estimate_tokens

    assert estimate_tokens({"max_tokens": cap}) == 0.0
    assert estimate_tokens({"max_tokens": 100, "messages": []}) == 100 + len("[]") / 4


@pytest.mark.parametrize("value", ["²", "٣", "1" * 5000, "-1", "", "00", "1e3"])
def test_an_odd_retry_count_is_the_first_attempt_everywhere(value: str) -> None:
    """The transport and the spans read an SDK's retry count alike: anything but up to nine
    ASCII digits is the first attempt, never a ValueError."""
    from llm_circuit_breaker._core.headers import sdk_retry_count

    assert sdk_retry_count(value) == 0
    assert sdk_retry_count("2") == 2 and sdk_retry_count("007") == 7
