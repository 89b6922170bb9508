"""Classification of real SDK and HTTP-client exceptions, built with the real packages."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import httpx
import httpx2
import openai
import pytest
import requests
from tenacity import Future, RetryError

from llm_circuit_breaker._judge.classify import ErrorKind, classify
from llm_circuit_breaker.errors import RequestTimeoutError, TransportError, http_status_error

URL = "https://api.example.test/v1/chat/completions"


def _response(
    status: int, headers: dict[str, str] | None = None, json: Any = None
) -> httpx2.Response:
    return httpx2.Response(status, headers=headers, json=json, request=httpx2.Request("POST", URL))


def _openai(
    cls: type[openai.APIStatusError], status: int, body: Any = None, **headers: str
) -> openai.APIStatusError:
    envelope = {"error": body} if body is not None else None
    inner = body if body is not None else None
    return cls("error", response=_response(status, headers, envelope), body=inner)


def _anthropic(status: int, error_type: str, **extra: Any) -> anthropic.APIStatusError:
    body = {"type": "error", "error": {"type": error_type, "message": "x", **extra}}
    return anthropic.APIStatusError("error", response=_response(status, json=body), body=body)


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (
            _openai(
                openai.RateLimitError, 429, {"type": "requests", "code": "rate_limit_exceeded"}
            ),
            ErrorKind.RATE_LIMIT,
            429,
        ),
        (
            _openai(
                openai.RateLimitError,
                429,
                {"type": "insufficient_quota", "code": "insufficient_quota"},
            ),
            ErrorKind.QUOTA,
            429,
        ),
        (
            _openai(openai.RateLimitError, 429, {"code": "credit_balance_exhausted"}),
            ErrorKind.QUOTA,
            429,
        ),
        (
            _openai(openai.RateLimitError, 429, {"code": "project_spend_limit_exceeded"}),
            ErrorKind.QUOTA,
            429,
        ),
        (_openai(openai.InternalServerError, 500), ErrorKind.SERVER, 500),
        (
            _openai(openai.InternalServerError, 503, {"code": "server_is_overloaded"}),
            ErrorKind.OVERLOADED,
            503,
        ),
        (
            _openai(
                openai.BadRequestError,
                400,
                {
                    "code": "context_length_exceeded",
                    "message": "This model's maximum context length is 8192 tokens",
                },
            ),
            ErrorKind.CONTEXT_LENGTH,
            400,
        ),
        (
            _openai(openai.BadRequestError, 400, {"code": "content_policy_violation"}),
            ErrorKind.CONTENT_POLICY,
            400,
        ),
        (_openai(openai.AuthenticationError, 401), ErrorKind.AUTH, 401),
        (_openai(openai.PermissionDeniedError, 403), ErrorKind.AUTH, 403),
        (_openai(openai.NotFoundError, 404, {"code": "model_not_found"}), ErrorKind.CLIENT, 404),
        (_openai(openai.ConflictError, 409), ErrorKind.CONFLICT, 409),
        (_openai(openai.UnprocessableEntityError, 422), ErrorKind.CLIENT, 422),
        (_anthropic(529, "overloaded_error"), ErrorKind.OVERLOADED, 529),
        (_anthropic(429, "rate_limit_error"), ErrorKind.RATE_LIMIT, 429),
        (
            _anthropic(
                429, "rate_limit_error", details={"error_code": "enforced_spend_limit_reached"}
            ),
            ErrorKind.QUOTA,
            429,
        ),
        (_anthropic(402, "billing_error"), ErrorKind.QUOTA, 402),
        (_anthropic(413, "request_too_large"), ErrorKind.CLIENT, 413),
        (
            _anthropic(
                400,
                "invalid_request_error",
                message="prompt is too long: 210000 tokens > 200000 maximum",
            ),
            ErrorKind.CONTEXT_LENGTH,
            400,
        ),
        # Anthropic's overload inside a 200 stream: status 200, classified by type as a 529.
        (_anthropic(200, "overloaded_error"), ErrorKind.OVERLOADED, 529),
        # OpenAI's in-stream error: APIError with no status, body = the inner error object.
        (
            openai.APIError(
                "boom", httpx2.Request("POST", URL), body={"message": "x", "type": "server_error"}
            ),
            ErrorKind.SERVER,
            500,
        ),
        (openai.APITimeoutError(request=httpx2.Request("POST", URL)), ErrorKind.TIMEOUT, None),
        (
            openai.APIConnectionError(request=httpx2.Request("POST", URL)),
            ErrorKind.CONNECTION,
            None,
        ),
        (httpx.ReadTimeout("slow"), ErrorKind.TIMEOUT, None),
        (httpx.ConnectError("refused"), ErrorKind.CONNECTION, None),
        (
            httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ),
            ErrorKind.CONNECTION,
            None,
        ),
        (httpx.PoolTimeout("pool"), ErrorKind.POOL, None),
        (requests.ConnectTimeout("x"), ErrorKind.TIMEOUT, None),
        (requests.ConnectionError("x"), ErrorKind.CONNECTION, None),
        (requests.exceptions.ChunkedEncodingError("x"), ErrorKind.CONNECTION, None),
        (aiohttp.ServerDisconnectedError(), ErrorKind.CONNECTION, None),
        (aiohttp.ClientPayloadError("truncated"), ErrorKind.CONNECTION, None),
        (asyncio.TimeoutError(), ErrorKind.TIMEOUT, None),
        (ConnectionResetError(), ErrorKind.CONNECTION, None),
        (RequestTimeoutError("slow"), ErrorKind.TIMEOUT, None),
        (TransportError("bad body"), ErrorKind.CONNECTION, None),
        (KeyError("bug"), ErrorKind.OTHER, None),
        (ValueError("bug"), ErrorKind.OTHER, None),
    ],
)
def test_kind_and_status(exc: BaseException, kind: ErrorKind, status: int | None) -> None:
    """Each exception shape maps to the provider-level kind and the status it stands for."""
    found = classify(exc)
    assert (found.kind, found.status) == (kind, status)


def test_httpx_status_error_uses_response() -> None:
    """httpx.HTTPStatusError has no status_code of its own: response.status_code is used."""
    request = httpx.Request("POST", URL)
    response = httpx.Response(503, headers={"Retry-After": "7"}, request=request)
    found = classify(httpx.HTTPStatusError("x", request=request, response=response))
    assert (found.kind, found.status, found.retry_after) == (ErrorKind.SERVER, 503, 7.0)


def test_requests_http_error_with_falsy_response() -> None:
    """requests' error responses are falsy; the status is still found."""
    response = requests.Response()
    response.status_code = 429
    response.headers["retry-after-ms"] = "1500"
    response._content = b'{"error": {"code": "rate_limit_exceeded"}}'
    assert not response
    found = classify(requests.HTTPError(response=response))
    assert (found.kind, found.status, found.retry_after) == (ErrorKind.RATE_LIMIT, 429, 1.5)


