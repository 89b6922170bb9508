"""SDK streams returned by decorated functions are checked whole (SPEC section 12): the real
openai and anthropic SDKs against a local server that cuts a stream after two chunks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from llm_circuit_breaker import IncompleteStreamError, ServerError, circuit_breaker
from llm_circuit_breaker.testing import FakeLLMServer, Reply

MESSAGES = [{"role": "user", "content": "hi"}]


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _chunk(text: str, finish: str | None = None) -> str:
    return _sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
        }
    )


def _response_event(kind: str, **fields: Any) -> str:
    return _sse({"type": kind, "sequence_number": 0, **fields}, kind)


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
CHAT_CUT = Reply(events=[_chunk("a"), _chunk("b")])
CHAT_WHOLE = Reply(events=[_chunk("a"), _chunk("b", finish="stop"), "data: [DONE]\n\n"])
RESPONSES_CUT = Reply(
    events=[
        _response_event("response.created", response=RESPONSE),
        _response_event(
            "response.output_text.delta", delta="hi", item_id="i", output_index=0, content_index=0
        ),
    ]
)
RESPONSES_WHOLE = Reply(
    events=[
        *(RESPONSES_CUT.events or ()),
        _response_event("response.completed", response={**RESPONSE, "status": "completed"}),
    ]
)


@pytest.fixture
def clients(llm_server: FakeLLMServer) -> Iterator[dict[str, Any]]:
    """The sync SDK clients, without their own retries, against the local server."""
    made = {
        "openai": openai.OpenAI(api_key="sk-test", base_url=llm_server.url + "/v1", max_retries=0),
        "anthropic": anthropic.Anthropic(api_key="sk-test", base_url=llm_server.url, max_retries=0),
    }
    yield made
    made["openai"].close()
    made["anthropic"].close()


def _async_clients(url: str) -> dict[str, Any]:
    """The async SDK clients, made (and to be closed) inside the event loop that uses them."""
    return {
        "aopenai": openai.AsyncOpenAI(api_key="sk-test", base_url=url + "/v1", max_retries=0),
        "aanthropic": anthropic.AsyncAnthropic(api_key="sk-test", base_url=url, max_retries=0),
    }


async def _aclose(clients: dict[str, Any]) -> None:
    await clients["aopenai"].close()
    await clients["aanthropic"].close()


def _sync_call(clients: dict[str, Any], api: str) -> Any:
    if api == "chat":
        return clients["openai"].chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
    if api == "responses":
        return clients["openai"].responses.create(model="gpt-4o", input="hi", stream=True)
    return clients["anthropic"].messages.create(
        model="claude", max_tokens=8, messages=MESSAGES, stream=True
    )


async def _async_call(clients: dict[str, Any], api: str) -> Any:
    if api == "chat":
        return await clients["aopenai"].chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
    if api == "responses":
        return await clients["aopenai"].responses.create(model="gpt-4o", input="hi", stream=True)
    return await clients["aanthropic"].messages.create(
        model="claude", max_tokens=8, messages=MESSAGES, stream=True
    )


CUT = {
    "chat": CHAT_CUT,
    "responses": RESPONSES_CUT,
    "anthropic": Reply.anthropic_stream(["a", "b"], finish=False),
}
WHOLE = {
    "chat": CHAT_WHOLE,
    "responses": RESPONSES_WHOLE,
    "anthropic": Reply.anthropic_stream(["a", "b"]),
}
APIS = sorted(CUT)


@pytest.mark.parametrize("api", APIS)
def test_a_returned_sync_stream_cut_short_raises_at_its_end(
    api: str, clients: dict[str, Any], llm_server: FakeLLMServer
) -> None:
    """Two chunks and no final event: every item is handed over, then IncompleteStreamError,
    counted as a failure (the bare SDK would end the loop quietly)."""
    llm_server.script(CUT[api])

    @circuit_breaker("returned", failure_threshold=5)
    def ask() -> Any:
        return _sync_call(clients, api)

    seen = []
    with pytest.raises(IncompleteStreamError):
        for item in ask():
            seen.append(item)
    assert len(seen) >= 2
    assert (ask.breaker.stats.failures, ask.breaker.stats.successes) == (1, 0)


@pytest.mark.parametrize("api", APIS)
def test_a_returned_async_stream_cut_short_raises_at_its_end(
    api: str, llm_server: FakeLLMServer
) -> None:
    """The same for AsyncStream returned by a coroutine function."""
    llm_server.script(CUT[api])
    clients = _async_clients(llm_server.url)

    @circuit_breaker("areturned", failure_threshold=5)
    async def ask() -> Any:
        return await _async_call(clients, api)

    async def consume() -> int:
        count = 0
        try:
            async for _ in await ask():
                count += 1
        finally:
            await _aclose(clients)
        return count

    with pytest.raises(IncompleteStreamError):
        asyncio.run(consume())
    assert (ask.breaker.stats.failures, ask.breaker.stats.successes) == (1, 0)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_whole_returned_stream_is_one_success(
    api: str, asynchronous: bool, clients: dict[str, Any], llm_server: FakeLLMServer
) -> None:
    """A finish reason, message_stop or response.completed: the stream is whole, a success."""
    llm_server.script(WHOLE[api])
    if asynchronous:
        aclients = _async_clients(llm_server.url)

        @circuit_breaker("whole")
        async def aask() -> Any:
            return await _async_call(aclients, api)

        async def consume() -> list[Any]:
            try:
                return [item async for item in await aask()]
            finally:
                await _aclose(aclients)

        items = asyncio.run(consume())
        breaker = aask.breaker
    else:

        @circuit_breaker("whole")
        def ask() -> Any:
            return _sync_call(clients, api)

        items = list(ask())
        breaker = ask.breaker
    assert items
    assert (breaker.stats.failures, breaker.stats.successes) == (0, 1)


def test_a_plain_iterator_is_not_checked() -> None:
    """A returned iterator of plain values (or of dicts shaped like events) ends quietly."""

    @circuit_breaker("plain")
    def values() -> Iterator[Any]:
        return iter(["a", {"type": "message_start"}, {"object": "chat.completion.chunk"}])

    assert len(list(values())) == 3
    assert values.breaker.stats.successes == 1


def test_a_returned_responses_stream_that_failed_is_a_failure(
    clients: dict[str, Any], llm_server: FakeLLMServer
) -> None:
    """response.failed with server_error (status 200): every event handed over, then the
    provider's error at the end, counted as a failure, as the transport would."""
    failed = {**RESPONSE, "status": "failed", "error": {"code": "server_error", "message": "x"}}
    llm_server.script(
        Reply(
            events=[
                *(RESPONSES_CUT.events or ()),
                _response_event("response.failed", response=failed),
            ]
        )
    )

    @circuit_breaker("failed-response", failure_threshold=5)
    def ask() -> Any:
        return _sync_call(clients, "responses")

    seen = []
    with pytest.raises(ServerError) as caught:
        for item in ask():
            seen.append(item)
    assert seen[-1].type == "response.failed" and caught.value.error_type == "server_error"
    assert (ask.breaker.stats.failures, ask.breaker.stats.successes) == (1, 0)


