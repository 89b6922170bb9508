"""Answers that are no answers where the library sees them whole: the httpx transport (under
the real openai and anthropic SDKs) and the HTTP helpers, against the fake provider. The
breaker ignores them (no outage, nor proof of health); what the caller receives is unchanged.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitState,
    InvalidResponseError,
    LLMCircuitBreaker,
    with_fallbacks,
)
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


def _stream_through_transport(
    llm_server: FakeLLMServer, make: Callable[[], Reply], answer: bool
) -> None:
    """Stream ``make()``'s reply through the transport: the SDK's reader gets every event as
    sent, and the breaker counts a success for an answer, else one ignored call."""
    reply = make()
    llm_server.script(reply)
    registry = BreakerRegistry()
    client = httpx.Client(transport=CircuitBreakerTransport("llm", registry=registry))
    with client.stream("POST", llm_server.url + "/v1/chat/completions", json={}) as response:
        body = response.read()
    assert body.decode() == "".join(reply.events or [])
    assert _counts(registry) == ((1, 0, 0) if answer else (0, 0, 1))


@pytest.mark.parametrize("case", list(STREAMS))
def test_transport_judges_a_stream(llm_server: FakeLLMServer, case: str) -> None:
    """An SSE answer through the transport: every event reaches the SDK; one that answered
    nothing by its end (or was filtered) is ignored."""
    _stream_through_transport(llm_server, *STREAMS[case])


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
    """acall() / astream() (aiohttp): the same; acall() of an empty stream is retried, as a
    JSON one is, then raises InvalidResponseError with the last events."""
    empty = Reply.messages("", stream=True)
    llm_server.script(
        empty, empty, empty, _refused_message_stream(),
        Reply(json=_chat({"content": None}, "length")), Reply.messages("Hi", stream=True),
    )  # fmt: skip
    registry = BreakerRegistry()
    async with _facade(registry) as cb:
        url = llm_server.url + "/v1/messages"
        with pytest.raises(InvalidResponseError) as caught:
            await cb.acall(url, data={"stream": True})
        assert caught.value.kind == "empty"
        assert caught.value.response[-1].event == "message_stop"
        refused = [e async for e in cb.astream(url, data={"stream": True})]
        assert refused[-1].event == "message_stop"
        whole = [e async for e in cb.astream(url, data={"stream": True})]
        assert whole[0].data["choices"][0]["finish_reason"] == "length"
        assert len([e async for e in cb.astream(url, data={"stream": True})]) > 3
    assert llm_server.hits == 6
    assert _counts(registry) == (1, 0, 5)


# -- what an answer holds: reasoning, tool arguments, reasons of any type ----------------------

_HEAD = {"id": "c", "object": "chat.completion.chunk", "model": "m"}


def _chunk(delta: dict[str, Any], finish: Any = None) -> str:
    return _sse({**_HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def _chat_events(*chunks: str) -> Reply:
    return Reply(events=[*chunks, _sse("[DONE]")])


def _call(arguments: str, *, index: int = 0, first: bool = True) -> dict[str, Any]:
    if first:
        function = {"name": "f", "arguments": arguments}
        return {"index": index, "id": "call_1", "type": "function", "function": function}
    return {"index": index, "function": {"arguments": arguments}}


def _message_events(blocks: list[tuple[str, str]], stop: Any) -> Reply:
    """An Anthropic stream of ``(kind, text)`` blocks ("text" or "thinking") ending with the
    stop reason ``stop`` in its message_delta."""
    start = {**_message([], stop="x"), "stop_reason": None}
    events = [_sse({"type": "message_start", "message": start}, "message_start")]
    for index, (kind, text) in enumerate(blocks):
        block = (
            {"type": kind, kind: ""}
            if kind == "text"
            else {"type": kind, kind: "", "signature": ""}
        )
        delta = {"type": f"{kind}_delta", kind: text}
        events += [
            _sse({"type": "content_block_start", "index": index, "content_block": block},
                 "content_block_start"),
            _sse({"type": "content_block_delta", "index": index, "delta": delta},
                 "content_block_delta"),
            _sse({"type": "content_block_stop", "index": index}, "content_block_stop"),
        ]  # fmt: skip
    events += [
        _sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
              "usage": {"output_tokens": 8}}, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]  # fmt: skip
    return Reply(events=events)


def _slim_responses_stream() -> Reply:
    """A Responses stream with text deltas whose final response.completed lists no output."""
    events = list(Reply.responses("Hello there", stream=True).events or [])
    last = json.loads(events[-1].split("data: ", 1)[1])
    last["response"]["output"] = []
    events[-1] = "event: response.completed\ndata: " + json.dumps(last) + "\n\n"
    return Reply(events=events)


REASONED = {
    "anthropic thinking only, max_tokens": (
        lambda: _message_events([("thinking", "Let me think")], "max_tokens"), False),
    "anthropic thinking then text": (
        lambda: _message_events([("thinking", "Hmm"), ("text", "Paris")], "end_turn"), True),
    "chat reasoning only, length": (
        lambda: _chat_events(
            _chunk({"role": "assistant", "content": "", "reasoning_content": ""}),
            _chunk({"reasoning_content": "hmm..."}), _chunk({}, "length")),
        False),
    "chat reasoning then text": (
        lambda: _chat_events(
            _chunk({"role": "assistant", "content": None, "reasoning_content": "hmm"}),
            _chunk({"reasoning_content": "so"}), _chunk({"content": "Paris"}),
            _chunk({}, "stop")),
        True),
    "chat tool arguments in pieces": (
        lambda: _chat_events(
            _chunk({"role": "assistant", "tool_calls": [_call("")]}),
            _chunk({"tool_calls": [_call('{"city": ', first=False)]}),
            _chunk({"tool_calls": [_call('"Paris"}', first=False)]}),
            _chunk({}, "tool_calls")),
        True),
    "chat broken tool arguments": (
        lambda: _chat_events(
            _chunk({"role": "assistant", "content": "Let me call", "tool_calls": [_call("")]}),
            _chunk({"tool_calls": [_call('{"city": "Par', first=False)]}),
            _chunk({}, "tool_calls")),
        False),
    "responses text, final output empty": (_slim_responses_stream, True),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REASONED))
def test_transport_judges_what_a_stream_holds(llm_server: FakeLLMServer, case: str) -> None:
    """Through the transport's watch: reasoning alone answers nothing (length_empty, as the
    same message whole is), text after it does; a chat stream's tool-call arguments are
    judged put together; a Responses stream's text deltas count when its final response
    lists no output."""
    _stream_through_transport(llm_server, *REASONED[case])


@pytest.mark.parametrize("case", list(REASONED))
def test_helpers_judge_what_a_stream_holds(llm_server: FakeLLMServer, case: str) -> None:
    """The same through the HTTP helpers' stream(): every event yielded, the same verdict."""
    make, answer = REASONED[case]
    llm_server.script(make())
    registry = BreakerRegistry()
    events = list(_facade(registry).stream(llm_server.url + "/v1/chat/completions", data={}))
    assert events
    assert _counts(registry) == ((1, 0, 0) if answer else (0, 0, 1))