def test_aiohttp_client_response_error() -> None:
    """aiohttp's ClientResponseError carries .status and .headers (and no body)."""
    exc = aiohttp.ClientResponseError(None, (), status=429, headers={"Retry-After": "3"})  # type: ignore[arg-type]
    found = classify(exc)
    assert (found.kind, found.status, found.retry_after) == (ErrorKind.RATE_LIMIT, 429, 3.0)


def test_litellm_synthetic_status_is_ignored() -> None:
    """litellm's APIConnectionError carries a made-up 500: the class wins."""

    class APIConnectionError(Exception):
        status_code = 500

    assert classify(APIConnectionError()).kind is ErrorKind.CONNECTION


def test_cause_chain_is_walked() -> None:
    """An SDK connection error wrapping an httpx timeout is a timeout."""
    try:
        try:
            raise httpx.ReadTimeout("slow")
        except httpx.ReadTimeout as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert classify(outer).kind is ErrorKind.TIMEOUT


def test_tenacity_retry_error_is_unwrapped() -> None:
    """A tenacity RetryError (from someone else's retry loop) is classified by its last error."""
    future: Future = Future(attempt_number=3)
    future.set_exception(http_status_error(503))
    assert classify(RetryError(future)).status == 503


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"Retry-After": "0"}, None),
        ({"retry-after": "-10"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "abc"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "Fri, 29 Sep 100000 00:00:00 GMT"}, None),
        ({"retry-after-ms": "garbage", "retry-after": "3"}, 3.0),
    ],
)
def test_retry_hint_formats(headers: dict[str, str], expected: float | None) -> None:
    """Every hint format, and garbage ignored."""
    assert classify(http_status_error(429, headers)).retry_after == expected


def test_gemini_retry_info_and_daily_quota() -> None:
    """Gemini puts the wait in the body; a per-day quotaId is quota exhaustion."""

    class ClientError(Exception):
        def __init__(self, details: dict[str, Any]) -> None:
            self.code, self.details = 429, details

    def gemini(quota_id: str, delay: str) -> ClientError:
        return ClientError(
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [{"quotaId": quota_id}],
                        },
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                    ],
                }
            }
        )

    minute = classify(gemini("GenerateRequestsPerMinutePerProject", "3s"))
    assert (minute.kind, minute.retry_after) == (ErrorKind.RATE_LIMIT, 3.0)
    assert (
        classify(gemini("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "36000s")).kind
        is ErrorKind.QUOTA
    )


def test_wait_in_message_and_gateway_wrapped_429() -> None:
    """Groq's "try again in 5.289s"; a 5xx whose body says code 429 is a rate limit."""
    groq = http_status_error(
        429,
        {},
        {"error": {"message": "Please try again in 5.289s.", "code": "rate_limit_exceeded"}},
    )
    assert classify(groq).retry_after == pytest.approx(5.289)
    wrapped = classify(
        http_status_error(502, {}, {"error": {"code": 429, "message": "Resource exhausted"}})
    )
    assert (wrapped.kind, wrapped.status) == (ErrorKind.RATE_LIMIT, 502)


def test_html_429_from_a_proxy() -> None:
    """A 429 whose body is an HTML page classifies by status without crashing."""
    found = classify(
        http_status_error(429, {"content-type": "text/html"}, "<html><body>Too Many</body></html>")
    )
    assert (found.kind, found.status) == (ErrorKind.RATE_LIMIT, 429)


def test_should_retry_header() -> None:
    """x-should-retry: true|false is read; other values are not."""
    assert classify(http_status_error(503, {"x-should-retry": "false"})).should_retry is False
    assert classify(http_status_error(400, {"X-Should-Retry": "true"})).should_retry is True
    assert classify(http_status_error(400, {"x-should-retry": "yes"})).should_retry is None


def test_probing_never_raises() -> None:
    """Attributes that raise when read (httpx's .request) do not break classification."""

    class Nasty(Exception):
        @property
        def response(self) -> Any:
            raise RuntimeError("no request set")

        @property
        def status_code(self) -> Any:
            raise RuntimeError("boom")

    assert classify(Nasty()).kind is ErrorKind.OTHER
