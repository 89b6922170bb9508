"""Answers that are no answers: the predicates over real SDK objects and dicts, with_retry's
result retries, and with_fallbacks(on_content_policy=True)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitState,
    FallbacksExhaustedError,
    InvalidResponseError,
    LLMCircuitBreakerError,
    circuit_breaker,
    results,
    with_fallbacks,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

# -- shapes ---------------------------------------------------------------------------------


def chat(
    content: Any = "Hello!",
    finish_reason: str = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    **message: Any,
) -> dict[str, Any]:
    """A Chat Completions response as the API sends it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": tool_calls,
                    **message,
                },
            }
        ],
    }


def tool_call(arguments: str) -> dict[str, Any]:
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


def response(
    output: list[dict[str, Any]], status: str = "completed", reason: str | None = None
) -> dict[str, Any]:
    """A Responses API response."""
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-5",
        "status": status,
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def text_item(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


REASONING = {"type": "reasoning", "id": "rs_1", "summary": []}


def function_item(arguments: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": arguments,
    }


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn") -> dict[str, Any]:
    """An Anthropic Messages response."""
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


TEXT = {"type": "text", "text": "Hello!"}
THINKING = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}

# (the dict the API sends, the SDK class it parses into, the kind expected)
CASES: list[tuple[str, dict[str, Any], Any, str | None]] = [
    ("chat answer", chat(), ChatCompletion, None),
    ("chat empty string", chat(""), ChatCompletion, "empty"),
    ("chat null content", chat(None), ChatCompletion, "empty"),
    ("chat whitespace", chat(" \n"), ChatCompletion, "empty"),
    ("chat length, no text", chat(None, "length"), ChatCompletion, "length_empty"),
    ("chat length with text", chat("Hel", "length"), ChatCompletion, None),
    ("chat filtered", chat(None, "content_filter"), ChatCompletion, "content_filter"),
    ("chat filtered part-way", chat("Hi", "content_filter"), ChatCompletion, "content_filter"),
    (
        "chat tool call",
        chat(None, "tool_calls", [tool_call('{"city": "Oslo"}')]),
        ChatCompletion,
        None,
    ),
    (
        "chat tool call, no arguments",
        chat(None, "tool_calls", [tool_call("")]),
        ChatCompletion,
        None,
    ),
    (
        "chat broken tool arguments",
        chat(None, "tool_calls", [tool_call('{"city": "Os')]),
        ChatCompletion,
        "invalid_tool_arguments",
    ),
    (
        "chat second tool call broken",
        chat(None, "tool_calls", [tool_call("{}"), tool_call("{'city': 'Oslo'}")]),
        ChatCompletion,
        "invalid_tool_arguments",
    ),
    ("chat refusal", chat(None, refusal="I can't help with that."), ChatCompletion, None),
    ("responses answer", response([REASONING, text_item("Hi")]), Response, None),
    ("responses empty", response([REASONING]), Response, "empty"),
    ("responses blank text", response([text_item("")]), Response, "empty"),
    (
        "responses budget spent",
        response([REASONING], "incomplete", "max_output_tokens"),
        Response,
        "length_empty",
    ),
    (
        "responses filtered",
        response([text_item("Hi")], "incomplete", "content_filter"),
        Response,
        "content_filter",
    ),
    ("responses function call", response([function_item('{"a": 1}')]), Response, None),
    (
        "responses broken function call",
        response([function_item("{a: 1}")]),
        Response,
        "invalid_tool_arguments",
    ),
    ("messages answer", message([THINKING, TEXT]), Message, None),
    ("messages empty", message([]), Message, "empty"),
    ("messages only thinking", message([THINKING]), Message, "empty"),
    ("messages budget spent", message([THINKING], "max_tokens"), Message, "length_empty"),
    ("messages refusal", message([], "refusal"), Message, "content_filter"),
    ("messages tool use", message([TOOL_USE], "tool_use"), Message, None),
]

PREDICATES = {
    "empty": results.empty,
    "length_empty": results.length_empty,
    "content_filter": results.content_filter,
    "invalid_tool_arguments": results.invalid_tool_arguments,
}


@pytest.mark.parametrize(("name", "body", "model", "kind"), CASES, ids=[c[0] for c in CASES])
def test_each_shape_is_judged_alike_as_sdk_object_and_dict(
    name: str, body: dict[str, Any], model: Any, kind: str | None
) -> None:
    """The SDK's object and its dict get the same verdict; exactly one predicate holds for a
    non-answer, none for an answer."""
    parsed = model.model_validate(body)
    for shape in (body, parsed, parsed.model_dump()):
        assert results.non_answer(shape) == kind, (name, type(shape))
        for predicate_kind, predicate in PREDICATES.items():
            assert predicate(shape) is (predicate_kind == kind), (name, predicate_kind)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "text",
        b"",
        0,
        [],
        {},
        {"choices": "x"},
        {"choices": [{"poll": 1}]},  # a list called choices is not a completion by itself
        {"object": "response", "status": "failed", "output": []},  # an error, not an answer
        {"object": "response", "status": "in_progress", "output": []},
        object(),
        iter([]),
    ],
)
def test_what_is_not_a_finished_completion_is_no_non_answer(value: Any) -> None:
    """Strings, streams, other objects, and responses without an end are not judged."""
    assert results.non_answer(value) is None
    assert not any(p(value) for p in PREDICATES.values())


