"""Conformance probes of SPEC sections 15-17 (hedging, budgets, results, pools, concurrency)
written from the SPEC's sentences, each against the behaviour an application developer would
rely on."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from aiohttp import web

from llm_circuit_breaker import BreakerRegistry, circuit_breaker, with_hedging, with_pool
from llm_circuit_breaker.httpx import CircuitBreakerTransport
from llm_circuit_breaker.testing import frozen_time


class _SDKStream:
    """A returned stream shaped like the openai SDK's ``Stream``: an iterator with ``close``."""

    def __init__(self, items: list[str]) -> None:
        self._items = iter(items)
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.closed:
            raise StopIteration
        return next(self._items)

    def close(self) -> None:
        self.closed = True


class _AsyncSDKStream:
    """The openai SDK's ``AsyncStream`` shape: an async iterator with ``aclose``."""

    def __init__(self, items: list[str]) -> None:
        self._items = iter(items)
        self.closed = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self.closed:
            raise StopAsyncIteration
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.closed = True


# -- SPEC 17: least_busy counts a returned stream in flight until it ends or is closed -------


def test_pool_counts_a_returned_stream_in_flight_until_it_is_closed() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("east", registry=registry)
    def east() -> _SDKStream:
        return _SDKStream(["east", "more"])

    @circuit_breaker("west", registry=registry)
    def west() -> _SDKStream:
        return _SDKStream(["west", "more"])

    pool: Any = with_pool(east, west, strategy="least_busy")
    held = pool()  # read from east, kept open
    assert next(iter(held)) == "east"
    assert pool.pool_stats["east"].in_flight == 1
    done = pool()  # west: east has a call in flight
    assert next(iter(done)) == "west"
    done.close()
    assert pool.pool_stats["west"].in_flight == 0
    # east still streams: every further call goes to west, whatever the turn
    for _ in range(3):
        stream = pool()
        assert next(iter(stream)) == "west"
        assert list(stream) == ["more"]  # read to its end: no longer in flight
    assert pool.pool_stats["west"].in_flight == 0
    held.close()
    assert pool.pool_stats["east"].in_flight == 0
    assert pool.pool_stats["east"].served == 1 and pool.pool_stats["west"].served == 4


def test_async_pool_counts_a_returned_stream_in_flight_until_it_ends() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("east", registry=registry)
    async def east() -> _AsyncSDKStream:
        return _AsyncSDKStream(["east", "more"])

    @circuit_breaker("west", registry=registry)
    async def west() -> _AsyncSDKStream:
        return _AsyncSDKStream(["west", "more"])

    async def main() -> None:
        pool: Any = with_pool(east, west, strategy="least_busy")
        held: Any = await pool()
        assert await held.__anext__() == "east"
        assert pool.pool_stats["east"].in_flight == 1
        for _ in range(3):
            stream: Any = await pool()
            assert [item async for item in stream] == ["west", "more"]
        assert pool.pool_stats["west"].in_flight == 0
        await held.aclose()
        assert pool.pool_stats["east"].in_flight == 0

    asyncio.run(main())


# -- SPEC 16: the spend cap counts what an Anthropic answer says it used, cache included -----


def _message(**usage: int) -> Any:
    from anthropic.types import Message

    return Message.model_validate(
        {"id": "m", "type": "message", "role": "assistant", "model": "claude",
         "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
         "stop_sequence": None, "usage": usage}
    )  # fmt: skip


def test_spend_cap_counts_anthropic_cache_tokens() -> None:
    """Anthropic reports prompt-cache reads and writes apart from ``input_tokens`` (openai
    counts cached tokens inside ``prompt_tokens``): all of them were processed."""
    registry = BreakerRegistry()
    answer = _message(
        input_tokens=20, output_tokens=10, cache_creation_input_tokens=300,
        cache_read_input_tokens=1000,
    )  # fmt: skip

    @circuit_breaker("claude", token_budget=1_000, registry=registry)
    def ask() -> Any:
        return answer

    ask()
    assert ask.breaker.budget["spent"] == 1330.0
    plain = _message(input_tokens=20, output_tokens=10)  # no cache fields: input plus output

    @circuit_breaker("claude-plain", token_budget=1_000, registry=registry)
    def ask_plain() -> Any:
        return plain

    ask_plain()
    assert ask_plain.breaker.budget["spent"] == 30.0