def test_thinking_only_stream_judged_as_the_message_whole(llm_server: FakeLLMServer) -> None:
    """anthropic: a stream that only thought until max_tokens and the same message whole are
    both ignored (length_empty)."""
    whole = _message(
        [{"type": "thinking", "thinking": "Let me think", "signature": "s"}], "max_tokens"
    )
    llm_server.script(
        _message_events([("thinking", "Let me think")], "max_tokens"), Reply(json=whole)
    )
    registry = BreakerRegistry()
    client = anthropic.Anthropic(
        api_key="sk-test", base_url=llm_server.url, max_retries=0,
        http_client=httpx2.Client(transport=CircuitBreakerTransport("llm", registry=registry)),
    )  # fmt: skip
    with client.messages.stream(model="c", max_tokens=8, messages=MESSAGES) as stream:
        assert stream.get_final_message().stop_reason == "max_tokens"
    assert client.messages.create(model="c", max_tokens=8, messages=MESSAGES).content
    assert _counts(registry) == (0, 0, 2)


_BROKEN = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}


@pytest.mark.parametrize("indent", [None, 2])
def test_text_and_broken_tool_arguments_are_no_answer(
    llm_server: FakeLLMServer, indent: int | None
) -> None:
    """A completion with text, broken tool-call arguments and the finish reason "stop" is
    invalid_tool_arguments (ignored), not an answer the first byte search takes it for."""
    llm_server.script(
        _raw(_chat({"content": "Let me call", "tool_calls": [_BROKEN]}), indent=indent)
    )
    registry = BreakerRegistry()
    client = _openai(llm_server, CircuitBreakerTransport("llm", registry=registry))
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
    assert _counts(registry) == (0, 0, 1)


def test_responses_reasoning_without_a_message(llm_server: FakeLLMServer) -> None:
    """A completed Responses answer with a reasoning item (summary text) and no message is
    empty (ignored); with a message after the reasoning it is an answer."""
    from llm_circuit_breaker.testing._reply import _response

    reasoning = {"id": "rs_1", "type": "reasoning",
                 "summary": [{"type": "summary_text", "text": "Thinking about it"}]}  # fmt: skip
    thought = _response("x", "m", "completed")
    answered = _response("Paris", "m", "completed")
    thought["output"] = [reasoning]
    answered["output"] = [reasoning, *answered["output"]]
    llm_server.script(Reply(json=thought), Reply(json=answered))
    registry = BreakerRegistry()
    client = _openai(llm_server, CircuitBreakerTransport("llm", registry=registry))
    assert client.responses.create(model="m", input="hi").output_text == ""
    assert _counts(registry) == (0, 0, 1)
    assert client.responses.create(model="m", input="hi").output_text == "Paris"
    assert _counts(registry) == (1, 0, 1)


