"""Answers that are no answers where the library sees them whole: the httpx transport (under
the real openai and anthropic SDKs) and the HTTP helpers, against the fake provider. The
breaker ignores them (no outage, nor proof of health); what the caller receives is unchanged.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import BreakerRegistry, CircuitState, LLMCircuitBreaker
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply
from llm_circuit_breaker.testing._reply import completion

MESSAGES = [{"role": "user", "content": "hi"}]


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


def _chat(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        **completion("x"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
    }


def _message(content: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude",
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }  # fmt: skip


def _raw(body: dict[str, Any], *, indent: int | None = 2, encoding: str | None = None) -> Reply:
    """``body`` as OpenAI sends it: pretty-printed, in two chunks, gzip'd if asked."""
    data = json.dumps(body, indent=indent).encode()
    headers = {"content-type": "application/json"}
    if encoding == "gzip":
        data = gzip.compress(data)
        headers["content-encoding"] = "gzip"
    half = len(data) // 2
    return Reply(chunks=[data[:half], data[half:]], headers=headers)


def _tool(arguments: str) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return _chat({"content": None, "tool_calls": [call]}, "tool_calls")


# A 200 each, and whether the breaker must count it as a success (an answer) or ignore it.
CHAT = {
    "answer": (Reply.ok("Hello!"), True),
    "answer pretty-printed": (_raw(completion("Hello!")), True),
    "answer gzip": (_raw(completion("Hello!"), encoding="gzip"), True),
    "tool call": (_raw(_tool('{"city": "Paris"}')), True),
    "refusal text": (Reply(json=_chat({"content": None, "refusal": "I can't."})), True),
    "cut with text": (Reply(json=_chat({"content": "Hel"}, "length")), True),
    "empty": (Reply(json=_chat({"content": ""})), False),
    "whitespace": (Reply(json=_chat({"content": "\n\n "})), False),
    "null content": (_raw(_chat({"content": None})), False),
    "no content key": (Reply(json=_chat({})), False),
    "no choices": (Reply(json={**completion("x"), "choices": []}), False),
    "length empty": (_raw(_chat({"content": None}, "length")), False),
    "content filter": (_raw(_chat({"content": "Sure, here"}, "content_filter")), False),
    "content filter gzip": (
        _raw(_chat({"content": "Sure"}, "content_filter"), encoding="gzip"),
        False,
    ),
    "broken tool arguments": (_raw(_tool('{"city": "Par')), False),
    "compact empty": (_raw(_chat({"content": ""}), indent=None), False),
}
MESSAGES_API = {
    "answer": (Reply.messages("Hello!"), True),
    "tool use": (
        Reply(json=_message([{"type": "tool_use", "name": "f", "input": {}}], "tool_use")),
        True,
    ),
    "no content": (Reply(json=_message([])), False),
    "empty text": (Reply(json=_message([{"type": "text", "text": ""}])), False),
    "refusal": (Reply(json=_message([{"type": "text", "text": "I"}], "refusal")), False),
    "thinking only, cut": (
        _raw(_message([{"type": "thinking", "thinking": "hmm", "signature": "s"}], "max_tokens")),
        False,
    ),
}


def _openai(server: FakeLLMServer, transport: Any, *, sync: bool = True) -> Any:
    kind, lib = (openai.OpenAI, httpx.Client) if sync else (openai.AsyncOpenAI, httpx.AsyncClient)
    return kind(
        api_key="sk-test", base_url=server.url + "/v1", max_retries=0,
        http_client=lib(transport=transport),
    )  # fmt: skip


def _counts(registry: BreakerRegistry, name: str = "llm") -> tuple[int, int, int]:
    stats = registry.get_or_create(name).stats
    return stats.successes, stats.failures, stats.ignored


