"""Hostile responses, local mistakes and secrets: what a production service meets."""

from __future__ import annotations

import asyncio
import gc
import gzip
import itertools
import json
import logging
import time
import traceback
from collections.abc import Iterator

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    LLMCircuitBreaker,
    Outcome,
    ServerError,
    TransportError,
    breaker_registry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.http._common import prepare
from llm_circuit_breaker.http._sse import EventReader
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

MiB = 1024 * 1024
SECRETS = [
    "sk-proj-abcdefghijklmnop1234567890",
    "0123456789abcdef0123456789abcdef",  # an Azure-style hex key
    "hunter2-password",
]


_made: list[LLMCircuitBreaker] = []


@pytest.fixture(autouse=True)
def _close_facades() -> Iterator[None]:
    """Every facade a test makes is closed after it (sessions of ended event loops included)."""
    yield
    while _made:
        _made.pop().close()


def _acall(cb: LLMCircuitBreaker, *args: object, **kwargs: object) -> object:
    """One call in a fresh event loop, closing the facade's session before the loop ends."""

    async def once() -> object:
        try:
            return await cb.acall(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            await cb.aclose()

    return asyncio.run(once())


def _facade(**kwargs: object) -> LLMCircuitBreaker:
    facade = LLMCircuitBreaker(retry={"max_retries": 0}, **kwargs)  # type: ignore[arg-type]
    _made.append(facade)
    return facade


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_an_endless_body_is_cut_at_the_limit(llm_server: FakeLLMServer, driver: str) -> None:
    """A body that never ends fails with TransportError at max_response_bytes: a counted failure."""
    llm_server.default = Reply(chunks=itertools.repeat(b"x" * 65536))
    cb = _facade(max_response_bytes=2 * MiB)
    with pytest.raises(TransportError, match="max_response_bytes"):
        if driver == "sync":
            cb.call(llm_server.url, data={})
        else:
            _acall(cb, llm_server.url, data={})
    assert cb.breaker.stats.failures == 1


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_gzip_bomb_is_cut_while_inflating(llm_server: FakeLLMServer, driver: str) -> None:
    """A small gzip body inflating past the limit fails as it inflates, in both drivers."""
    bomb = gzip.compress(b"0" * (64 * MiB))
    llm_server.default = Reply(
        chunks=[bomb], headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    cb = _facade(max_response_bytes=4 * MiB)
    with pytest.raises(TransportError, match="max_response_bytes"):
        if driver == "sync":
            cb.call(llm_server.url, data={})
        else:
            _acall(cb, llm_server.url, data={})


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_an_endless_event_is_cut(llm_server: FakeLLMServer, driver: str) -> None:
    """data: lines with no blank line, or one endless line, end at max_event_bytes."""
    llm_server.default = Reply(
        chunks=itertools.repeat(b"data: " + b"y" * 65536 + b"\n"),
        headers={"Content-Type": "text/event-stream"},
    )
    cb = _facade(max_event_bytes=1 * MiB)

    async def consume() -> None:
        async for _ in cb.astream(llm_server.url, data={}):
            pass

    with pytest.raises(TransportError, match="max_event_bytes"):
        if driver == "sync":
            list(cb.stream(llm_server.url, data={}))
        else:
            asyncio.run(consume())


def test_sse_decoding_is_linear_in_a_long_line() -> None:
    """One 8 MiB line fed in 1 KiB pieces decodes in well under a second (no quadratic re-join)."""
    reader = EventReader(prepare("http://h", "POST", None, None, 1.0, max_event_bytes=16 * MiB))
    payload = json.dumps({"text": "z" * (8 * MiB)}).encode()
    line = b"data: " + payload + b"\n\n"
    started = time.perf_counter()
    events = [e for i in range(0, len(line), 1024) for e in reader.feed(line[i : i + 1024])]
    elapsed = time.perf_counter() - started
    assert len(events) == 1 and len(events[0].data["text"]) == 8 * MiB
    assert elapsed < 5.0  # quadratic joining took minutes; linear takes a fraction of a second


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_cross_origin_redirect_is_refused(llm_server: FakeLLMServer, driver: str) -> None:
    """Credentials never follow a redirect to another origin: it is refused, nothing is sent."""
    with FakeLLMServer() as elsewhere:
        llm_server.default = Reply(status=307, headers={"Location": elsewhere.url + "/steal"})
        cb = _facade(headers={"x-api-key": SECRETS[0], "api-key": SECRETS[1]})
        with pytest.raises(TransportError, match="another origin") as caught:
            if driver == "sync":
                cb.call(llm_server.url, data={"prompt": "secret body"})
            else:
                _acall(cb, llm_server.url, data={"prompt": "secret body"})
        assert elsewhere.hits == 0
        assert SECRETS[0] not in str(caught.value)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_same_origin_redirects_are_followed_and_loops_fail_alike(
    llm_server: FakeLLMServer, driver: str
) -> None:
    """A same-origin 307 is followed; a redirect loop is the same counted failure in both drivers."""
    llm_server.script(Reply(status=307, headers={"Location": "/v2"}), Reply.ok("moved"))
    cb = _facade()
    call = cb.call if driver == "sync" else (lambda *a, **k: _acall(cb, *a, **k))
    assert call(llm_server.url, data={})["choices"][0]["message"]["content"] == "moved"
    llm_server.default = Reply(status=302, headers={"Location": "/again"})
    with pytest.raises(TransportError, match="redirects"):
        call(llm_server.url, method="GET")
    assert cb.breaker.stats.failures == 1


def test_acall_from_one_event_loop_after_another(llm_server: FakeLLMServer) -> None:
    """asyncio.run(cb.acall(...)) again and again works: one client session per event loop."""
    cb = _facade()
    for _ in range(3):
        assert _acall(cb, llm_server.url, data={})["object"] == "chat.completion"
    assert cb.breaker.stats.failures == 0


@pytest.mark.parametrize("value", [SECRETS[1] + "\n", " " + SECRETS[1], SECRETS[1] + "\r\nX: y"])
def test_a_bad_header_value_is_refused_without_echoing_it(value: str) -> None:
    """A key pasted with its newline is the caller's mistake: ValueError, never shown, not counted."""
    cb = _facade(headers={"api-key": value})
    with pytest.raises(ValueError) as caught:
        cb.call("http://127.0.0.1:9", data={})
    assert SECRETS[1] not in str(caught.value) and "api-key" in str(caught.value)
    assert cb.breaker.stats.calls == 0


def test_absurd_timeouts_are_refused_up_front() -> None:
    """timeout=1e10 is a ValueError at construction, not an OverflowError inside a call."""
    with pytest.raises(ValueError, match="timeout"):
        _facade(circuit_breaker={"timeout": 1e10})


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "31536000"},
        {
            "retry-after": time.strftime(
                "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 200 * 86400)
            )
        },
    ],
)
def test_a_server_hint_cannot_open_a_circuit_for_a_year(
    clock: FakeClock, headers: dict[str, str]
) -> None:
    """Server-directed opens are capped at max_open_for (default 10 x reset_timeout)."""
    breaker = CircuitBreaker("cap", CircuitBreakerConfig(reset_timeout=30.0), clock=clock)
    from llm_circuit_breaker.config import BreakerRules
    from llm_circuit_breaker.strategies.gate import Gate

    Gate(breaker, BreakerRules()).failed(breaker.admit(), http_status_error(503, headers))
    assert breaker.retry_after == 300.0
    message_hint = http_status_error(503, {}, {"error": {"message": "try again in 31000000s"}})
    breaker.reset()
    Gate(breaker, BreakerRules()).failed(breaker.admit(), message_hint)
    assert breaker.retry_after == 300.0