def _hostile_reason(api: str) -> Reply:
    """Text, then a finish (stop) reason that is no string."""
    if api == "chat":
        return _chat_events(_chunk({"content": "hi"}), _chunk({}, ["stop"]))
    return _message_events([("text", "Hi")], {"x": 1})


@pytest.mark.parametrize("api", ["chat", "anthropic"])
def test_a_probe_with_a_reason_of_another_type_reports(llm_server: FakeLLMServer, api: str) -> None:
    """A HALF_OPEN probe answered with text and a stop reason that is a dict (or a list) is
    read without an error and reported: the circuit closes, its probe slot is not kept."""
    llm_server.script(Reply.error(500), _hostile_reason(api), Reply.ok("fine"))
    clock = FakeClock()
    registry = BreakerRegistry(clock=clock)
    transport = CircuitBreakerTransport(
        "llm", registry=registry, failure_threshold=1, success_threshold=1, reset_timeout=10.0
    )
    client = httpx.Client(transport=transport)
    url = llm_server.url + "/v1/chat/completions"
    assert client.post(url, json={}).status_code == 500
    breaker = registry.get_or_create("llm")
    clock.advance(10.0)
    with client.stream("POST", url, json={}) as response:
        response.read()
    assert breaker.state is CircuitState.CLOSED
    assert client.post(url, json={}).status_code == 200
    assert _counts(registry) == (2, 1, 0)


@pytest.mark.parametrize("api", ["chat", "anthropic"])
def test_helpers_read_a_reason_of_another_type(llm_server: FakeLLMServer, api: str) -> None:
    """stream() of the same: every event, no TypeError, an answer (a success)."""
    reply = _hostile_reason(api)
    llm_server.script(reply)
    registry = BreakerRegistry()
    events = list(_facade(registry).stream(llm_server.url + "/v1/chat/completions", data={}))
    assert len(events) == len(reply.events or []) - (api == "chat")  # [DONE] is not yielded
    assert _counts(registry) == (1, 0, 0)


# -- call() of a streamed non-answer, as of a JSON one -----------------------------------------


def _broken_tool_stream() -> Reply:
    return REASONED["chat broken tool arguments"][0]()


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: _empty_chat_stream("stop"), "empty"),
        (_broken_tool_stream, "invalid_tool_arguments"),
    ],
    ids=["empty", "invalid_tool_arguments"],
)
def test_call_retries_a_streamed_non_answer(
    llm_server: FakeLLMServer, make: Any, kind: str
) -> None:
    """call() of a streamed empty answer (or broken tool arguments) is retried as a JSON one
    is; when the retries run out: InvalidResponseError(kind, the last events)."""
    llm_server.script(make(), make(), make())
    registry = BreakerRegistry()
    with pytest.raises(InvalidResponseError) as caught:
        _facade(registry).call(llm_server.url + "/v1/chat/completions", data={"stream": True})
    assert caught.value.kind == kind
    assert caught.value.response.non_answer == kind
    assert caught.value.response[-1].data["choices"][0]["finish_reason"] in ("stop", "tool_calls")
    assert llm_server.hits == 3
    assert _counts(registry) == (0, 0, 3)


def test_call_retries_a_streamed_non_answer_until_an_answer(llm_server: FakeLLMServer) -> None:
    """An empty stream, then an answer: the answer's events are returned (non_answer None)."""
    llm_server.script(_empty_chat_stream("stop"), Reply.chat("Hi", stream=True))
    registry = BreakerRegistry()
    events = _facade(registry).call(llm_server.url + "/v1/chat/completions", data={"stream": True})
    assert events.non_answer is None
    assert "".join(e.data["choices"][0]["delta"].get("content") or "" for e in events) == "Hi"
    assert _counts(registry) == (1, 0, 1)


def test_call_with_no_result_retry_returns_the_events(llm_server: FakeLLMServer) -> None:
    """retry_on_result=None: an empty stream's events are returned at once, as a JSON one."""
    llm_server.script(_empty_chat_stream("stop"))
    registry = BreakerRegistry()
    cb = LLMCircuitBreaker("llm", registry=registry, retry={"retry_on_result": None})
    events = cb.call(llm_server.url + "/v1/chat/completions", data={"stream": True})
    assert events.non_answer == "empty"
    assert llm_server.hits == 1


