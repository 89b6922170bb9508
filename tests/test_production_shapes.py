"""The shapes production has (SPEC section 12): threads each with their own event loop, clients
reused across event loops, local faults that are never the provider's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitState,
    FallbacksExhaustedError,
    HTTPStatusError,
    LLMCircuitBreaker,
    ServerError,
    circuit_breaker,
    with_fallbacks,
    with_retry,
)
from llm_circuit_breaker._judge.verdict import judge
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeLLMServer, Reply

THREADS = 8
RUNS = 5


def _run_in_fresh_loop(cb: LLMCircuitBreaker, url: str) -> Any:
    return asyncio.run(cb.acall(url + "/v1/chat/completions", data={}))


def test_threads_each_running_their_own_loop_share_one_facade(llm_server: FakeLLMServer) -> None:
    """8 threads each running asyncio.run(cb.acall(...)) again and again: every call answered,
    no session of another loop closed under it, the circuit stays CLOSED."""
    cb = LLMCircuitBreaker(retry={"max_retries": 0})
    try:
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            futures = [
                pool.submit(_run_in_fresh_loop, cb, llm_server.url) for _ in range(THREADS * RUNS)
            ]
            answers = [f.result() for f in futures]
        assert all(a["object"] == "chat.completion" for a in answers)
        assert cb.breaker.state is CircuitState.CLOSED
        assert cb.breaker.stats.failures == 0
        assert llm_server.hits == THREADS * RUNS
    finally:
        cb.close()


def test_one_facade_used_from_two_loops_alternately(llm_server: FakeLLMServer) -> None:
    """Two live event loops take turns with one facade: each keeps its own session, and
    aclose() in one loop leaves the other's session open."""
    cb = LLMCircuitBreaker(retry={"max_retries": 0})
    url = llm_server.url + "/v1/chat/completions"
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        for _ in range(3):
            for loop in (first, second):
                assert loop.run_until_complete(cb.acall(url, data={}))["object"]
        sessions = [loop.run_until_complete(_session_of(cb)) for loop in (first, second)]
        assert sessions[0] is not sessions[1]
        first.run_until_complete(cb.aclose())
        assert sessions[0].closed and not sessions[1].closed
        assert second.run_until_complete(cb.acall(url, data={}))["object"]
        assert cb.breaker.stats.failures == 0
        assert cb.breaker.state is CircuitState.CLOSED
    finally:
        second.run_until_complete(cb.aclose())
        first.close()
        second.close()
        cb.close()


async def _session_of(cb: LLMCircuitBreaker) -> Any:
    return await cb._async.session()


def test_a_session_of_an_ended_loop_is_dropped(llm_server: FakeLLMServer) -> None:
    """Once its event loop is gone, a loop's session is let go without closing anyone else's."""
    cb = LLMCircuitBreaker(retry={"max_retries": 0})
    url = llm_server.url + "/v1/chat/completions"
    live = asyncio.new_event_loop()
    try:
        live.run_until_complete(cb.acall(url, data={}))
        kept = live.run_until_complete(_session_of(cb))
        for _ in range(3):
            asyncio.run(cb.acall(url, data={}))
        gc.collect()
        assert not kept.closed
        assert len(cb._async.sessions()) == 1
        cb.close()  # closes what it can: the live loop's session too
        assert kept.closed
    finally:
        live.run_until_complete(live.shutdown_asyncgens())  # what asyncio.run does at its end
        live.close()


# -- a local fault is never the provider's --------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]
REQUEST = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")


def _wrapped(cause: BaseException) -> BaseException:
    error = openai.APIConnectionError(request=REQUEST)
    error.__cause__ = cause
    return error


LOCAL_FAULTS = [
    RuntimeError("Event loop is closed"),
    RuntimeError("<asyncio.locks.Event object at 0x1> is bound to a different event loop"),
    RuntimeError("Task got Future attached to a different loop"),
    RuntimeError("Cannot send a request, as the client has been closed."),
    _wrapped(RuntimeError("Event loop is closed")),
    _wrapped(httpx.LocalProtocolError("Illegal header value b'a\\nb'")),
    httpx.PoolTimeout("pool"),
    httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol."),
]


@pytest.mark.parametrize("exc", LOCAL_FAULTS, ids=repr)
def test_a_local_fault_is_neither_counted_nor_retried(exc: BaseException) -> None:
    """A closed loop or client, a loop mix-up, a full pool, a bad header: ignored, not retried."""
    verdict = judge(exc)
    assert (verdict.outcome.name, verdict.retry) == ("IGNORED", False)