def test_registry_key_error_lists_a_few_names() -> None:
    """A KeyError names at most 20 breakers, never every tenant's."""
    registry = BreakerRegistry()
    for number in range(1000):
        registry.get_or_create(f"tenant-{number}")
    with pytest.raises(KeyError) as caught:
        registry.get("missing")
    assert len(str(caught.value)) < 600 and "980 more" in str(caught.value)


def test_unnamed_facades_unregister_when_closed() -> None:
    """A facade without a name frees its registry entry on close."""
    before = len(breaker_registry)
    for _ in range(50):
        with _facade():
            pass
    assert len(breaker_registry) == before


def test_no_secret_on_any_surface(
    llm_server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    """str, repr, traceback, DEBUG logs, the snapshot JSON and Prometheus never show a
    credential."""
    caplog.set_level(logging.DEBUG, logger="llm_circuit_breaker")
    llm_server.default = Reply.error(401, message=f"Incorrect API key provided: {SECRETS[1]}")
    cb = LLMCircuitBreaker(
        name="secrets",
        retry={"max_retries": 1, "initial_delay": 0.0},
        headers={"Authorization": f"Bearer {SECRETS[0]}", "api-key": SECRETS[1]},
    )
    url = llm_server.url.replace("http://", f"http://user:{SECRETS[2]}@") + f"?key={SECRETS[0]}"
    surfaces: list[str] = []
    for status in (401, 503):
        llm_server.default = Reply.error(
            status, message=f"bad key {SECRETS[1]} password={SECRETS[2]}"
        )
        try:
            cb.call(url, data={})
        except Exception as error:
            surfaces += [str(error), repr(error), "".join(traceback.format_exception(error))]
    surfaces += [caplog.text, json.dumps(cb.get_state()), json.dumps(breaker_registry.snapshot())]
    prometheus = pytest.importorskip("prometheus_client")
    from llm_circuit_breaker.observability.prometheus import PrometheusCollector

    exposition = prometheus.CollectorRegistry()
    PrometheusCollector(breaker_registry).register(exposition)
    surfaces.append(prometheus.generate_latest(exposition).decode())
    for text in surfaces:
        for secret in SECRETS:
            assert secret not in text


def test_a_probe_whose_error_is_hostile_is_still_reported(clock: FakeClock) -> None:
    """However odd the error, a HALF_OPEN probe reports: the circuit never stays stuck."""
    breaker = CircuitBreaker(
        "probe", CircuitBreakerConfig(failure_threshold=1, reset_timeout=1.0), clock=clock
    )
    breaker.record(breaker.admit(), Outcome.FAILURE)
    clock.advance(2.0)
    hostile = http_status_error(500, {}, {"error": {"message": "boom", "details": 1}})
    from llm_circuit_breaker.config import BreakerRules
    from llm_circuit_breaker.strategies.gate import Gate

    Gate(breaker, BreakerRules()).failed(breaker.admit(), hostile)
    assert breaker.state.value == "OPEN"
    assert isinstance(hostile, ServerError)


def test_unnamed_facades_dropped_without_close_free_their_names() -> None:
    """Per-call facades that are never closed do not grow the registry."""
    before = len(breaker_registry)
    for _ in range(200):
        LLMCircuitBreaker()
    gc.collect()
    assert len(breaker_registry) == before


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_session_of_a_closed_loop_is_a_local_mistake(llm_server: FakeLLMServer) -> None:
    """A client session handed in from an event loop that has ended fails with aiohttp's own
    error: raised as it is, never retried, never counted against the provider."""
    import aiohttp

    async def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    stale = asyncio.run(make())
    cb = LLMCircuitBreaker(client_session=stale, retry={"max_retries": 3, "initial_delay": 0.0})
    _made.append(cb)
    with pytest.raises(RuntimeError):
        asyncio.run(cb.acall(llm_server.url, data={}))
    assert llm_server.hits == 0
    assert cb.breaker.stats.failures == 0 and cb.breaker.stats.retries == 0
    stale.detach()  # nothing to close from this loop: let the session go quietly
    del stale
    gc.collect()
