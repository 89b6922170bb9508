"""Hedged requests: a slow answer is asked again in parallel, the first one wins, losers are
cancelled and ignored; what counts as a stream's first content item.

No test depends on the machine's speed: a slow attempt waits on an event that is never set
(or set by the test), so whether a hedge starts is decided by the delay having passed, never
by a race between two real durations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitState,
    HedgeStats,
    circuit_breaker,
    with_fallbacks,
    with_hedging,
    with_retry,
)
from llm_circuit_breaker._judge.content import is_content
from llm_circuit_breaker.breaker.telemetry import RecentTimes, latency_of
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply
from tests.polling import auntil, until

QUICK = 0.01  # a hedge delay that passes at once
NEVER = 3600.0  # a hedge delay that never passes within a test

# -- what counts as content -----------------------------------------------------------------

ROLE_ONLY = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
TEXT = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
TOOL_CALL = {
    "choices": [
        {
            "index": 0,
            "delta": {
                "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]
            },
        }
    ]
}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (ROLE_ONLY, False),
        (TEXT, True),
        (TOOL_CALL, True),
        ({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, False),
        ({"choices": [], "usage": {"total_tokens": 3}}, False),
        ({"choices": [{"index": 0, "delta": {"refusal": "No."}}]}, True),
        ({"choices": [{"index": 0, "delta": {"reasoning_content": "Hm"}}]}, True),
        ({"choices": [{"index": 0, "message": {"content": "Hi"}}]}, True),
        ({"error": {"type": "server_error"}}, False),
        ({"type": "message_start", "message": {"content": []}}, False),
        ({"type": "ping"}, False),
        ({"type": "content_block_start", "content_block": {"type": "text", "text": ""}}, False),
        ({"type": "content_block_start", "content_block": {"type": "tool_use", "name": "f"}}, True),
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}, True),
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": ""}}, False),
        ({"type": "content_block_delta", "delta": {"partial_json": ""}}, False),
        ({"type": "content_block_delta", "delta": {"partial_json": '{"a'}}, True),
        (
            {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "x"}},
            True,
        ),
        ({"type": "content_block_delta", "delta": {"type": "signature_delta"}}, False),
        ({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}, False),
        ({"type": "message_stop"}, False),
        ({"type": "response.created", "response": {}}, False),
        ({"type": "response.output_text.delta", "delta": "Hel"}, True),
        ({"type": "response.output_text.delta", "delta": ""}, False),
        ({"type": "response.function_call_arguments.delta", "delta": "{"}, True),
        ({"type": "response.output_item.added", "item": {"type": "function_call"}}, True),
        ({"type": "response.output_item.added", "item": {"type": "message"}}, False),
        ({"type": "response.completed", "response": {}}, False),
        ("", False),
        ("Hel", True),
        (None, False),
        (b": keep-alive\n\n", False),
        (b"event: ping\ndata: {}\n\n", False),
        (b"data: [DONE]\n\n", False),
        (b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n', False),
        (b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n', True),
        (b"plain body bytes", True),
        ({"answer": 42}, True),  # a shape not known here: the function's own item
        (42, True),
    ],
)
def test_content_is_text_or_a_tool_call_not_framing(item: object, expected: bool) -> None:
    """Role-only and empty deltas, lifecycle events, pings, comments, error frames and [DONE]
    are not content; text, refusals, reasoning and tool calls are."""
    assert is_content(item) is expected


def test_sse_events_are_judged_by_name_and_data() -> None:
    """An SSEEvent (or an SDK's ServerSentEvent, whose data is raw JSON) is judged by its
    event name and its data."""
    from llm_circuit_breaker import SSEEvent

    assert not is_content(SSEEvent("ping", {"type": "ping"}))
    assert not is_content(SSEEvent("message", ROLE_ONLY))
    assert is_content(SSEEvent("message", TEXT))
    assert not is_content(SSEEvent("message", "[DONE]"))

    @dataclasses.dataclass
    class ServerSentEvent:
        event: str | None
        data: str

    assert not is_content(ServerSentEvent(None, '{"choices": []}'))
    assert is_content(
        ServerSentEvent(
            "content_block_delta", '{"type": "content_block_delta", "delta": {"text": "a"}}'
        )
    )
    assert is_content(ServerSentEvent(None, "plain text"))


def test_sdk_objects_are_judged_like_their_json() -> None:
    """The openai and anthropic SDKs' chunk and event objects count as their JSON would."""
    from anthropic.types import RawContentBlockDeltaEvent, RawMessageStartEvent
    from openai.types.chat import ChatCompletionChunk

    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    assert not is_content(ChatCompletionChunk.model_validate({**head, **ROLE_ONLY}))
    assert is_content(ChatCompletionChunk.model_validate({**head, **TEXT}))
    assert is_content(ChatCompletionChunk.model_validate({**head, **TOOL_CALL}))
    assert not is_content(ChatCompletionChunk.model_construct()), "the SDK's chunk of a ping"
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "a"},
    }
    assert is_content(RawContentBlockDeltaEvent.model_validate(delta))
    start = {
        "type": "message_start",
        "message": {
            "id": "m", "type": "message", "role": "assistant", "model": "c", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    }  # fmt: skip
    assert not is_content(RawMessageStartEvent.model_validate(start))


def test_content_judgement_never_raises() -> None:
    """An item whose attributes raise is counted as content rather than failing the call."""

    class Hostile:
        @property
        def choices(self) -> Any:
            raise RuntimeError("no")

    assert is_content(Hostile()) is True


# -- the quantile ring ------------------------------------------------------------------------


def test_recent_times_keep_the_last_200_and_need_20_for_a_quantile() -> None:
    """A ring of the last 200 durations; below 20 there is no quantile; nearest rank above."""
    ring = RecentTimes()
    for _ in range(19):
        ring.add(1.0)
    assert ring.quantile(0.9) is None
    ring.add(1.0)
    assert ring.quantile(0.9) == 1.0
    for i in range(1, 301):
        ring.add(float(i))
    assert len(ring) == 200  # 101..300 kept
    assert ring.quantile(0.9) == 280.0  # the 180th of 200
    assert ring.quantile(0.5) == 200.0


# -- async: hedges, winners, losers ----------------------------------------------------------


def _hanging(registry: BreakerRegistry, name: str, log: list[str]) -> Any:
    """A coroutine function that never answers (until cancelled)."""

    @circuit_breaker(name, registry=registry)
    async def ask(prompt: str) -> str:
        log.append(name)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.append(f"{name} cancelled")
            raise
        return "never"  # pragma: no cover

    return ask


def _answering(registry: BreakerRegistry, name: str, log: list[str], *errors: Exception) -> Any:
    """A coroutine function that raises ``errors`` in turn, then answers."""
    queue = list(errors)

    @circuit_breaker(name, registry=registry)
    async def ask(prompt: str) -> str:
        log.append(name)
        if queue:
            raise queue.pop(0)
        return f"{name}: {prompt}"

    return ask


async def test_an_answer_within_the_delay_starts_no_hedge() -> None:
    """The primary answers before the delay: one attempt, no hedge."""
    registry = BreakerRegistry()
    log: list[str] = []
    ask = with_hedging(_answering(registry, "a", log), _answering(registry, "b", log), delay=NEVER)
    assert await ask("hi") == "a: hi"
    assert log == ["a"]
    assert ask.hedge_stats == HedgeStats(calls=1, attempts=1, wins={"a": 1, "b": 0})


async def test_a_slow_primary_is_hedged_and_cancelled_as_ignored() -> None:
    """No answer within the delay: the next target starts and wins; the primary's task is
    cancelled and its breaker counts the call ignored, never failed."""
    registry = BreakerRegistry()
    log: list[str] = []
    listened: list[Any] = []
    ask = with_hedging(
        _hanging(registry, "slow", log), _answering(registry, "fast", log), delay=QUICK
    )
    registry.get("slow").add_listener(listened.append)
    assert await ask("hi") == "fast: hi"
    await auntil(lambda: registry.get("slow").stats.ignored == 1)
    assert log == ["slow", "fast", "slow cancelled"]
    assert registry.get("slow").stats.failures == 0
    assert ask.hedge_stats == HedgeStats(calls=1, attempts=2, hedges=1, wins={"slow": 0, "fast": 1})
    assert latency_of(registry.get("fast")).hedges_started == 1
    assert latency_of(registry.get("fast")).hedges_won == 1
    assert listened == []  # a hedge is not a state change


async def test_the_same_function_may_be_listed_again() -> None:
    """with_hedging(ask, ask): the second attempt calls the same function; stats keep the
    two places apart."""
    registry = BreakerRegistry()
    started = 0

    @circuit_breaker("one", registry=registry)
    async def ask() -> str:
        nonlocal started
        started += 1
        if started == 1:
            await asyncio.Event().wait()
        return f"attempt {started}"

    hedged = with_hedging(ask, ask, delay=QUICK)
    assert await hedged() == "attempt 2"
    assert hedged.hedge_stats.wins == {"one": 0, "one #2": 1}


async def test_targets_are_used_in_turn_up_to_max_attempts_in_flight() -> None:
    """One target and max_attempts=3: the primary is hedged with itself twice, never more
    than three in flight."""
    registry = BreakerRegistry()
    started = 0
    release = asyncio.Event()

    @circuit_breaker("one", registry=registry)
    async def ask() -> int:
        nonlocal started
        started += 1
        number = started
        if number < 3:
            await asyncio.Event().wait()
        await release.wait()
        return number

    hedged = with_hedging(ask, delay=QUICK, max_attempts=3)
    call = asyncio.ensure_future(hedged())
    await auntil(lambda: started == 3)
    release.set()
    assert await call == 3
    assert started == 3
    assert hedged.hedge_stats.hedges == 2
    await auntil(lambda: registry.get("one").stats.ignored == 2)


async def test_a_provider_fault_starts_the_next_target_at_once() -> None:
    """A 503 before any answer: the next target starts without waiting for the delay."""
    registry = BreakerRegistry()
    log: list[str] = []
    ask = with_hedging(
        _answering(registry, "a", log, http_status_error(503)),
        _answering(registry, "b", log),
        delay=NEVER,
    )
    assert await ask("hi") == "b: hi"
    assert ask.hedge_stats == HedgeStats(calls=1, attempts=2, failovers=1, wins={"a": 0, "b": 1})
    assert registry.get("a").stats.failures == 1


async def test_a_callers_fault_is_raised_and_stops_the_others() -> None:
    """A 400 is the request's fault: raised as it is; the attempts in flight are cancelled."""
    registry = BreakerRegistry()
    log: list[str] = []
    started = asyncio.Event()

    @circuit_breaker("bad", registry=registry)
    async def bad(prompt: str) -> str:
        await started.wait()  # fails once the hedge is in flight
        raise http_status_error(400)

    @circuit_breaker("slow", registry=registry)
    async def slow(prompt: str) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"  # pragma: no cover

    ask = with_hedging(bad, slow, delay=QUICK)
    with pytest.raises(Exception, match="400"):
        await ask("hi")
    await auntil(lambda: registry.get("slow").stats.ignored == 1)
    assert log == []


async def test_an_open_target_is_skipped_without_a_call() -> None:
    """An OPEN primary refuses without running; the alternative starts at once."""
    registry = BreakerRegistry()
    log: list[str] = []
    ask = with_hedging(
        _answering(registry, "down", log), _answering(registry, "up", log), delay=NEVER
    )
    registry.get("down").force_open()
    assert await ask("hi") == "up: hi"
    assert log == ["up"]
    assert registry.get("down").stats.rejections == 1


async def test_when_every_attempt_fails_the_last_error_is_raised() -> None:
    """No attempt answered: the last attempt's error, so the layers outside judge it."""
    registry = BreakerRegistry()
    log: list[str] = []
    ask = with_hedging(
        _answering(registry, "a", log, http_status_error(503)),
        _answering(registry, "b", log, http_status_error(529)),
        delay=NEVER,
    )
    with pytest.raises(Exception, match="529"):
        await ask("hi")


async def test_cancelling_the_caller_cancels_every_attempt() -> None:
    """The hedged call cancelled: all attempts in flight are cancelled and ignored."""
    registry = BreakerRegistry()
    log: list[str] = []
    ask = with_hedging(_hanging(registry, "a", log), _hanging(registry, "b", log), delay=QUICK)
    call = asyncio.ensure_future(ask("hi"))
    await auntil(lambda: log == ["a", "b"])
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await auntil(lambda: registry.get("a").stats.ignored + registry.get("b").stats.ignored == 2)


# -- async streams: the first *content* item wins ---------------------------------------------


async def test_an_async_stream_wins_by_its_first_content_item_not_its_first_item() -> None:
    """The primary yields a role-only chunk at once, then nothing: it has not answered. The
    hedge's content wins; the caller gets the winner's items in order; the primary's
    generator is closed and ignored."""
    registry = BreakerRegistry()
    closed: list[str] = []

    @circuit_breaker("slow", registry=registry)
    async def slow() -> AsyncIterator[dict[str, Any]]:
        try:
            yield ROLE_ONLY
            await asyncio.Event().wait()
            yield TEXT  # pragma: no cover
        finally:
            closed.append("slow")

    @circuit_breaker("fast", registry=registry)
    async def fast() -> AsyncIterator[dict[str, Any]]:
        yield ROLE_ONLY
        yield {"type": "ping"}
        yield TEXT
        yield {"choices": [{"index": 0, "delta": {"content": "lo"}}]}

    hedged = with_hedging(slow, fast, delay=QUICK)
    items = [item async for item in hedged()]
    assert items == [
        ROLE_ONLY,
        {"type": "ping"},
        TEXT,
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
    ]
    await auntil(lambda: registry.get("slow").stats.ignored == 1)
    assert closed == ["slow"]
    assert registry.get("fast").stats.successes == 1
    assert hedged.hedge_stats.wins == {"slow": 0, "fast": 1}


async def test_a_stream_that_fails_before_content_fails_over() -> None:
    """An error frame before content is a provider's fault: the next target starts."""
    registry = BreakerRegistry()

    @circuit_breaker("broken", registry=registry)
    async def broken() -> AsyncIterator[str]:
        yield ""
        raise http_status_error(529)

    @circuit_breaker("fine", registry=registry)
    async def fine() -> AsyncIterator[str]:
        yield "ok"

    hedged = with_hedging(broken, fine, delay=NEVER)
    assert [item async for item in hedged()] == ["ok"]
    assert registry.get("broken").stats.failures == 1


def _sdk_call(api: str, server: FakeLLMServer) -> tuple[Any, Any]:
    """A coroutine function making one streamed request of ``api`` with the real SDK, and
    the SDK's client (to close)."""
    if api == "messages":
        import anthropic

        claude = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="sk-ant")
        return lambda prompt: claude.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": prompt}], stream=True
        ), claude
    import openai

    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test")
    if api == "responses":
        return lambda prompt: client.responses.create(model="m", input=prompt, stream=True), client
    return lambda prompt: client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt}], stream=True
    ), client


