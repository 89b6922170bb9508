"""first_token_timeout: the longest wait for a stream's first *content* event, which comments,
pings, keep-alives and role-only deltas cannot reset.

Times are generous multiples: a stream that must time out keeps sending framing for 30 s
(or stays silent that long) against a 0.5 s deadline, and the test asks for an answer within
half of that; a stream that must not time out answers within 0.2 s of a 5 s deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    LLMCircuitBreaker,
    RequestTimeoutError,
    circuit_breaker,
)
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeLLMServer, Reply

MESSAGES = [{"role": "user", "content": "hi"}]
DEADLINE = 0.5
FRAMING_FOR = 30.0  # how long a stream without content keeps the connection busy
IN_TIME = 5.0  # a deadline that an answer within 0.2 s meets


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _chat_chunk(delta: dict[str, Any]) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    return _sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [choice]})  # fmt: skip


def _framing(api: str) -> Reply:
    """A stream that opens, then sends only framing: comments, pings, role-only or empty
    deltas, lifecycle events; no content for FRAMING_FOR seconds."""
    if api == "chat":
        head = [_chat_chunk({"role": "assistant", "content": ""})]
        beat = [": keep-alive\n\n", _chat_chunk({"content": ""}), _sse({}, "ping")]
    elif api == "responses":
        head = [
            _sse({"type": "response.created", "sequence_number": 0,
                  "response": {"id": "r", "status": "in_progress"}}, "response.created"),
        ]  # fmt: skip
        beat = [": keep-alive\n\n", _sse({"type": "keepalive"}, "keepalive")]
    else:
        start: dict[str, Any] = {"id": "m", "type": "message", "role": "assistant", "model": "c", "content": [],
                 "stop_reason": None, "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
        head = [
            _sse({"type": "message_start", "message": start}, "message_start"),
            _sse({"type": "content_block_start", "index": 0,
                  "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        ]  # fmt: skip
        beat = [_sse({"type": "ping"}, "ping"), ": keep-alive\n\n"]
    delay = 0.1
    count = int(FRAMING_FOR / delay / len(beat))
    return Reply(events=head + beat * count, event_delay=delay)


def _silent(api: str) -> Reply:
    """A whole stream whose content waits FRAMING_FOR seconds after the opening events."""
    build = {"chat": Reply.chat, "responses": Reply.responses, "messages": Reply.messages}[api]
    reply = build("Hello!", stream=True)
    return Reply(
        events=reply.events,
        headers=reply.headers,
        first_content=reply.first_content,
        first_token_delay=FRAMING_FOR,
    )


def _client(api: str, server: FakeLLMServer, transport: Any, *, asynchronous: bool) -> Any:
    lib: Any
    if api == "messages":
        lib = httpx2
        cls: Any = anthropic.AsyncAnthropic if asynchronous else anthropic.Anthropic
        base = server.anthropic_base_url
    else:
        lib = httpx
        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        base = server.openai_base_url
    http = (lib.AsyncClient if asynchronous else lib.Client)(transport=transport)
    return cls(api_key="sk-test", base_url=base, http_client=http, max_retries=0)


def _open(api: str, client: Any) -> Any:
    if api == "chat":
        return client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    if api == "responses":
        return client.responses.create(model="m", input="hi", stream=True)
    return client.messages.create(model="c", max_tokens=8, messages=MESSAGES, stream=True)


APIS = ["chat", "responses", "messages"]


@pytest.fixture
def registry() -> BreakerRegistry:
    return BreakerRegistry()


def _read(api: str, registry: BreakerRegistry, server: FakeLLMServer, timeout: float) -> list[Any]:
    transport = CircuitBreakerTransport("llm", registry=registry, first_token_timeout=timeout)
    with _client(api, server, transport, asynchronous=False) as client:
        return list(_open(api, client))


async def _aread(
    api: str, registry: BreakerRegistry, server: FakeLLMServer, timeout: float
) -> list[Any]:
    transport = AsyncCircuitBreakerTransport("llm", registry=registry, first_token_timeout=timeout)
    async with _client(api, server, transport, asynchronous=True) as client:
        return [event async for event in await _open(api, client)]


def _timed_out(exc: BaseException) -> RequestTimeoutError | None:
    """The RequestTimeoutError raised, or that caused the SDK's error."""
    for found in (exc, exc.__cause__):
        if isinstance(found, RequestTimeoutError):
            return found
    return None