@pytest.mark.parametrize("case", list(CHAT))
def test_transport_judges_a_chat_completion(llm_server: FakeLLMServer, case: str) -> None:
    """openai (sync): the SDK gets the completion as sent; the breaker counts an answer a
    success and ignores a non-answer."""
    reply, answer = CHAT[case]
    llm_server.script(reply)
    registry = BreakerRegistry()
    client = _openai(llm_server, CircuitBreakerTransport("llm", registry=registry))
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    completion_ = raw.parse()
    assert completion_.object == "chat.completion"
    assert json.loads(raw.http_response.content) == json.loads(
        gzip.decompress(b"".join(reply.chunks)) if case.endswith("gzip")
        else b"".join(reply.chunks) if reply.chunks is not None
        else json.dumps(reply.json)
    )  # fmt: skip
    assert _counts(registry) == ((1, 0, 0) if answer else (0, 0, 1))


@pytest.mark.parametrize("case", list(MESSAGES_API))
async def test_async_transport_judges_an_anthropic_message(
    llm_server: FakeLLMServer, case: str
) -> None:
    """anthropic (async): the same for the Messages API."""
    reply, answer = MESSAGES_API[case]
    llm_server.script(reply)
    registry = BreakerRegistry()
    client = anthropic.AsyncAnthropic(
        api_key="sk-test", base_url=llm_server.url, max_retries=0,
        http_client=httpx2.AsyncClient(transport=AsyncCircuitBreakerTransport("llm", registry=registry)),
    )  # fmt: skip
    message = await client.messages.create(model="claude", max_tokens=8, messages=MESSAGES)
    assert message.type == "message"
    assert _counts(registry) == ((1, 0, 0) if answer else (0, 0, 1))
    await client.close()


def test_a_non_answer_does_not_reset_the_failure_count(llm_server: FakeLLMServer) -> None:
    """failure_threshold=2: a failure, an empty completion, a failure opens the circuit (a
    success between them would have reset the count)."""
    empty = Reply(json=_chat({"content": ""}))
    llm_server.script(Reply.error(500), empty, Reply.error(500))
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("llm", registry=registry, failure_threshold=2)
    client = _openai(llm_server, transport)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert (
        client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
        == ""
    )
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    breaker = registry.get_or_create("llm")
    assert breaker.state is CircuitState.OPEN
    assert _counts(registry) == (0, 2, 1)


async def test_a_non_answer_does_not_close_a_half_open_circuit(llm_server: FakeLLMServer) -> None:
    """A HALF_OPEN circuit's probe answered with a filtered completion: still HALF_OPEN, its
    probe slot given back; an answer then closes it."""
    llm_server.script(
        Reply.error(500), Reply(json=_chat({"content": "x"}, "content_filter")), Reply.ok("fine")
    )
    clock = FakeClock()
    registry = BreakerRegistry(clock=clock)
    transport = AsyncCircuitBreakerTransport(
        "llm", registry=registry, failure_threshold=1, success_threshold=1, reset_timeout=10.0
    )
    client = _openai(llm_server, transport, sync=False)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=MESSAGES)
    breaker = registry.get_or_create("llm")
    assert breaker.state is CircuitState.OPEN
    clock.advance(10.0)
    await client.chat.completions.create(model="m", messages=MESSAGES)
    assert breaker.state is CircuitState.HALF_OPEN
    await client.chat.completions.create(model="m", messages=MESSAGES)
    assert breaker.state is CircuitState.CLOSED
    assert _counts(registry) == (1, 1, 1)
    await client.close()


def test_bodies_not_judged(llm_server: FakeLLMServer) -> None:
    """A body over 1 MiB, and a body that is not JSON, are not judged: successes."""
    big = _chat({"content": ""})
    big["padding"] = "x" * (1024 * 1024)
    llm_server.script(
        Reply(json=big),
        Reply(chunks=[json.dumps(_chat({"content": ""})).encode()],
              headers={"content-type": "text/plain"}),
    )  # fmt: skip
    registry = BreakerRegistry()
    client = httpx.Client(transport=CircuitBreakerTransport("llm", registry=registry))
    for _ in range(2):
        assert client.post(llm_server.url + "/v1/chat/completions", json={}).status_code == 200
    assert _counts(registry) == (2, 0, 0)