def _text(item: Any) -> str:
    """The text an SDK stream item carries (chat chunk, Responses delta, Anthropic delta)."""
    if getattr(item, "choices", None):
        return item.choices[0].delta.content or ""
    if getattr(item, "type", "") in ("response.output_text.delta", "content_block_delta"):
        delta = item.delta
        return delta if isinstance(delta, str) else getattr(delta, "text", "")
    return ""


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
async def test_sdk_streams_hedge_on_the_first_token(api: str) -> None:
    """Real SDK streams against two fake providers: the first sends its opening events at
    once (role-only chunk, response.created, message_start and ping) and its first token an
    hour later; the hedge's text wins, the loser's HTTP stream is closed and its breaker told
    "ignored"."""
    build = {"chat": Reply.chat, "responses": Reply.responses, "messages": Reply.messages}[api]
    async with FakeLLMServer() as slow_server, FakeLLMServer() as fast_server:
        slow_server.default = dataclasses.replace(
            build("Hello there", stream=True), first_token_delay=NEVER
        )
        fast_server.default = build("Hello there", stream=True)
        registry = BreakerRegistry()
        clients: list[Any] = []

        def guarded(name: str, server: FakeLLMServer) -> Any:
            request, client = _sdk_call(api, server)
            clients.append(client)

            @circuit_breaker(name, registry=registry)
            async def ask(prompt: str) -> Any:
                return await request(prompt)

            return ask

        hedged = with_hedging(
            guarded("slow", slow_server), guarded("fast", fast_server), delay=0.05
        )
        stream = await hedged("hi")
        assert "".join([_text(item) async for item in stream]) == "Hello there"
        await auntil(lambda: registry.get("slow").stats.ignored == 1)
        assert registry.get("fast").stats.successes == 1
        assert registry.get("slow").stats.failures == 0
        assert slow_server.hits == 1
        for client in clients:
            await client.close()


