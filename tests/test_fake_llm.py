"""The fake provider speaks OpenAI and Anthropic to the real SDKs, sync and async, with its
scenario switches (outage, rate limit, truncated streams, slow first token)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


_MADE: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every SDK client a test made is closed after it: no socket is left to the collector."""
    yield
    while _MADE:
        _MADE.pop().close()


def _openai(server: FakeLLMServer, **options: Any) -> openai.OpenAI:
    client = openai.OpenAI(
        api_key="sk-test", base_url=server.openai_base_url, max_retries=0, **options
    )
    _MADE.append(client)
    return client


def _anthropic(server: FakeLLMServer, **options: Any) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        api_key="sk-ant-test", base_url=server.anthropic_base_url, max_retries=0, **options
    )
    _MADE.append(client)
    return client


def _sse_lines(server: FakeLLMServer, path: str, body: dict[str, Any]) -> list[str]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}) as response:
        return [line for line in response.iter_lines() if line]


# -- speaking the providers' formats ----------------------------------------------------------


def test_openai_chat_echoes_the_model(llm_server: FakeLLMServer) -> None:
    """A chat completion answers the scenario's text under the model that was asked for."""
    llm_server.healthy(text="Hello there!")
    answer = _openai(llm_server).chat.completions.create(model="gpt-x", messages=MESSAGES)
    assert (answer.model, answer.choices[0].message.content) == ("gpt-x", "Hello there!")
    assert answer.choices[0].finish_reason == "stop"