@pytest.mark.parametrize("stream", [True, False], ids=["events", "json"])
@pytest.mark.parametrize("on_content_policy", [True, False])
def test_fallbacks_move_on_after_a_filtered_answer(
    llm_server: FakeLLMServer, stream: bool, on_content_policy: bool
) -> None:
    """with_fallbacks(on_content_policy=True) around call(): a content-filtered answer, as
    events or as JSON, moves on to the next target; without it, the answer is returned."""
    filtered = (
        _filtered_chat_stream()
        if stream
        else Reply(json=_chat({"content": "Sure"}, "content_filter"))
    )
    llm_server.script(filtered, Reply.chat("ok", stream=True) if stream else Reply.ok("ok"))
    registry = BreakerRegistry()
    first, second = (
        LLMCircuitBreaker(name, registry=registry, retry={"max_retries": 0}) for name in "ab"
    )
    chain = with_fallbacks(first.call, second.call, on_content_policy=on_content_policy)
    result = chain(llm_server.url + "/v1/chat/completions", data={"stream": stream})
    last = result[-1].data["choices"][0] if stream else result["choices"][0]
    assert last["finish_reason"] == ("stop" if on_content_policy else "content_filter")
    assert llm_server.hits == (2 if on_content_policy else 1)


_JUDGED = {**{f"reasoned: {k}": v for k, v in REASONED.items()}, **STREAMS}


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from(sorted(_JUDGED)), cuts=st.lists(st.integers(1, 300), max_size=12))
def test_reads_cut_anywhere_get_the_same_verdict(case: str, cuts: list[int]) -> None:
    """The transport's watch gives a stream's verdict whatever its reads: cut anywhere, fed
    one event at a time or one byte at a time."""
    from llm_circuit_breaker.httpx._watch import Watch

    make, answer = _JUDGED[case]
    events = [e.encode() for e in make().events or []]
    body = b"".join(events)
    reads, at = [], 0
    for size in cuts:
        reads.append(body[at : at + size])
        at += size
    reads.append(body[at:])
    for chunks in (events, reads, [body[i : i + 1] for i in range(len(body))]):
        watch = Watch("http://x")
        assert [watch.feed(chunk) for chunk in chunks if chunk] == [None] * len(
            [c for c in chunks if c]
        )
        assert watch.truncated() is False
        assert watch.unanswered() is not answer


_ODD = [None, 1, 1.5, True, "x", "", [], ["stop"], {}, {"x": 1}, [{"a": 1}]]


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(
                    [*_ODD, "content_block_delta", "content_block_start", "message_delta",
                     "message_start", "message_stop", "response.completed",
                     "response.reasoning_text.delta", "response.output_text.delta"]
                ),
                "object": st.sampled_from(["chat.completion.chunk", *_ODD]),
                "delta": st.sampled_from(_ODD) | st.fixed_dictionaries(
                    {}, optional={k: st.sampled_from(_ODD) for k in
                                  ("type", "text", "thinking", "stop_reason", "content")}
                ),
                "choices": st.sampled_from(_ODD) | st.lists(
                    st.sampled_from(_ODD) | st.fixed_dictionaries(
                        {}, optional={
                            "index": st.sampled_from(_ODD),
                            "finish_reason": st.sampled_from(_ODD),
                            "delta": st.sampled_from(_ODD) | st.fixed_dictionaries(
                                {}, optional={k: st.sampled_from(_ODD) for k in
                                              ("content", "reasoning_content", "tool_calls",
                                               "function_call", "refusal")}
                            ),
                        }
                    ),
                    max_size=3,
                ),
                "response": st.sampled_from(_ODD),
            },
        ),
        max_size=6,
    )
)  # fmt: skip
@example(frames=[{"type": "content_block_delta", "delta": {"type": ["thinking_delta"]}}])
@example(
    frames=[
        {"type": "message_start"},
        {"type": "message_delta", "delta": {"stop_reason": {"x": 1}}},
        {"type": "message_stop"},
    ]
)
@example(
    frames=[
        {"object": "chat.completion.chunk", "choices": [{"delta": {}, "finish_reason": ["stop"]}]}
    ]
)
def test_frames_of_any_shape_are_judged_without_an_error(frames: list[dict[str, Any]]) -> None:
    """Frames whose fields have any JSON type (a reason that is a list, a delta type that is
    a dict ...): the checker follows them and gives a verdict, never an error."""
    from llm_circuit_breaker.http._sse import SSEEvent, StreamChecker

    checker = StreamChecker("http://x")
    for frame in frames:
        assert checker.error_in(SSEEvent("message", frame)) is None
    assert checker.non_answer() in (None, "empty", "length_empty", "content_filter",
                                    "invalid_tool_arguments")  # fmt: skip