# -- threads: plain functions and generators --------------------------------------------------


def test_a_slow_sync_call_is_hedged_in_a_thread() -> None:
    """A plain function that does not answer within the delay: the hedge answers; the
    primary's late result is discarded."""
    registry = BreakerRegistry()
    release = threading.Event()
    finished = threading.Event()

    @circuit_breaker("slow", registry=registry)
    def slow(prompt: str) -> str:
        release.wait()
        finished.set()
        return "late"

    @circuit_breaker("fast", registry=registry)
    def fast(prompt: str) -> str:
        return f"fast: {prompt}"

    hedged = with_hedging(slow, fast, delay=QUICK)
    try:
        assert hedged("hi") == "fast: hi"
    finally:
        release.set()
    assert finished.wait(10)
    assert hedged.hedge_stats == HedgeStats(
        calls=1, attempts=2, hedges=1, wins={"slow": 0, "fast": 1}
    )


def test_a_sync_loser_that_fails_after_the_winner_is_ignored() -> None:
    """A plain function and a generator that fail once another attempt has answered are
    reported ignored to their breakers, never as failures."""
    registry = BreakerRegistry()
    release = threading.Event()
    failed = threading.Event()

    @circuit_breaker("slow", registry=registry)
    def slow() -> str:
        release.wait()
        try:
            raise http_status_error(503, {}, None, "https://api.example.com")
        finally:
            failed.set()

    @circuit_breaker("slow-stream", registry=registry)
    def slow_stream() -> Iterator[str]:
        yield ""  # not content
        release.wait()
        raise http_status_error(503, {}, None, "https://api.example.com")

    @circuit_breaker("fast", registry=registry)
    def fast() -> str:
        return "fast"

    @circuit_breaker("fast-stream", registry=registry)
    def fast_stream() -> Iterator[str]:
        yield "fast"

    try:
        assert with_hedging(slow, fast, delay=QUICK)() == "fast"
        assert list(with_hedging(slow_stream, fast_stream, delay=QUICK)()) == ["fast"]
    finally:
        release.set()
    assert failed.wait(10)
    for name in ("slow", "slow-stream"):
        until(lambda name=name: registry.get(name).stats.ignored == 1)  # type: ignore[misc]
        assert registry.get(name).stats.failures == 0