@pytest.mark.parametrize("exc", LOCAL_FAULTS[:6], ids=repr)
def test_with_retry_raises_a_local_fault_as_it_is(exc: BaseException) -> None:
    """with_retry over circuit_breaker: one attempt, the very error raised, nothing counted."""
    attempts = []

    @with_retry(max_retries=3, initial_delay=0.001, jitter=False)
    @circuit_breaker("local", failure_threshold=1)
    def call() -> None:
        attempts.append(1)
        raise exc

    with pytest.raises(type(exc)) as caught:
        call()
    assert caught.value is exc and len(attempts) == 1
    assert call.breaker.state is CircuitState.CLOSED and call.breaker.stats.failures == 0


def _reuse_one_client_across_loops(url: str, registry: BreakerRegistry) -> int:
    """Three asyncio.run()s of one decorated call through one AsyncOpenAI client and the
    transport; how many of them raised."""
    transport = AsyncCircuitBreakerTransport("sdk", registry=registry, failure_threshold=1)
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=url + "/v1",
        http_client=httpx.AsyncClient(transport=transport),
        max_retries=0,
    )

    @circuit_breaker("ask", registry=registry, failure_threshold=1)
    async def ask() -> Any:
        return await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    async def run(last: bool) -> Any:
        try:
            return await ask()
        finally:
            if last:  # a connection left from an ended loop cannot be closed cleanly either
                with contextlib.suppress(RuntimeError):
                    await client.close()

    raised = 0
    for run_number in range(3):
        try:
            asyncio.run(run(last=run_number == 2))
        except (RuntimeError, openai.APIConnectionError):
            raised += 1
    return raised


# httpcore cannot close the pooled socket of an ended loop; the collector may find it while
# the test still runs, which is the library under test's business, not a finding.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_one_async_openai_client_reused_across_event_loops(llm_server: FakeLLMServer) -> None:
    """One AsyncOpenAI client through the transport, called by a decorated function from three
    asyncio.run()s: its pooled connection belongs to an ended loop ("Event loop is closed"),
    which neither the transport's breaker nor the decorator's counts; no circuit opens."""
    registry = BreakerRegistry()
    raised = _reuse_one_client_across_loops(llm_server.url, registry)
    with warnings.catch_warnings():  # the socket httpcore could not close in its ended loop
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert raised, "the reused client should have met its ended loop"
    for name in ("sdk", "ask"):
        breaker = registry.get(name)
        assert breaker.state is CircuitState.CLOSED, name
        assert breaker.stats.failures == 0, name


def test_a_closed_client_and_a_bad_header_through_the_transport(
    llm_server: FakeLLMServer,
) -> None:
    """A header value with a newline (the SDK wraps h11's LocalProtocolError) and a closed
    httpx client: raised to the caller, never counted by the transport or the decorator."""
    registry = BreakerRegistry()
    http_client = httpx.Client(
        transport=CircuitBreakerTransport("sdk", registry=registry, failure_threshold=1)
    )
    bad = openai.OpenAI(
        api_key="sk-test",
        base_url=llm_server.url + "/v1",
        http_client=http_client,
        max_retries=0,
        default_headers={"x-key": "pasted\n"},
    )

    @circuit_breaker("ask", registry=registry, failure_threshold=1)
    def ask(client: openai.OpenAI) -> Any:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    with pytest.raises(openai.APIConnectionError):
        ask(bad)
    http_client.close()
    with pytest.raises(RuntimeError, match="closed"):
        ask(bad.with_options(default_headers={}))
    for name in ("sdk", "ask"):
        assert registry.get(name).stats.failures == 0, name
    assert llm_server.hits == 0


# -- fallback chains keep their causes ------------------------------------------------------


def _contexts(exc: BaseException) -> list[BaseException]:
    found = []
    current = exc.__context__
    while current is not None and len(found) < 32:
        found.append(current)
        current = current.__context__
    return found


@pytest.fixture
def two_providers(llm_server: FakeLLMServer) -> Iterator[tuple[Any, Any]]:
    """Real openai and anthropic clients (no SDK retries) against the local server."""
    gpt = openai.OpenAI(api_key="sk-test", base_url=llm_server.url + "/v1", max_retries=0)
    claude = anthropic.Anthropic(api_key="sk-test", base_url=llm_server.url, max_retries=0)
    yield gpt, claude
    gpt.close()
    claude.close()


def _chain(gpt: Any, claude: Any) -> Any:
    @circuit_breaker("openai")
    def ask_openai(prompt: str) -> Any:
        messages = [{"role": "user", "content": prompt}]
        return gpt.chat.completions.create(model="gpt-4o-mini", messages=messages)

    @circuit_breaker("anthropic")
    def ask_claude(prompt: str) -> Any:
        messages = [{"role": "user", "content": prompt}]
        return claude.messages.create(model="claude-nope", max_tokens=8, messages=messages)

    return with_fallbacks(ask_openai, ask_claude)