def test_choices_without_the_object_marker_are_judged() -> None:
    """A compatible server's completion without ``object`` is still recognised by its
    choices (a message and a finish reason each)."""
    body = chat("")
    del body["object"]
    assert results.empty(body)


def test_a_completion_answers_when_any_of_its_choices_does() -> None:
    """n > 1: one empty choice beside an answer is still an answer."""
    body = chat("")
    body["choices"].append({**body["choices"][0], "index": 1, "message": {"content": "Hi"}})
    assert results.non_answer(body) is None
    body["choices"][1]["message"]["content"] = None
    assert results.empty(body)


def test_a_hostile_object_never_raises() -> None:
    """Attributes that raise, lists that lie: no verdict, no exception."""

    class Hostile:
        @property
        def object(self) -> str:
            raise RuntimeError("boom")

        def __getattr__(self, name: str) -> Any:
            raise ValueError(name)

    assert results.non_answer(Hostile()) is None
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    body = chat(None, "tool_calls", [tool_call("[" * 100_000)])
    assert results.invalid_tool_arguments(body)
    assert results.non_answer({"object": "chat.completion", "choices": deep}) in (None, "empty")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=40,
)
KEYS = st.sampled_from(
    [
        "object", "choices", "message", "content", "finish_reason", "tool_calls", "function",
        "arguments", "text", "refusal", "output", "status", "incomplete_details", "reason",
        "type", "stop_reason", "input", "function_call",
    ]
)  # fmt: skip
VALUES = st.sampled_from(
    [
        "chat.completion", "response", "message", "text", "tool_use", "function_call",
        "length", "content_filter", "refusal", "max_tokens", "completed", "incomplete", "{",
    ]
)  # fmt: skip
SHAPED = st.recursive(
    st.none() | VALUES | st.text(max_size=5) | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON | SHAPED)
def test_predicates_never_raise_on_any_json(value: Any) -> None:
    """Arbitrary nested JSON (and JSON shaped like completions) never makes a predicate
    raise; the verdict is one of the kinds or None."""
    kind = results.non_answer(value)
    assert kind in (None, *PREDICATES)
    for predicate in PREDICATES.values():
        assert isinstance(predicate(value), bool)


@settings(max_examples=300, deadline=None)
@given(JSON | SHAPED | st.sampled_from([c[1] for c in CASES]))
def test_the_quick_look_at_an_answer_agrees_with_the_full_judgement(value: Any) -> None:
    """What the quick look at a chat answer accepts, the full walk judges an answer too."""
    from llm_circuit_breaker._judge.results import _answers, _judge

    try:
        quick = _answers(value)
    except Exception:
        quick = False
    if quick:
        assert _judge(value) is None


# -- InvalidResponseError -------------------------------------------------------------------


def test_invalid_response_error_shows_neither_body_nor_secrets() -> None:
    """The message names the kind; the response stays an attribute, out of str and repr."""
    body = chat("", api_key="sk-secret-0123456789abcdef")
    error = InvalidResponseError("empty", body)
    assert isinstance(error, LLMCircuitBreakerError)
    assert error.kind == "empty"
    assert error.response is body
    for text in (str(error), repr(error)):
        assert "sk-secret" not in text
        assert "chatcmpl" not in text
        assert len(text) < 120
    assert "no text and no tool call" in str(error)
    assert repr(error) == "InvalidResponseError(kind='empty', response=<dict>)"
    again = pickle.loads(pickle.dumps(error))
    assert (again.kind, again.response) == ("empty", body)


# -- with_retry -----------------------------------------------------------------------------


def scripted(*answers: Any) -> Any:
    """A function returning ``answers`` in turn, counting its calls."""
    queue = list(answers)

    def call() -> Any:
        call.calls += 1  # type: ignore[attr-defined]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    call.calls = 0  # type: ignore[attr-defined]
    return call


def test_with_retry_retries_an_empty_answer_then_returns_the_good_one() -> None:
    """An empty completion is retried (with the backoff); the next answer is returned."""
    sleeps: list[float] = []
    func = scripted(ChatCompletion.model_validate(chat("")), ChatCompletion.model_validate(chat()))
    retried = with_retry(max_retries=2, sleep=sleeps.append, jitter=False)(func)
    answer = retried()
    assert answer.choices[0].message.content == "Hello!"
    assert func.calls == 2
    assert sleeps == [1.0]