def test_a_sync_loser_that_answers_after_the_winner_is_ignored_not_a_success() -> None:
    """A plain function's late result is discarded, so its breaker counts the attempt
    ignored (SPEC: losers are reported ignored); the winner's success stays a success, and a
    breaker shared by both targets counts one of each."""
    registry = BreakerRegistry()
    release = threading.Event()
    finished = threading.Event()

    @circuit_breaker("slow", registry=registry)
    def slow() -> str:
        release.wait()
        return "late"

    @circuit_breaker("fast", registry=registry)
    def fast() -> str:
        return "fast"

    calls = itertools.count()

    @circuit_breaker("shared", registry=registry)
    def shared() -> str:
        if next(calls) == 0:  # the primary: answers once the hedge has won
            release.wait()
            finished.set()
            return "late"
        return "fast"

    try:
        assert with_hedging(slow, fast, delay=QUICK)() == "fast"
        assert with_hedging(shared, shared, delay=QUICK)() == "fast"
    finally:
        release.set()
    assert finished.wait(10)
    until(lambda: registry.get("slow").stats.ignored == 1)
    until(lambda: registry.get("shared").stats.ignored == 1)
    slow_stats, shared_stats = registry.get("slow").stats, registry.get("shared").stats
    assert (slow_stats.successes, slow_stats.failures, slow_stats.calls) == (0, 0, 1)
    assert registry.get("fast").stats.successes == 1
    assert (shared_stats.successes, shared_stats.ignored, shared_stats.calls) == (1, 1, 2)