def test_spend_cap_counts_anthropic_cache_tokens_of_a_returned_stream() -> None:
    from anthropic.types import RawMessageStreamEvent
    from pydantic import TypeAdapter

    events = TypeAdapter(list[RawMessageStreamEvent]).validate_python(
        [
            {"type": "message_start", "message": {
                "id": "m", "type": "message", "role": "assistant", "model": "claude",
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 20, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 500}}},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "hi"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 15}},
            {"type": "message_stop"},
        ]
    )  # fmt: skip
    registry = BreakerRegistry()

    @circuit_breaker("claude-stream", token_budget=10_000, registry=registry)
    def ask() -> Any:
        return _SDKStream(events)  # type: ignore[arg-type]

    assert len(list(ask())) == 6
    assert ask.breaker.budget["spent"] == 535.0


# -- a small provider of our own: Anthropic's streamed messages with prompt-cache usage ------


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def _anthropic_stream(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    usage = {"input_tokens": 20, "output_tokens": 1, "cache_creation_input_tokens": 100,
             "cache_read_input_tokens": 500}  # fmt: skip
    message = {"id": "m", "type": "message", "role": "assistant", "model": "claude",
               "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    for kind, data in [
        ("message_start", {"message": message}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 15}}),
        ("message_stop", {}),
    ]:  # fmt: skip
        await response.write(_sse(kind, data))
    return response


@pytest.fixture
def provider() -> Iterator[str]:
    """An aiohttp provider on 127.0.0.1 in a thread of its own; yields its base URL."""
    loop = asyncio.new_event_loop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = web.Application()
    app.router.add_post("/v1/messages", _anthropic_stream)
    runner = web.AppRunner(app)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_the_transport_counts_anthropic_cache_tokens_of_a_stream(provider: str) -> None:
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("claude", registry=registry, token_budget=10_000)
    http = httpx2.Client(transport=transport)
    with anthropic.Anthropic(
        api_key="sk-test", base_url=provider, http_client=http, max_retries=0
    ) as client:
        stream = client.messages.create(
            model="claude", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )  # fmt: skip
        assert [event.type for event in stream][-1] == "message_stop"
    assert registry.get("claude").budget["spent"] == 635.0  # type: ignore[union-attr]


# -- SPEC 13 + 17: the latency strategy reads the library's clock (frozen_time, llm_clock) --


def test_pool_latency_strategy_measures_on_the_library_s_clock() -> None:
    registry = BreakerRegistry()
    with frozen_time() as clock:

        @circuit_breaker("slow-deployment", registry=registry)
        def slow() -> str:
            clock.advance(2.0)
            return "slow"

        @circuit_breaker("fast-deployment", registry=registry)
        def fast() -> str:
            clock.advance(0.1)
            return "fast"

        pool: Any = with_pool(slow, fast, strategy="latency")
        first = [pool(), pool()]  # neither measured yet: each is tried
        assert sorted(first) == ["fast", "slow"]
        assert [pool() for _ in range(5)] == ["fast"] * 5
        stats = pool.pool_stats
        assert stats["slow-deployment"].latency == pytest.approx(2.0)
        assert stats["fast-deployment"].latency == pytest.approx(0.1)


# -- SPEC 15 + 16: a hedge to a target that refuses (OPEN) is no attempt the budget pays -----


def test_a_hedge_skipped_by_an_open_target_does_not_draw_its_retry_budget() -> None:
    """The retry budget pays for extra attempts through a breaker; a target that is OPEN is
    skipped without a call, so no retry is spent on it (else it comes back with nothing)."""
    registry = BreakerRegistry()
    calls: list[str] = []

    @circuit_breaker("slow-primary", registry=registry)
    async def primary() -> str:
        calls.append("primary")
        await asyncio.sleep(0.05)
        return "primary"

    # reserve of one retry over the window, no share of first attempts
    @circuit_breaker("down", retry_budget=0.0, retry_budget_floor=0.1, registry=registry)
    async def down() -> str:
        calls.append("down")
        return "down"

    async def main() -> None:
        hedged: Any = with_hedging(primary, down, delay=0.0)
        down.breaker.force_open()
        for _ in range(3):
            assert await hedged() == "primary"
        assert calls == ["primary"] * 3  # the OPEN target never ran
        assert down.breaker.stats.retries_denied == 0
        down.breaker.reset()  # it recovers: its budget is whole, a hedge is paid
        calls.clear()
        assert await hedged() in ("primary", "down")
        assert sorted(calls) == ["down", "primary"]
        assert down.breaker.stats.retries_denied == 0

    asyncio.run(main())