def test_openai_chat_stream_ends_with_done(llm_server: FakeLLMServer) -> None:
    """A streamed chat completion is chunks, a finish reason, then ``data: [DONE]``."""
    llm_server.healthy(text="Hello there!")
    stream = _openai(llm_server).chat.completions.create(
        model="gpt-x", messages=MESSAGES, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there!"
    assert {c.model for c in chunks} == {"gpt-x"}
    assert chunks[-1].choices[0].finish_reason == "stop"
    lines = _sse_lines(llm_server, "/v1/chat/completions", {"model": "gpt-x"})
    assert lines[-1] == "data: [DONE]"


def test_openai_responses_plain_and_streamed(llm_server: FakeLLMServer) -> None:
    """The Responses API answers plainly and as typed events ending in response.completed."""
    client = _openai(llm_server)
    answer = client.responses.create(model="gpt-r", input="hi")
    assert (answer.model, answer.output_text, answer.status) == ("gpt-r", "Hello!", "completed")
    with client.responses.stream(model="gpt-r", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert (kinds[0], kinds[-1]) == ("response.created", "response.completed")
    assert "response.output_text.delta" in kinds
    assert (final.model, final.output_text) == ("gpt-r", "Hello!")


def test_anthropic_messages_plain_and_streamed(llm_server: FakeLLMServer) -> None:
    """Messages answer plainly and as the SSE sequence from message_start to message_stop."""
    llm_server.healthy(text="Bonjour!")
    client = _anthropic(llm_server)
    message = client.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES)
    assert (message.model, message.content[0].text) == ("claude-x", "Bonjour!")  # type: ignore[union-attr]
    events = list(
        client.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    lines = _sse_lines(llm_server, "/v1/messages", {"model": "claude-x"})
    assert "event: ping" in lines
    with client.messages.stream(model="claude-x", max_tokens=10, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Bonjour!"
        assert stream.get_final_message().stop_reason == "end_turn"


def test_requests_are_recorded(llm_server: FakeLLMServer) -> None:
    """``requests`` holds each request's method, path, headers and JSON body."""
    _anthropic(llm_server).messages.create(model="claude-x", max_tokens=10, messages=MESSAGES)
    (seen,) = llm_server.requests
    assert (seen.method, seen.path, seen.json["model"]) == ("POST", "/v1/messages", "claude-x")
    assert "ANTHROPIC-VERSION" in seen.headers  # headers are case-insensitive


def test_requests_from_many_threads_are_all_recorded(llm_server: FakeLLMServer) -> None:
    """Requests made from several threads at once are each recorded once."""
    client = _openai(llm_server)

    def calls(n: int) -> None:
        for i in range(5):
            client.chat.completions.create(model=f"m-{n}-{i}", messages=MESSAGES)

    threads = [threading.Thread(target=calls, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    models = sorted(r.json["model"] for r in llm_server.requests)
    assert models == sorted(f"m-{n}-{i}" for n in range(6) for i in range(5))


async def test_async_clients_with_async_with() -> None:
    """``async with`` serves in the test's event loop, for the async SDK clients."""
    async with (
        FakeLLMServer() as server,
        openai.AsyncOpenAI(api_key="k", base_url=server.openai_base_url, max_retries=0) as oa,
        anthropic.AsyncAnthropic(api_key="k", base_url=server.anthropic_base_url, max_retries=0) as an,
    ):  # fmt: skip
        answer = await oa.chat.completions.create(model="gpt-a", messages=MESSAGES)
        assert (answer.model, answer.choices[0].message.content) == ("gpt-a", "Hello!")
        stream = await oa.chat.completions.create(model="gpt-a", messages=MESSAGES, stream=True)
        texts = [c.choices[0].delta.content or "" async for c in stream]
        assert "".join(texts) == "Hello!"
        async with an.messages.stream(model="claude-a", max_tokens=10, messages=MESSAGES) as s:
            assert "".join([t async for t in s.text_stream]) == "Hello!"
    assert server.hits == 3


async def test_async_clients_against_the_threaded_server() -> None:
    """``start()`` / ``stop()`` serve from a thread, which async tests may call too."""
    server = FakeLLMServer().start()
    try:
        async with openai.AsyncOpenAI(
            api_key="k", base_url=server.openai_base_url, max_retries=0
        ) as client:
            answer = await client.responses.create(model="gpt-r", input="hi")
        assert answer.output_text == "Hello!"
    finally:
        server.stop()


# -- scenario switches -------------------------------------------------------------------------


def test_outage_answers_provider_shaped_errors(llm_server: FakeLLMServer) -> None:
    """An outage fails each request with the provider's own error body, until healthy()."""
    llm_server.outage()
    with pytest.raises(openai.InternalServerError) as caught:
        _openai(llm_server).chat.completions.create(model="gpt-x", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.code == "server_is_overloaded"
    llm_server.outage(status=529)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        _anthropic(llm_server).messages.create(model="c", max_tokens=10, messages=MESSAGES)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError):  # streams fail before they start
        _anthropic(llm_server).messages.create(
            model="c", max_tokens=10, messages=MESSAGES, stream=True
        )
    llm_server.healthy()
    assert _openai(llm_server).chat.completions.create(model="g", messages=MESSAGES).choices


def test_outage_status_is_checked(llm_server: FakeLLMServer) -> None:
    """An outage needs an HTTP error status."""
    with pytest.raises(ValueError, match="200"):
        llm_server.outage(status=200)


def test_rate_limit_sends_headers_and_429s() -> None:
    """A rate limit sends its headers on every answer and a 429 with retry-after when spent."""
    clock = FakeClock()
    with FakeLLMServer() as server:
        server.rate_limit(requests_per_minute=2, clock=clock)
        client = _openai(server)
        remaining = [
            client.chat.completions.with_raw_response.create(model="g", messages=MESSAGES)
            .headers["x-ratelimit-remaining-requests"]
            for _ in range(2)
        ]  # fmt: skip
        assert remaining == ["1", "0"]
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="g", messages=MESSAGES)
        headers = caught.value.response.headers
        assert (headers["retry-after"], headers["x-ratelimit-limit-requests"]) == ("30", "2")
        assert caught.value.code == "rate_limit_exceeded"
        with pytest.raises(anthropic.RateLimitError) as limited:
            _anthropic(server).messages.create(model="c", max_tokens=10, messages=MESSAGES)
        assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert limited.value.response.headers["retry-after"] == "30"
        clock.advance(30.0)  # one request refilled
        assert client.chat.completions.create(model="g", messages=MESSAGES).choices


def test_truncated_streams_lose_their_final_events(llm_server: FakeLLMServer) -> None:
    """truncate_streams() ends streams after their content, before their final events."""
    llm_server.truncate_streams()
    client = _openai(llm_server)
    chunks = list(client.chat.completions.create(model="g", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == []
    assert "data: [DONE]" not in _sse_lines(llm_server, "/v1/chat/completions", {"model": "g"})
    events = list(
        _anthropic(llm_server).messages.create(
            model="c", max_tokens=10, messages=MESSAGES, stream=True
        )
    )
    assert "message_stop" not in [e.type for e in events]
    with client.responses.stream(model="r", input="hi") as stream, pytest.raises(RuntimeError):
        list(stream)
        stream.get_final_response()  # "Didn't receive a `response.completed` event."
    assert client.chat.completions.create(model="g", messages=MESSAGES).choices  # plain: whole


def test_truncated_streams_can_hang_up(llm_server: FakeLLMServer) -> None:
    """truncate_streams(hang_up=True) drops the connection mid-body instead of ending it."""
    llm_server.truncate_streams(hang_up=True)
    with (
        httpx.stream("POST", llm_server.openai_base_url + "/chat/completions", json={"stream": True})
        as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):  # fmt: skip
        list(response.iter_bytes())


def test_slow_first_token_delays_content_not_headers(llm_server: FakeLLMServer) -> None:
    """slow_first_token() sends a stream's opening event at once and then withholds content."""
    llm_server.slow_first_token(60.0)
    client = _openai(llm_server, timeout=openai.Timeout(5.0, read=1.0))
    stream = client.chat.completions.create(model="g", messages=MESSAGES, stream=True)
    seen = []
    with pytest.raises((httpx.ReadTimeout, openai.APITimeoutError)):
        for chunk in stream:
            seen.append(chunk.choices[0].delta)
    assert [(d.role, d.content) for d in seen] == [("assistant", "")]  # the role, no content
    with pytest.raises(openai.APITimeoutError):  # a plain answer waits before its headers
        client.chat.completions.create(model="g", messages=MESSAGES)


def test_slow_first_token_then_answers(llm_server: FakeLLMServer) -> None:
    """A first token slower than nothing but faster than the client's timeout still arrives."""
    llm_server.slow_first_token(0.01)
    stream = _openai(llm_server).chat.completions.create(model="g", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello!"


def test_scripted_replies_take_precedence(llm_server: FakeLLMServer) -> None:
    """Scripted replies answer first, then the scenario takes over again."""
    llm_server.outage()
    llm_server.script(Reply.ok("scripted"))
    client = _openai(llm_server)
    assert (
        client.chat.completions.create(model="g", messages=MESSAGES).choices[0].message.content
        == "scripted"
    )
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="g", messages=MESSAGES)


def test_switches_combine_and_healthy_clears_them(llm_server: FakeLLMServer) -> None:
    """Switches combine (a rate-limited, truncating provider) and healthy() clears them all."""
    llm_server.rate_limit(requests_per_minute=1000)
    llm_server.truncate_streams()
    client = _openai(llm_server)
    raw = client.chat.completions.with_raw_response.create(
        model="g", messages=MESSAGES, stream=True
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert [c.choices[0].finish_reason for c in raw.parse()] == [None, None, None]
    llm_server.healthy()
    raw = client.chat.completions.with_raw_response.create(
        model="g", messages=MESSAGES, stream=True
    )
    assert "x-ratelimit-limit-requests" not in raw.headers
    assert [c.choices[0].finish_reason for c in raw.parse()][-1] == "stop"