def test_a_callers_fault_at_a_later_target_keeps_the_failover_cause(
    llm_server: FakeLLMServer, two_providers: tuple[Any, Any]
) -> None:
    """OpenAI 503, then Anthropic 404 (an unknown model): the 404 is raised, and the 503 that
    caused the failover is its __context__."""
    llm_server.script(
        Reply.error(503, "server_error"), Reply.error(404, "not_found_error", anthropic=True)
    )
    with pytest.raises(anthropic.NotFoundError) as caught:
        _chain(*two_providers)("Hi")
    assert any(isinstance(e, openai.InternalServerError) for e in _contexts(caught.value))


def test_an_exhausted_chain_reaches_every_targets_error(
    llm_server: FakeLLMServer, two_providers: tuple[Any, Any]
) -> None:
    """Both providers fail: FallbacksExhaustedError holds both in .errors, and reaches both
    through __context__."""
    llm_server.script(Reply.error(503, "server_error"), Reply.error(529, anthropic=True))
    with pytest.raises(FallbacksExhaustedError) as caught:
        _chain(*two_providers)("Hi")
    first, second = caught.value.errors
    assert isinstance(first, openai.InternalServerError)
    assert isinstance(second, anthropic.APIStatusError) and second.status_code == 529
    contexts = _contexts(caught.value)
    assert contexts[0] is second and first in contexts


def test_an_async_chain_keeps_its_causes() -> None:
    """The same for coroutine targets; a chain never links an error to itself."""
    boom = ServerError(503, url="https://a.example/v1")

    async def first() -> str:
        raise boom

    async def second() -> str:
        raise boom  # the very same error again: no cycle

    async def third() -> str:
        raise HTTPStatusError(404, url="https://c.example/v1")

    with pytest.raises(HTTPStatusError) as caught:
        asyncio.run(with_fallbacks(first, second, third)())
    assert caught.value.status_code == 404 and _contexts(caught.value)[0] is boom
    assert boom.__context__ is None


# -- multiplied retries and warnings that point at the caller --------------------------------


def test_sdk_retries_under_with_retry_are_pointed_out_once(llm_server: FakeLLMServer) -> None:
    """An OpenAI client with its own retries under with_retry: one UserWarning naming
    max_retries=0, at the caller's line, once per decorated function."""
    llm_server.default = Reply.error(503, "server_error", headers={"retry-after-ms": "1"})
    gpt = openai.OpenAI(api_key="sk-test", base_url=llm_server.url + "/v1", max_retries=1)

    @with_retry(max_retries=1, initial_delay=0.001, jitter=False)
    @circuit_breaker("sdk-retries", failure_threshold=100)
    def ask() -> Any:
        return gpt.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    with (
        pytest.warns(UserWarning, match="max_retries=0") as caught,
        pytest.raises(openai.InternalServerError),
    ):
        ask()
    with pytest.raises(openai.InternalServerError):
        ask()  # no second warning (warnings are errors in this suite)
    gpt.close()
    assert len(caught) == 1 and caught[0].filename == __file__
    assert llm_server.hits == 8  # 2 calls x 2 attempts of ours x 2 of the SDK's


def test_no_warning_when_the_sdk_does_not_retry(llm_server: FakeLLMServer) -> None:
    """max_retries=0 on the client: with_retry retries alone, without a word."""
    llm_server.default = Reply.error(503, "server_error")
    gpt = openai.OpenAI(api_key="sk-test", base_url=llm_server.url + "/v1", max_retries=0)

    @with_retry(max_retries=1, initial_delay=0.001, jitter=False)
    def ask() -> Any:
        return gpt.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    with pytest.raises(openai.InternalServerError):
        ask()
    gpt.close()
    assert llm_server.hits == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: with_retry(initial_delay=1000),
        lambda: with_retry(max_delay=5000),
        lambda: circuit_breaker("ms", reset_timeout=30000),
        lambda: LLMCircuitBreaker(circuit_breaker={"reset_timeout": 30000}).close(),
    ],
    ids=["initial_delay", "max_delay", "reset_timeout", "facade"],
)
def test_milliseconds_warnings_point_at_the_callers_line(make: Any) -> None:
    """A time option that looks like milliseconds is pointed out at the line that passed it,
    even when another check then fails (initial_delay=1000 is above max_delay)."""
    with pytest.warns(UserWarning, match="milliseconds") as caught, contextlib.suppress(ValueError):
        make()
    assert {w.filename for w in caught} == {__file__}