def test_a_losing_sync_stream_is_closed_once_it_answers() -> None:
    """A generator that yields its first content late loses: when it does, its thread closes
    it, and its breaker counts the call ignored."""
    registry = BreakerRegistry()
    release = threading.Event()
    closed = threading.Event()

    @circuit_breaker("slow", registry=registry)
    def slow() -> Iterator[str]:
        try:
            yield ""  # not content
            release.wait()
            yield "late"
            yield "more"
        finally:
            closed.set()

    @circuit_breaker("fast", registry=registry)
    def fast() -> Iterator[str]:
        yield "fast"
        yield "!"

    hedged = with_hedging(slow, fast, delay=QUICK)
    assert list(hedged()) == ["fast", "!"]
    release.set()
    assert closed.wait(10)
    until(lambda: registry.get("slow").stats.ignored == 1)
    assert registry.get("fast").stats.successes == 1


def test_a_returned_sync_stream_is_resumed_after_its_first_content() -> None:
    """A plain function returning an iterator: read up to its first content to decide, then
    handed back whole (what was read first)."""
    registry = BreakerRegistry()

    @circuit_breaker("s", registry=registry)
    def ask() -> Iterator[str]:
        return iter(["", "Hel", "lo"])

    hedged = with_hedging(ask, delay=NEVER)
    assert list(hedged()) == ["", "Hel", "lo"]
    until(lambda: registry.get("s").stats.successes == 1)