def test_with_retry_raises_invalid_response_error_when_retries_run_out() -> None:
    """Broken tool arguments every time: InvalidResponseError with the kind and the last
    response after max_retries + 1 attempts."""
    last = chat(None, "tool_calls", [tool_call("{")])
    func = scripted(chat(None, "tool_calls", [tool_call("{")]), last)
    retried = with_retry(max_retries=2, sleep=lambda s: None)(func)
    with pytest.raises(InvalidResponseError) as raised:
        retried()
    assert raised.value.kind == "invalid_tool_arguments"
    assert raised.value.response is last
    assert func.calls == 3


@pytest.mark.parametrize(
    "body",
    [chat(None, "length"), chat(None, "content_filter"), message([], "refusal"), chat()],
    ids=["length_empty", "content_filter", "refusal", "answer"],
)
def test_with_retry_returns_what_another_attempt_would_not_change(body: dict[str, Any]) -> None:
    """A spent budget, a filtered answer and a real answer are returned as they are."""
    func = scripted(body)
    assert with_retry(max_retries=3, sleep=lambda s: None)(func)() is body
    assert func.calls == 1


def test_retry_on_result_replaces_the_default() -> None:
    """retry_on_result=fn retries while fn(result) is true (None included as a result);
    None turns result retries off."""
    func = scripted(None, None, "done")
    assert with_retry(retry_on_result=lambda r: r is None, sleep=lambda s: None)(func)() == "done"
    assert func.calls == 3

    func = scripted(None)
    with pytest.raises(InvalidResponseError) as raised:
        with_retry(max_retries=1, retry_on_result=lambda r: r is None, sleep=lambda s: None)(func)()
    assert raised.value.kind == "retry_on_result"
    assert raised.value.response is None

    empty = chat("")
    func = scripted(empty)
    assert with_retry(retry_on_result=None)(func)() is empty
    with pytest.raises(TypeError, match="retry_on_result"):
        with_retry(retry_on_result="empty")  # type: ignore[call-overload]


async def test_with_retry_judges_coroutine_results() -> None:
    """A coroutine function's results are judged like a plain function's."""
    answers = [message([]), message([TEXT])]
    calls = 0

    async def sleep(seconds: float) -> None:
        pass

    @with_retry(max_retries=2, async_sleep=sleep)
    async def ask() -> Any:
        nonlocal calls
        calls += 1
        return Message.model_validate(answers.pop(0))

    assert (await ask()).content[0].text == "Hello!"
    assert calls == 2


def test_generator_items_are_not_judged() -> None:
    """Streams are items, not answers: an empty-looking chunk is yielded as it is."""

    @with_retry(retry_on_result=lambda r: True, sleep=lambda s: None)
    def stream() -> Any:
        yield chat("")

    assert list(stream()) == [chat("")]


def test_the_breaker_under_with_retry_does_not_count_non_answers(clock: FakeClock) -> None:
    """Empty answers are retried and raised, yet the circuit under the retries stays CLOSED:
    the breaker ignores them (SPEC §17), no failure and no success counted: they are not
    outages, nor proof of health."""
    registry = BreakerRegistry(clock=clock)

    @with_retry(max_retries=4, sleep=lambda s: None)
    @circuit_breaker("openai", registry=registry, failure_threshold=2)
    def ask() -> dict[str, Any]:
        return chat("")

    with pytest.raises(InvalidResponseError):
        ask()
    breaker = registry.get("openai")
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats.failures == 0
    assert (breaker.stats.successes, breaker.stats.ignored) == (0, 5)


def test_real_sdk_calls_against_the_fake_server() -> None:
    """The openai and anthropic SDKs, pointed at FakeLLMServer: an empty answer is retried
    over HTTP and the good one returned; an Anthropic refusal is returned as it is."""
    with FakeLLMServer() as server:
        server.script(Reply(json=chat("")), Reply(json=chat("Hi there")))
        client = openai.OpenAI(api_key="sk-test", base_url=server.openai_base_url, max_retries=0)

        @with_retry(max_retries=2, sleep=lambda s: None)
        def ask() -> Any:
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )

        assert ask().choices[0].message.content == "Hi there"
        assert server.hits == 2

        server.script(Reply(json=message([], "refusal")))
        claude = anthropic.Anthropic(
            api_key="sk-ant-test", base_url=server.anthropic_base_url, max_retries=0
        )

        @with_retry(max_retries=2, sleep=lambda s: None)
        def ask_claude() -> Any:
            return claude.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi"}],
            )

        answer = ask_claude()
        assert results.content_filter(answer)
        assert server.hits == 3