def _empty_chat_stream(finish: str) -> Reply:
    head = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    return Reply(
        events=[
            _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}]}),
            _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
            _sse("[DONE]"),
        ]
    )  # fmt: skip


def _filtered_chat_stream() -> Reply:
    head = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    return Reply(
        events=[
            _sse({**head, "choices": [{"index": 0, "delta": {"content": "Sure"},
                                       "finish_reason": None}]}),
            _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]}),
            _sse("[DONE]"),
        ]
    )  # fmt: skip


def _refused_message_stream() -> Reply:
    """An Anthropic stream with text, stopped by ``stop_reason: refusal``."""
    text = Reply.messages("I", stream=True).events or []
    return Reply(events=[e.replace('"end_turn"', '"refusal"') for e in text])


def _tool_stream() -> Reply:
    head = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    return Reply(
        events=[
            _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                       "tool_calls": [call]}, "finish_reason": None}]}),
            _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            _sse("[DONE]"),
        ]
    )  # fmt: skip


STREAMS = {
    "answer": (lambda: Reply.chat("Hello there", stream=True), True),
    "tool call": (_tool_stream, True),
    "anthropic answer": (lambda: Reply.messages("Hi", stream=True), True),
    "anthropic empty": (lambda: Reply.messages("", stream=True), False),
    "empty": (lambda: _empty_chat_stream("stop"), False),
    "length empty": (lambda: _empty_chat_stream("length"), False),
    "content filter": (_filtered_chat_stream, False),
    "responses answer": (lambda: Reply.responses("Hi", stream=True), True),
    "responses empty": (lambda: Reply.responses("", stream=True), False),
}


@pytest.mark.parametrize("case", list(STREAMS))
def test_transport_judges_a_stream(llm_server: FakeLLMServer, case: str) -> None:
    """An SSE answer through the transport: every event reaches the SDK; one that answered
    nothing by its end (or was filtered) is ignored."""
    make, answer = STREAMS[case]
    reply = make()
    llm_server.script(reply)
    registry = BreakerRegistry()
    client = httpx.Client(transport=CircuitBreakerTransport("llm", registry=registry))
    with client.stream("POST", llm_server.url + "/v1/chat/completions", json={}) as response:
        body = response.read()
    assert body.decode() == "".join(reply.events or [])
    assert _counts(registry) == ((1, 0, 0) if answer else (0, 0, 1))


def test_transport_judges_anthropic_streams(llm_server: FakeLLMServer) -> None:
    """The anthropic SDK's stream: an answer is a success, an empty one and a refusal (its
    stop reason in message_delta) are ignored."""
    llm_server.script(
        Reply.messages("Hello", stream=True), Reply.messages("", stream=True),
        _refused_message_stream(),
    )  # fmt: skip
    registry = BreakerRegistry()
    client = anthropic.Anthropic(
        api_key="sk-test", base_url=llm_server.url, max_retries=0,
        http_client=httpx2.Client(transport=CircuitBreakerTransport("llm", registry=registry)),
    )  # fmt: skip
    texts = []
    for _ in range(3):
        with client.messages.stream(model="claude", max_tokens=8, messages=MESSAGES) as stream:
            texts.append("".join(stream.text_stream))
    assert texts == ["Hello", "", "I"]
    assert _counts(registry) == (1, 0, 2)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400) | st.sampled_from(list(CHAT)))