def test_one_attempt_in_flight_runs_in_the_callers_thread() -> None:
    """max_attempts=1: no thread; a provider's fault still moves to the next target."""
    registry = BreakerRegistry()
    threads: list[int] = []

    @circuit_breaker("a", registry=registry)
    def a() -> str:
        threads.append(threading.get_ident())
        raise http_status_error(503)

    @circuit_breaker("b", registry=registry)
    def b() -> str:
        threads.append(threading.get_ident())
        return "b"

    hedged = with_hedging(a, b, max_attempts=1)
    assert hedged() == "b"
    assert threads == [threading.get_ident()] * 2
    assert hedged.hedge_stats.failovers == 1


def test_a_sync_callers_fault_is_raised() -> None:
    """A 401 from a thread is raised in the caller's thread."""
    registry = BreakerRegistry()

    @circuit_breaker("a", registry=registry)
    def a() -> str:
        raise http_status_error(401)

    with pytest.raises(Exception, match="401"):
        with_hedging(a, a, delay=NEVER)()


def test_a_generator_that_fails_before_its_first_item_fails_over() -> None:
    """A generator's provider fault before any item: the next target starts at once."""
    registry = BreakerRegistry()

    @circuit_breaker("a", registry=registry)
    def a() -> Iterator[str]:
        raise http_status_error(503)
        yield "never"  # pragma: no cover

    @circuit_breaker("b", registry=registry)
    def b() -> Iterator[str]:
        yield "b"

    hedged = with_hedging(a, b, delay=NEVER)
    assert list(hedged()) == ["b"]
    assert hedged.hedge_stats.failovers == 1
    assert registry.get("a").stats.failures == 1


def test_when_no_sync_attempt_answers_the_last_error_is_raised() -> None:
    """Every thread failed with a provider's fault: the last error, in the caller's thread."""
    registry = BreakerRegistry()
    errors = [http_status_error(503), http_status_error(502)]

    @circuit_breaker("a", registry=registry)
    def a() -> str:
        raise errors.pop(0)

    with pytest.raises(Exception, match="502"):
        with_hedging(a, a, delay=NEVER)()
    assert registry.get("a").stats.failures == 2


# -- the adaptive delay ------------------------------------------------------------------------


def _delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "no answer within" in r.getMessage()]


async def test_a_quantile_delay_waits_for_20_times(caplog: pytest.LogCaptureFixture) -> None:
    """delay="p90": delay_default until the primary breaker knows 20 times to first item,
    then the 90th percentile of them."""
    caplog.set_level(logging.DEBUG, logger="llm_circuit_breaker.hedge")
    registry = BreakerRegistry()
    log: list[str] = []
    slow = _hanging(registry, "slow", log)
    hedged = with_hedging(slow, _answering(registry, "fast", log), delay="p90", delay_default=0.02)
    times = latency_of(registry.get("slow")).first_item
    for _ in range(19):
        times.add(0.01)
    await hedged("hi")
    assert _delays(caplog) == ["hedging: no answer within 0.02s; starting 'fast'"]
    for _ in range(21):  # 40 or 41 times now (with the cancelled primary's), p90 is 0.01
        times.add(0.001)
    caplog.clear()
    await hedged("hi")
    assert _delays(caplog) == ["hedging: no answer within 0.01s; starting 'fast'"]