# -- usage of returned streams counts against the token budget (SPEC section 16) --------------

CHAT_WITH_USAGE = Reply(
    events=[
        _chunk("a"),
        _chunk("b", finish="stop"),
        _sse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "gpt-4o-mini",
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        ),
        "data: [DONE]\n\n",
    ]
)
# What each stream says it used: openai's final usage chunk (stream_options include_usage), a
# Responses response.completed (1 in, 4 out), anthropic's message_start (1 in) and its
# message_delta (4 out).
WITH_USAGE = {
    "chat": (CHAT_WITH_USAGE, 10.0),
    "responses": (Reply.responses("Hello there!", stream=True), 5.0),
    "anthropic": (Reply.messages("Hello there!", stream=True), 5.0),
}


def _sync_usage_call(clients: dict[str, Any], api: str) -> Any:
    if api == "chat":
        return clients["openai"].chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    return _sync_call(clients, api)


async def _async_usage_call(clients: dict[str, Any], api: str) -> Any:
    if api == "chat":
        return await clients["aopenai"].chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    return await _async_call(clients, api)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_returned_stream_s_usage_counts_against_the_token_budget(
    api: str, asynchronous: bool, clients: dict[str, Any], llm_server: FakeLLMServer
) -> None:
    """The usage an SDK stream reports is counted when it ends; once it spent the budget, the
    next call is refused with BudgetExceededError without reaching the provider."""
    from llm_circuit_breaker import BudgetExceededError

    reply, tokens = WITH_USAGE[api]
    llm_server.script(reply)
    if asynchronous:
        aclients = _async_clients(llm_server.url)

        @circuit_breaker("metered", token_budget=tokens)
        async def aask() -> Any:
            return await _async_usage_call(aclients, api)

        async def consume() -> list[Any]:
            try:
                items = [item async for item in await aask()]
                with pytest.raises(BudgetExceededError):
                    await aask()
                return items
            finally:
                await _aclose(aclients)

        items = asyncio.run(consume())
        breaker = aask.breaker
    else:

        @circuit_breaker("metered", token_budget=tokens)
        def ask() -> Any:
            return _sync_usage_call(clients, api)

        items = list(ask())
        with pytest.raises(BudgetExceededError):
            ask()
        breaker = ask.breaker
    assert items
    assert breaker.budget["spent"] == tokens
    assert llm_server.hits == 1
    assert (breaker.stats.successes, breaker.stats.throttle_refusals["token_budget"]) == (1, 1)


def test_a_returned_stream_closed_early_counts_only_the_usage_it_saw(
    clients: dict[str, Any], llm_server: FakeLLMServer
) -> None:
    """Closed after anthropic's message_start: its input tokens count, no estimate is added;
    a whole stream that says nothing counts the estimate of the call's arguments."""
    llm_server.script(Reply.messages("Hello there!", stream=True), CHAT_WHOLE)

    @circuit_breaker("closed-early", token_budget=1_000_000)
    def ask(kind: str, max_tokens: int = 0) -> Any:
        return _sync_call(clients, kind)

    stream = ask("anthropic")
    next(stream)  # message_start: 1 input token, 1 output token so far
    stream.close()
    assert ask.breaker.budget["spent"] == 2.0
    list(ask("chat", max_tokens=100))  # no usage chunk: max_tokens + prompt estimate
    assert ask.breaker.budget["spent"] > 100.0