# -- with_fallbacks(on_content_policy=True) -------------------------------------------------


def test_fallbacks_move_on_after_a_content_filter_answer_only_when_asked() -> None:
    """A content-filter stop is an answer for the default chain, a refusal to move on from
    with on_content_policy=True."""
    filtered = chat(None, "content_filter")

    def primary() -> dict[str, Any]:
        return copy.deepcopy(filtered)

    def secondary() -> dict[str, Any]:
        return chat("from the other provider")

    assert with_fallbacks(primary, secondary)() == filtered
    chain = with_fallbacks(primary, secondary, on_content_policy=True)
    assert chain()["choices"][0]["message"]["content"] == "from the other provider"
    stats = list(chain.fallback_stats.values())  # type: ignore[attr-defined]
    assert (stats[0].failed, stats[1].served) == (1, 1)


async def test_fallbacks_move_on_after_a_content_policy_error() -> None:
    """A 400 content-policy error is the caller's fault by default, a reason to move on with
    on_content_policy=True; when every target refuses, the last refusal is in the group."""
    policy = http_status_error(
        400, None, {"error": {"code": "content_policy_violation", "message": "no"}}
    )

    async def primary() -> str:
        raise policy

    async def secondary() -> dict[str, Any]:
        return message([], "refusal")

    with pytest.raises(type(policy)):
        await with_fallbacks(primary, secondary)()
    with pytest.raises(FallbacksExhaustedError) as exhausted:
        await with_fallbacks(primary, secondary, on_content_policy=True)()
    first, second = exhausted.value.errors
    assert first is policy
    assert isinstance(second, InvalidResponseError) and second.kind == "content_filter"


def test_fallbacks_move_on_from_a_retried_content_filter() -> None:
    """An InvalidResponseError("content_filter") from a target's own retries moves the chain
    on too, with on_content_policy=True."""

    @with_retry(max_retries=1, retry_on_result=results.content_filter, sleep=lambda s: None)
    def primary() -> dict[str, Any]:
        return chat(None, "content_filter")

    def secondary() -> str:
        return "ok"

    assert with_fallbacks(primary, secondary, on_content_policy=True)() == "ok"
    with pytest.raises(InvalidResponseError):
        with_fallbacks(primary, secondary)()


def test_the_http_helper_retries_an_empty_completion() -> None:
    """LLMCircuitBreaker's retries judge the parsed answer too: an empty completion is asked
    again; one that stays empty ends in InvalidResponseError."""
    from llm_circuit_breaker import LLMCircuitBreaker

    with (
        FakeLLMServer() as server,
        LLMCircuitBreaker(
            name="helper", retry={"max_retries": 1, "initial_delay": 0.001}
        ) as helper,
    ):
        url = server.openai_base_url + "/chat/completions"
        server.script(Reply(json=chat("")), Reply(json=chat("Hi there")))
        answer = helper.call(url, data={"model": "gpt-4o-mini", "messages": []})
        assert answer["choices"][0]["message"]["content"] == "Hi there"
        server.script(Reply(json=chat("")), Reply(json=chat(" ")))
        with pytest.raises(InvalidResponseError) as raised:
            helper.call(url, data={"model": "gpt-4o-mini", "messages": []})
        assert raised.value.kind == "empty"
        assert server.hits == 4
        assert helper.breaker.stats.failures == 0


@pytest.mark.parametrize("kind", ["sync", "async", "scoped sync", "scoped async"])
@pytest.mark.parametrize(
    "answer",
    [chat(""), chat("   "), "object"],
    ids=["empty dict", "blank dict", "sdk object"],
)
def test_every_decorated_shape_ignores_a_non_answer(kind: str, answer: Any) -> None:
    """SPEC §17: a decorated function that returns a completion that is no answer (a dict or
    the SDK's object) is ignored by its breaker, neither success nor failure; an answer and
    anything that is no completion are successes."""
    import asyncio

    import openai

    if isinstance(answer, str):  # the SDK's object of an empty answer
        answer = openai.types.chat.ChatCompletion.model_validate(chat(""))
    registry = BreakerRegistry()
    results = [answer, chat("hi"), 1, {"no": "completion"}]
    name = "judged:{model}" if kind.startswith("scoped") else "judged"

    if kind.endswith("async"):

        @circuit_breaker(name, registry=registry)
        async def acall(result: Any, model: str = "m") -> Any:
            return result

        for result in results:
            assert asyncio.run(acall(result)) is result
    else:

        @circuit_breaker(name, registry=registry)
        def call(result: Any, model: str = "m") -> Any:
            return result

        for result in results:
            assert call(result) is result
    stats = registry.get("judged:m" if kind.startswith("scoped") else "judged").stats
    assert (stats.calls, stats.successes, stats.ignored, stats.failures) == (4, 3, 1, 0)