def test_any_body_is_judged_without_a_crash(body: bytes | str) -> None:
    """Hostile bodies (random bytes, the cases above cut anywhere): a verdict, never an
    error."""
    from llm_circuit_breaker.httpx._core import unanswered

    if isinstance(body, str):
        reply = CHAT[body][0]
        whole = b"".join(reply.chunks) if reply.chunks is not None else json.dumps(reply.json)
        body = whole[: len(whole) // 3] if isinstance(whole, bytes) else whole.encode()[:50]
    for encoding in ("", "gzip", "br"):
        headers = httpx.Headers({"content-type": "application/json", "content-encoding": encoding})
        assert unanswered([body], headers) in (True, False)


def test_hostile_bodies_are_judged_in_one_pass() -> None:
    """A MiB of near misses (a key, then a long run of spaces that ends in no value) is read
    in linear time: the searches cannot backtrack over it again and again."""
    from llm_circuit_breaker.httpx._core import unanswered

    headers = httpx.Headers({"content-type": "application/json"})
    for unit in (b'"content" ', b'"text":', b'"content"' + b" " * 5000, b'reason":"'):
        body = b"{" + unit * ((1024 * 1024 - 2) // len(unit)) + b"}"
        assert unanswered([body], headers) in (True, False)


# -- the HTTP helpers --------------------------------------------------------------------------


def _facade(registry: BreakerRegistry) -> LLMCircuitBreaker:
    return LLMCircuitBreaker(
        "llm", registry=registry, retry={"max_retries": 2, "initial_delay": 0.001, "jitter": False}
    )


def test_call_ignores_a_streamed_non_answer(llm_server: FakeLLMServer) -> None:
    """call() of a streaming request answered with events that say nothing: the events are
    returned (not retried), the breaker ignores them; a streamed answer is a success."""
    llm_server.script(_empty_chat_stream("length"), Reply.chat("Hi", stream=True))
    registry = BreakerRegistry()
    cb = _facade(registry)
    url = llm_server.url + "/v1/chat/completions"
    events = cb.call(url, data={"stream": True})
    assert [e.data["choices"][0]["finish_reason"] for e in events] == [None, "length"]
    assert len(cb.call(url, data={"stream": True})) > 2
    assert llm_server.hits == 2
    assert _counts(registry) == (1, 0, 1)


def test_stream_ignores_non_answers(llm_server: FakeLLMServer) -> None:
    """stream(): a JSON completion that is empty (one event) and an SSE stream stopped by a
    content filter are yielded whole and ignored; an answer is a success."""
    llm_server.script(
        Reply(json=_chat({"content": ""})), _filtered_chat_stream(), Reply.chat("Hi", stream=True)
    )
    registry = BreakerRegistry()
    cb = _facade(registry)
    url = llm_server.url + "/v1/chat/completions"
    whole = list(cb.stream(url, data={"stream": True}))
    assert [e.data["choices"][0]["message"]["content"] for e in whole] == [""]
    filtered = list(cb.stream(url, data={"stream": True}))
    assert [e.data["choices"][0]["finish_reason"] for e in filtered] == [None, "content_filter"]
    assert len(list(cb.stream(url, data={"stream": True}))) > 2
    assert _counts(registry) == (1, 0, 2)


async def test_async_helpers_ignore_non_answers(llm_server: FakeLLMServer) -> None:
    """acall() / astream() (aiohttp): the same."""
    llm_server.script(
        Reply.messages("", stream=True), _refused_message_stream(),
        Reply(json=_chat({"content": None}, "length")), Reply.messages("Hi", stream=True),
    )  # fmt: skip
    registry = BreakerRegistry()
    async with _facade(registry) as cb:
        url = llm_server.url + "/v1/messages"
        events = await cb.acall(url, data={"stream": True})
        assert events[-1].event == "message_stop"
        refused = [e async for e in cb.astream(url, data={"stream": True})]
        assert refused[-1].event == "message_stop"
        whole = [e async for e in cb.astream(url, data={"stream": True})]
        assert whole[0].data["choices"][0]["finish_reason"] == "length"
        assert len([e async for e in cb.astream(url, data={"stream": True})]) > 3
    assert llm_server.hits == 4
    assert _counts(registry) == (1, 0, 3)