async def test_every_answer_adds_its_time_to_first_item() -> None:
    """An attempt that answers adds its time to its breaker's ring; a scoped target's goes to
    the breaker of the call's scope."""
    registry = BreakerRegistry()

    @circuit_breaker("openai:{model}", registry=registry)
    async def ask(prompt: str, model: str = "m1") -> str:
        return prompt

    hedged = with_hedging(ask, delay="p50")
    for _ in range(3):
        await hedged("hi", model="m2")
    assert len(latency_of(registry.get("openai:m2")).first_item) == 3


async def test_a_scoped_alternative_that_never_runs_makes_no_breaker() -> None:
    """The primary answers: the scoped alternative's breaker is never made."""
    registry = BreakerRegistry()

    @circuit_breaker("openai:{model}", registry=registry)
    async def primary(prompt: str, model: str = "m") -> str:
        return prompt

    @circuit_breaker("anthropic:{model}", registry=registry)
    async def alternative(prompt: str, model: str = "m") -> str:
        return prompt

    assert await with_hedging(primary, alternative, delay=NEVER)("hi") == "hi"
    assert [b.name for b in registry.scope("anthropic")] == []


async def test_a_cancelled_slow_attempt_counts_as_taking_the_delay() -> None:
    """The primary cancelled after waiting longer than the delay adds the delay (a lower
    bound): the slow tail keeps its weight in the quantile."""
    registry = BreakerRegistry()
    log: list[str] = []
    hedged = with_hedging(
        _hanging(registry, "slow", log), _answering(registry, "fast", log), delay=QUICK
    )
    await hedged("hi")
    assert list(latency_of(registry.get("slow")).first_item._samples) == [QUICK]


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": "p100"}, "with_hedging.delay"),
        ({"delay": "p49"}, "with_hedging.delay"),
        ({"delay": "fast"}, "with_hedging.delay"),
        ({"delay": -1.0}, "with_hedging.delay"),
        ({"delay": True}, "with_hedging.delay"),
        ({"max_attempts": 0}, "with_hedging.max_attempts"),
        ({"max_attempts": 2.0}, "with_hedging.max_attempts"),
        ({"delay_default": float("inf")}, "with_hedging.delay_default"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    """A bad option fails when hedging is set up, naming the option and the value."""

    def ask() -> str:
        return "x"

    with pytest.raises(ValueError, match=message):
        with_hedging(ask, **options)


def test_targets_must_be_callables_of_one_kind() -> None:
    """Mixing a plain function with a coroutine function is refused."""

    def plain() -> str:
        return "x"

    async def coroutine() -> str:
        return "x"

    with pytest.raises(TypeError, match="one kind"):
        with_hedging(plain, coroutine)
    with pytest.raises(TypeError, match="callables"):
        with_hedging(plain, 3)  # type: ignore[arg-type]


# -- composition -------------------------------------------------------------------------------


async def test_retries_inside_each_target(clock: FakeClock) -> None:
    """with_retry inside a target retries it (on a fake clock) before the hedge is needed."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []
    retry = with_retry(async_sleep=clock.async_sleep, sleep=clock.sleep, clock=clock)
    primary = retry(_answering(registry, "a", log, http_status_error(503)))
    hedged = with_hedging(primary, _answering(registry, "b", log), delay=NEVER)
    assert await hedged("hi") == "a: hi"
    assert log == ["a", "a"]


async def test_hedging_inside_fallbacks() -> None:
    """with_fallbacks(with_hedging(a, a), b): when the hedged pair fails, the fallback runs
    (the hedged call raised the provider's own error, which the chain judges)."""
    registry = BreakerRegistry()
    log: list[str] = []
    a = _answering(registry, "a", log, http_status_error(503), http_status_error(503))
    ask = with_fallbacks(with_hedging(a, a, delay=NEVER), _answering(registry, "b", log))
    assert await ask("hi") == "b: hi"
    assert registry.get("a").state is CircuitState.CLOSED


async def test_a_hedge_is_a_span_event() -> None:
    """Each hedge started is an llm_circuit_breaker.hedge event on the caller's span."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = BreakerRegistry()
    log: list[str] = []
    hedged = with_hedging(_hanging(registry, "a", log), _answering(registry, "b", log), delay=QUICK)
    with provider.get_tracer("t").start_as_current_span("call"):
        await hedged("hi")
    (span,) = spans.get_finished_spans()
    (event,) = [e for e in span.events if e.name == "llm_circuit_breaker.hedge"]
    assert event.attributes is not None
    assert event.attributes["llm_circuit_breaker.name"] == "b"
    assert event.attributes["llm_circuit_breaker.hedge.attempt"] == 2


async def test_a_hedge_event_names_the_scoped_breaker_filled() -> None:
    """The hedge event of a scoped target carries its breaker's filled name, not the
    template."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = BreakerRegistry()

    @circuit_breaker("slow:{model}", registry=registry)
    async def slow(model: str) -> str:
        await asyncio.Event().wait()
        return "never"  # pragma: no cover

    @circuit_breaker("fast:{model}", registry=registry)
    async def fast(model: str) -> str:
        return model

    with provider.get_tracer("t").start_as_current_span("call"):
        assert await with_hedging(slow, fast, delay=QUICK)("gpt-4o") == "gpt-4o"
    (span,) = spans.get_finished_spans()
    (event,) = [e for e in span.events if e.name == "llm_circuit_breaker.hedge"]
    assert event.attributes is not None
    assert event.attributes["llm_circuit_breaker.name"] == "fast:gpt-4o"


async def test_hedges_started_and_won_are_exported() -> None:
    """Prometheus and OpenTelemetry count the hedges started and won on each breaker under
    the same names."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry

    from llm_circuit_breaker.observability.otel import OpenTelemetryInstrumentation
    from llm_circuit_breaker.observability.prometheus import PrometheusCollector

    registry = BreakerRegistry()
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    reader = InMemoryMetricReader()
    OpenTelemetryInstrumentation(
        registry, meter_provider=MeterProvider(metric_readers=[reader])
    ).instrument()
    log: list[str] = []
    hedged = with_hedging(_hanging(registry, "a", log), _answering(registry, "b", log), delay=QUICK)
    assert await hedged("hi") == "b: hi"
    assert await hedged("hi") == "b: hi"

    def sample(name: str, breaker: str) -> float | None:
        return prom.get_sample_value(name, {"breaker": breaker, "scope": ""})

    assert sample("llm_circuit_breaker_hedges_total", "b") == 2
    assert sample("llm_circuit_breaker_hedge_wins_total", "b") == 2
    assert sample("llm_circuit_breaker_hedges_total", "a") == 0
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, point.attributes["breaker"]): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name.startswith("llm_circuit_breaker.hedge")
        for point in metric.data.data_points
    }
    assert points == {
        ("llm_circuit_breaker.hedges", "a"): 0,
        ("llm_circuit_breaker.hedges", "b"): 2,
        ("llm_circuit_breaker.hedge_wins", "a"): 0,
        ("llm_circuit_breaker.hedge_wins", "b"): 2,
    }


async def test_a_hedge_the_retry_budget_cannot_pay_is_not_started() -> None:
    """A hedge is an extra attempt: with an empty retry budget on the hedge's breaker the call
    waits for the primary, and the denial is counted."""
    registry = BreakerRegistry()
    log: list[str] = []

    @circuit_breaker("slow-ok", registry=registry)
    async def slow(prompt: str) -> str:
        log.append("slow")
        await asyncio.sleep(QUICK * 3)
        return f"slow: {prompt}"

    @circuit_breaker("broke", registry=registry, retry_budget=0.0, retry_budget_floor=0.0)
    async def broke(prompt: str) -> str:
        log.append("broke")
        return f"broke: {prompt}"

    ask = with_hedging(slow, broke, delay=QUICK)
    assert await ask("hi") == "slow: hi"
    assert log == ["slow"]
    assert ask.hedge_stats.hedges == 0
    assert registry.get("broke").stats.retries_denied == 1
