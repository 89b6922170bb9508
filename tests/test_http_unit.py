"""Fast unit tests of the HTTP helpers with responses / aioresponses (no sockets)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import requests
import responses
from aioresponses import aioresponses

from llm_circuit_breaker import (
    CircuitState,
    HTTPStatusError,
    LLMCircuitBreaker,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    breaker_registry,
)

URL = "https://api.example.test/v1/chat/completions"
NO_RETRY = {"max_retries": 0}


class _MockedResponse(aiohttp.ClientResponse):
    """aiohttp 3.14 made ``stream_writer`` a required argument that aioresponses 0.7.9 does
    not pass yet (pnuckowski/aioresponses#289); a mocked response has no writer anyway."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


@responses.activate
def test_call_posts_json_and_returns_parsed_json() -> None:
    """Default POST, data sent as JSON, headers merged, parsed JSON returned."""
    responses.post(URL, json={"choices": [{"message": {"content": "hi"}}]})
    cb = LLMCircuitBreaker(name="openai", headers={"Authorization": "Bearer k"})
    result = cb.call(url=URL, headers={"X-Trace": "1"}, data={"model": "m", "messages": []})
    assert result["choices"][0]["message"]["content"] == "hi"
    sent = responses.calls[0].request
    assert json.loads(sent.body) == {"model": "m", "messages": []}
    assert sent.headers["Authorization"] == "Bearer k"
    assert sent.headers["X-Trace"] == "1"
    assert sent.headers["Content-Type"] == "application/json"


@responses.activate
@pytest.mark.parametrize(
    ("status", "cls"), [(429, RateLimitError), (503, ServerError), (400, HTTPStatusError)]
)
def test_error_statuses_map_to_our_errors(status: int, cls: type[HTTPStatusError]) -> None:
    """Status, headers, body and url travel on our error."""
    responses.post(
        URL,
        status=status,
        json={"error": {"type": "x", "message": "nope"}},
        headers={"retry-after": "7"},
    )
    with pytest.raises(cls) as caught:
        LLMCircuitBreaker(retry=NO_RETRY).call(URL, data={})
    error = caught.value
    assert (error.status_code, error.retry_after, error.url) == (status, 7.0, URL)
    assert error.body == {"error": {"type": "x", "message": "nope"}}
    assert error.error_type == "x"


@responses.activate
def test_non_json_200_is_a_clear_error() -> None:
    """A 200 whose body is not JSON raises TransportError naming the problem."""
    responses.post(URL, body="<html>oops</html>", status=200)
    with pytest.raises(TransportError, match="not valid JSON"):
        LLMCircuitBreaker(retry=NO_RETRY).call(URL, data={})


@responses.activate
def test_connection_error_keeps_the_cause() -> None:
    """requests' ConnectionError becomes TransportError, the original as __cause__."""
    responses.post(URL, body=requests.ConnectionError("refused"))
    with pytest.raises(TransportError) as caught:
        LLMCircuitBreaker(retry=NO_RETRY).call(URL, data={})
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


@responses.activate
def test_timeout_maps_to_request_timeout() -> None:
    """requests' Timeout becomes RequestTimeoutError (a TimeoutError too)."""
    responses.post(URL, body=requests.ReadTimeout("slow"))
    with pytest.raises(RequestTimeoutError) as caught:
        LLMCircuitBreaker(retry=NO_RETRY).call(URL, data={})
    assert isinstance(caught.value, TimeoutError)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": "api.openai.com/v1/chat"}, ValueError, "http"),
        ({"url": "ftp://x/y"}, ValueError, "http"),
        ({"url": URL, "data": {"x": object()}}, ValueError, "JSON"),
        ({"url": URL, "data": {"x": float("nan")}}, ValueError, "JSON"),
        ({"url": URL, "method": "FETCH"}, ValueError, "method"),
        ({"url": URL, "headers": {"X": 1}}, TypeError, "header"),
    ],
)
@responses.activate
def test_bad_input_fails_before_any_request(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """The caller's mistakes raise before sending, and never count against the provider."""
    cb = LLMCircuitBreaker(name="careful", circuit_breaker={"failure_threshold": 1})
    with pytest.raises(error, match=match):
        cb.call(**kwargs)
    assert len(responses.calls) == 0
    assert cb.get_state()["stats"]["calls"] == 0
    assert cb.breaker.state is CircuitState.CLOSED


def test_config_dicts_are_checked() -> None:
    """Unknown keys are TypeErrors (camelCase gets a hint); bad values ValueErrors."""
    with pytest.raises(
        TypeError, match="'failureThreshold' \\(did you mean 'failure_threshold'\\?\\)"
    ):
        LLMCircuitBreaker(circuit_breaker={"failureThreshold": 5})
    with pytest.raises(TypeError, match="'maxRetries' \\(did you mean 'max_retries'\\?\\)"):
        LLMCircuitBreaker(retry={"maxRetries": 3})
    with pytest.raises(ValueError, match="timeout"):
        LLMCircuitBreaker(circuit_breaker={"timeout": -1})
    with pytest.raises(ValueError, match="max_retries"):
        LLMCircuitBreaker(name="x", retry={"max_retries": -1})
    assert "x" not in breaker_registry


def test_named_facades_share_unnamed_do_not() -> None:
    """Same name: one breaker through the registry; no name: a unique breaker each."""
    a = LLMCircuitBreaker(
        name="openai", circuit_breaker={"failure_threshold": 5, "reset_timeout": 30.0}
    )
    b = LLMCircuitBreaker(name="openai")
    c, d = LLMCircuitBreaker(), LLMCircuitBreaker()
    assert a.breaker is b.breaker is breaker_registry.get("openai")
    assert c.breaker is not d.breaker
    assert c.get_state()["name"] != d.get_state()["name"]
    assert c.get_state()["name"] in breaker_registry
    assert set(a.get_state()) >= {"state", "failure_count", "success_count", "retry_after", "stats"}


async def test_acall_with_aioresponses() -> None:
    """acall sends JSON through aiohttp and maps statuses and timeouts."""
    cb = LLMCircuitBreaker(retry=NO_RETRY)
    try:
        with aioresponses() as mocked:
            mocked.post(URL, payload={"ok": True}, response_class=_MockedResponse)
            mocked.post(
                URL,
                status=529,
                payload={"type": "error", "error": {"type": "overloaded_error"}},
                response_class=_MockedResponse,
            )
            mocked.post(URL, exception=TimeoutError())
            mocked.post(URL, exception=aiohttp.ClientConnectionError("reset"))
            assert await cb.acall(url=URL, data={"q": 1}) == {"ok": True}
            with pytest.raises(ServerError) as caught:
                await cb.acall(url=URL, data={})
            assert caught.value.status_code == 529
            with pytest.raises(RequestTimeoutError):
                await cb.acall(url=URL, data={})
            with pytest.raises(TransportError):
                await cb.acall(url=URL, data={})
    finally:
        await cb.aclose()