@pytest.mark.parametrize("reply", [_framing, _silent], ids=["framing", "silent"])
@pytest.mark.parametrize("api", APIS)
def test_no_content_by_the_deadline_times_out(
    api: str, reply: Any, registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """Keep-alives, pings and role-only deltas (or silence) past first_token_timeout fail the
    attempt with RequestTimeoutError, counted as the provider's failure."""
    llm_server.script(reply(api))
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        _read(api, registry, llm_server, DEADLINE)
    assert time.monotonic() - started < FRAMING_FOR / 2
    assert "no content within 0.5 s" in str(_timed_out(caught.value)), repr(caught.value)
    assert registry.get("llm").stats.failures == 1


@pytest.mark.parametrize("api", APIS)
def test_content_in_time_does_not_time_out(
    api: str, registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """Content that comes before the deadline: the stream is read to its end, a success."""
    llm_server.slow_first_token(0.2)
    assert _read(api, registry, llm_server, IN_TIME)
    stats = registry.get("llm").stats
    assert (stats.successes, stats.failures) == (1, 0)


@pytest.mark.parametrize("reply", [_framing, _silent], ids=["framing", "silent"])
@pytest.mark.parametrize("api", APIS)
async def test_async_no_content_by_the_deadline_times_out(
    api: str, reply: Any, registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """The asyncio transport times a stream without content out at its deadline too."""
    llm_server.script(reply(api))
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        await _aread(api, registry, llm_server, DEADLINE)
    assert time.monotonic() - started < FRAMING_FOR / 2
    assert _timed_out(caught.value) is not None, repr(caught.value)
    assert registry.get("llm").stats.failures == 1


@pytest.mark.parametrize("api", APIS)
async def test_async_content_in_time_does_not_time_out(
    api: str, registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """The asyncio transport lets a stream whose content comes in time run to its end."""
    llm_server.slow_first_token(0.2)
    assert await _aread(api, registry, llm_server, IN_TIME)
    stats = registry.get("llm").stats
    assert (stats.successes, stats.failures) == (1, 0)


def test_headers_later_than_the_deadline_time_out(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """Headers that come after the deadline: the SDK sees a timeout (its APITimeoutError,
    caused by RequestTimeoutError) and the breaker a failure."""
    llm_server.script(Reply(events=Reply.chat("hi", stream=True).events, delay=FRAMING_FOR))
    with pytest.raises(openai.APITimeoutError) as caught:
        _read("chat", registry, llm_server, DEADLINE)
    assert isinstance(caught.value.__cause__, RequestTimeoutError)
    assert registry.get("llm").stats.failures == 1


def test_a_bad_first_token_timeout_is_named() -> None:
    """The transport names a bad first_token_timeout."""
    with pytest.raises(ValueError, match="first_token_timeout"):
        CircuitBreakerTransport("x", first_token_timeout=-1)


# -- the decorator --------------------------------------------------------------------------


def _sdk(server: FakeLLMServer, *, asynchronous: bool) -> Any:
    cls: Any = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(api_key="sk-test", base_url=server.openai_base_url, max_retries=0)


@pytest.mark.parametrize("reply", [_framing, _silent], ids=["framing", "silent"])
async def test_an_async_generator_without_content_times_out(
    reply: Any, registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """An async generator relaying an SDK stream that sends only framing (or nothing) fails
    at first_token_timeout, counted as a failure, having yielded nothing."""
    llm_server.script(reply("chat"))
    client = _sdk(llm_server, asynchronous=True)

    @circuit_breaker("gen", registry=registry, first_token_timeout=DEADLINE)
    async def ask() -> AsyncIterator[Any]:
        async for chunk in await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True
        ):
            yield chunk

    got: list[Any] = []
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="no content within 0.5 s"):
        async for chunk in ask():
            got.append(chunk)
    assert time.monotonic() - started < FRAMING_FOR / 2
    assert got == []
    assert registry.get("gen").stats.failures == 1
    await client.close()


def test_a_returned_stream_with_framing_past_the_deadline_times_out(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """A function returning the SDK's stream: framing past the deadline fails it (a sync
    stream is checked at each item)."""
    llm_server.script(_framing("chat"))
    client = _sdk(llm_server, asynchronous=False)

    @circuit_breaker("returned", registry=registry, first_token_timeout=DEADLINE)
    def ask() -> Any:
        return client.chat.completions.create(model="m", messages=MESSAGES, stream=True)

    started = time.monotonic()
    with pytest.raises(RequestTimeoutError), ask() as stream:
        list(stream)
    assert time.monotonic() - started < FRAMING_FOR / 2
    assert registry.get("returned").stats.failures == 1
    client.close()


def test_a_generator_whose_content_comes_in_time_runs_to_its_end(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """Content within the deadline: every chunk arrives, in order, framing included."""
    llm_server.slow_first_token(0.2)
    client = _sdk(llm_server, asynchronous=False)

    @circuit_breaker("gen", registry=registry, first_token_timeout=IN_TIME)
    def ask() -> Iterator[str]:
        for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""

    assert "".join(ask()) == "Hello!"
    assert registry.get("gen").stats.successes == 1
    client.close()


async def test_an_async_returned_stream_whose_content_comes_in_time(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """A coroutine returning the SDK's async stream, content in time: read to its end."""
    llm_server.slow_first_token(0.2)
    client = _sdk(llm_server, asynchronous=True)

    @circuit_breaker("returned", registry=registry, first_token_timeout=IN_TIME)
    async def ask() -> Any:
        return await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)

    chunks = [chunk async for chunk in await ask()]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert registry.get("returned").stats.successes == 1
    await client.close()


# -- the HTTP helpers -----------------------------------------------------------------------


def _facade(registry: BreakerRegistry) -> LLMCircuitBreaker:
    return LLMCircuitBreaker(
        "helpers",
        registry=registry,
        retry={"max_retries": 1, "initial_delay": 0.01, "jitter": False},
        first_token_timeout=DEADLINE,
    )


def test_a_helper_stream_without_content_is_retried(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """stream(): framing past the deadline fails the attempt before anything is yielded, so
    it is retried; the second attempt answers."""
    llm_server.script(_framing("chat"), Reply.chat("Hi!", stream=True))
    with _facade(registry) as cb:
        events = list(cb.stream(url=llm_server.openai_base_url + "/chat/completions",
                                data={"model": "m", "messages": MESSAGES, "stream": True}))  # fmt: skip
    text = "".join(e.data["choices"][0]["delta"].get("content", "") for e in events if e.data)
    assert text == "Hi!"
    stats = registry.get("helpers").stats
    assert (stats.failures, stats.successes, stats.retries) == (1, 1, 1)


async def test_a_helper_astream_without_content_times_out(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """astream(): a silent stream fails at the deadline with RequestTimeoutError."""
    llm_server.script(_silent("messages"), _silent("messages"))
    started = time.monotonic()
    async with _facade(registry) as cb:
        with pytest.raises(RequestTimeoutError, match="no content within 0.5 s"):
            async for _ in cb.astream(
                url=llm_server.anthropic_base_url + "/v1/messages",
                data={"model": "c", "max_tokens": 8, "messages": MESSAGES, "stream": True},
            ):
                pass
    assert time.monotonic() - started < FRAMING_FOR / 2
    assert registry.get("helpers").stats.failures == 2


def test_bad_first_token_timeouts_are_named() -> None:
    """A negative or non-number first_token_timeout is refused where it is given."""
    with pytest.raises(ValueError, match="first_token_timeout"):
        circuit_breaker("x", first_token_timeout=-1)
    with pytest.raises(ValueError, match="first_token_timeout"):
        LLMCircuitBreaker(first_token_timeout=0)


def test_a_streaming_call_without_content_times_out(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """call() of a streaming request reads the whole body: framing past the deadline fails
    it with RequestTimeoutError, retried."""
    llm_server.script(_framing("messages"), _framing("messages"))
    data = {"model": "c", "max_tokens": 8, "messages": MESSAGES, "stream": True}
    url = llm_server.anthropic_base_url + "/v1/messages"
    started = time.monotonic()
    with _facade(registry) as cb, pytest.raises(RequestTimeoutError, match="no content within"):
        cb.call(url=url, data=data)
    assert time.monotonic() - started < FRAMING_FOR / 2
    assert registry.get("helpers").stats.failures == 2


async def test_a_streaming_acall_without_content_times_out(
    registry: BreakerRegistry, llm_server: FakeLLMServer
) -> None:
    """acall() of a streaming request: a silent stream fails at the deadline."""
    llm_server.script(_silent("chat"), _silent("chat"))
    data = {"model": "m", "messages": MESSAGES, "stream": True}
    url = llm_server.openai_base_url + "/chat/completions"
    started = time.monotonic()
    async with _facade(registry) as cb:
        with pytest.raises(RequestTimeoutError, match="no content within"):
            await cb.acall(url=url, data=data)
    assert time.monotonic() - started < FRAMING_FOR / 2
    assert registry.get("helpers").stats.failures == 2


async def test_a_stream_without_content_fails_over() -> None:
    """A decorated async generator that only pings past its deadline is a provider fault:
    with_fallbacks moves on to the next target, which answers."""
    import asyncio

    from llm_circuit_breaker import with_fallbacks

    registry = BreakerRegistry()

    @circuit_breaker("pinging", registry=registry, first_token_timeout=DEADLINE)
    async def pinging() -> AsyncIterator[Any]:
        while True:
            yield {"type": "ping"}
            await asyncio.sleep(0.05)

    @circuit_breaker("answering", registry=registry)
    async def answering() -> AsyncIterator[Any]:
        yield {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}

    ask = with_fallbacks(pinging, answering)
    items = [item async for item in ask()]
    assert items == [{"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}]
    assert registry.get("pinging").stats.failures == 1


def test_a_generator_keeps_its_framing_and_return_value() -> None:
    """Items before the first content are held back, then given in order; the generator's
    return value passes through."""
    registry = BreakerRegistry()
    seen: list[Any] = []

    @circuit_breaker("gen", registry=registry, first_token_timeout=IN_TIME)
    def gen() -> Any:
        yield {"type": "ping"}
        yield ""
        yield "Hi"
        return "done"

    def outer() -> Any:
        seen.append((yield from gen()))

    assert list(outer()) == [{"type": "ping"}, "", "Hi"]
    assert seen == ["done"]
    assert registry.get("gen").stats.successes == 1
