"""Hostile text and bodies meet redaction and judging: linear, bounded, never raising."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    HTTPStatusError,
    LLMCircuitBreaker,
    Outcome,
    RateLimitError,
    ServerError,
    _redact,
)
from llm_circuit_breaker._judge.kinds import parse_json
from llm_circuit_breaker._judge.verdict import judge
from llm_circuit_breaker._redact import (
    MAX_REDACTED_TEXT,
    REDACTED,
    redact_headers,
    redact_text,
    remember_secrets,
)
from llm_circuit_breaker.config import BreakerRules
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.httpx import CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeLLMServer, Reply

KB = 1024
# Texts on which a backtracking pattern goes cubic or quadratic: runs of a credential word
# between separators with no value after them, and a name followed by blanks and no value.
PATHOLOGICAL = [
    "key.",
    "a.key.",
    "x-api-key-",
    "token_",
    "sk-abcdefgh.key.",
    "key=",
    "key: ",
    '"key" : ',
    "bearer ",
    "://a:",
]


def _pathological(shape: str, size: int) -> Iterator[str]:
    yield (shape * (size // len(shape) + 1))[:size]
    yield "api_key=" + " " * size
    yield "api_key" + " " * size + "x"
    yield "Bearer" + " " * size + ","


@pytest.mark.parametrize("size", [2 * KB, 64 * KB])
@pytest.mark.parametrize("shape", PATHOLOGICAL)
def test_redaction_of_pathological_text_is_fast_and_bounded(shape: str, size: int) -> None:
    """Text shaped to make a regex backtrack is redacted in one pass and cut to a bounded size."""
    for text in _pathological(shape, size):
        started = time.perf_counter()
        out = redact_text(text)
        elapsed = time.perf_counter() - started
        assert len(out) <= 3 * MAX_REDACTED_TEXT  # masks are longer than short values
        assert elapsed < 2.0, (shape, size, elapsed)  # linear: ~1 ms; the cubic pattern took 6 s


def test_a_pathological_header_value_does_not_block_an_error() -> None:
    """A 500 whose header values are 64 KB of "key.key..." builds its error at once."""
    started = time.perf_counter()
    error = http_status_error(500, {"x-debug": "key." * (16 * KB), "x-api-key": "sk-secret123"})
    assert time.perf_counter() - started < 2.0
    assert len(error.headers["x-debug"]) <= 3 * MAX_REDACTED_TEXT
    assert error.headers["x-api-key"] == REDACTED


def test_secrets_are_masked_in_long_text_and_never_shown_cut_in_two() -> None:
    """Secrets before the cut are masked; one that straddles the cut is dropped, not half shown."""
    secret = "0123456789abcdef0123456789abcdef"  # an Azure-style key: known, not a shape
    remember_secrets({"api-key": secret})
    head = f"Authorization: Bearer sk-abcdefgh123 api_key=x {secret} "
    filler = "word " * ((MAX_REDACTED_TEXT - len(head) - 40) // 5)
    pad = "x" * (MAX_REDACTED_TEXT - len(head) - len(filler) - 21)
    text = head + filler + pad + " " + secret + " and more"
    assert text.index(secret, len(head)) == MAX_REDACTED_TEXT - 20  # cut in two by the limit
    out = redact_text(text)
    assert secret[:12] not in out
    assert out.startswith(f"Authorization: {REDACTED} api_key={REDACTED} {REDACTED} word")
    assert out.endswith(" ...")
    assert len(out) <= MAX_REDACTED_TEXT + 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer sk-abcdefgh123", f"Authorization: {REDACTED}"),
        ("https://u:p@host/x?api_key=zzz&b=1", f"https://{REDACTED}@host/x?api_key={REDACTED}&b=1"),
        ("my.api_key=abc monkey: banana", f"my.api_key={REDACTED} monkey: banana"),
        ("sk-abcdefgh123.api_key=hunter22", f"{REDACTED}.api_key={REDACTED}"),
        ('{"api_key": "secret"}', f'{{"api_key": "{REDACTED}"}}'),
        ("key.key.key=v signal=1", f"key.key.key={REDACTED} signal=1"),
        ("Incorrect API key provided: sk-xyz123456", f"Incorrect API key provided: {REDACTED}"),
    ],
)
def test_the_linear_patterns_mask_what_they_did(text: str, expected: str) -> None:
    """Credential pairs, bearer tokens, key shapes and URL credentials are masked as before."""
    assert redact_text(text) == expected


def test_remembering_secrets_from_many_threads_past_the_bound() -> None:
    """Threads sending distinct keys past the bound of 256 never raise, nor see each other's."""
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def tenant(number: int) -> None:
        start.wait()
        try:
            for i in range(600):
                key = f"tenant-{number}-key-{i:06d}"
                remember_secrets({"api-key": key, "Authorization": f"Bearer {key}"})
                redact_text(f"echo {key}")
                redact_headers({"api-key": key})
        except BaseException as exc:  # any escape is the failure under test
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
    try:
        threads = [threading.Thread(target=tenant, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(_redact._KNOWN) <= 256


# -- bodies nested too deep ------------------------------------------------------------------

DEEP = "[" * 100_000  # 100 KB: json's decoder recurses once per bracket
DEEP_VALID = "[" * 900 + "]" * 900  # parses, then breaks repr and str further down the stack


@pytest.mark.parametrize("body", [DEEP, DEEP_VALID, '{"error": ' + DEEP])
def test_a_deeply_nested_body_parses_as_text(body: str) -> None:
    """A body nested past 64 levels is kept as text: nothing that shows it can recurse."""
    assert parse_json(body) == body
    assert parse_json(body.encode()) == body
    assert parse_json('{"error": {"type": "x", "details": [[1]]}}')["error"]["type"] == "x"


@pytest.mark.parametrize(("status", "counted"), [(500, 1), (400, 0), (429, 0)])
def test_a_deeply_nested_error_body_through_the_transport(
    llm_server: FakeLLMServer, status: int, counted: int
) -> None:
    """The SDK gets the status; the attempt is reported and judged by its status."""
    llm_server.default = Reply(
        status=status, text=DEEP, headers={"Content-Type": "application/json"}
    )
    registry = BreakerRegistry()
    with httpx.Client(transport=CircuitBreakerTransport("deep", registry=registry)) as client:
        response = client.post(llm_server.url + "/v1/chat/completions", json={})
        assert response.status_code == status
    stats = registry.get("deep").stats
    assert stats.calls == 1
    assert stats.failures == counted
    assert stats.calls == stats.failures + stats.ignored + stats.throttled


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize(
    ("status", "error", "counted"),
    [(500, ServerError, 1), (400, HTTPStatusError, 0), (429, RateLimitError, 0)],
)
def test_a_deeply_nested_error_body_through_the_facade(
    llm_server: FakeLLMServer,
    driver: str,
    status: int,
    error: type[HTTPStatusError],
    counted: int,
) -> None:
    """The caller sees our error for the status, never RecursionError; 400 and 429 not counted."""
    for body in (DEEP, DEEP_VALID):
        llm_server.default = Reply(
            status=status, text=body, headers={"Content-Type": "application/json"}
        )
        cb = LLMCircuitBreaker(retry={"max_retries": 0})
        try:
            with pytest.raises(error) as caught:
                if driver == "sync":
                    cb.call(llm_server.url, data={})
                else:
                    asyncio.run(_acall(cb, llm_server.url))
            assert caught.value.status_code == status
            assert str(caught.value).startswith(f"HTTP {status}")
            assert cb.breaker.stats.failures == counted
        finally:
            cb.close()


async def _acall(cb: LLMCircuitBreaker, url: str) -> Any:
    try:
        return await cb.acall(url, data={})
    finally:
        await cb.aclose()


def test_a_deeply_nested_event_in_a_stream_is_yielded_as_text(llm_server: FakeLLMServer) -> None:
    """An SSE event whose data nests too deep is yielded as its text, the stream goes on."""
    llm_server.default = Reply(events=[f"data: {DEEP}\n\n", "data: [DONE]\n\n"])
    with LLMCircuitBreaker(retry={"max_retries": 0}) as cb:
        events = list(cb.stream(llm_server.url, data={}))
    assert [e.data for e in events] == [DEEP]


def test_judging_never_raises() -> None:
    """An error that breaks what judges it is a failure, not retried: the attempt is reported."""

    class Hostile(type):
        def __instancecheck__(cls, instance: object) -> bool:
            raise RecursionError("maximum recursion depth exceeded")

    class Excluded(Exception, metaclass=Hostile):
        pass

    verdict = judge(ValueError("x"), rules=BreakerRules(exclude=(Excluded,)))
    assert verdict.outcome is Outcome.FAILURE
    assert verdict.retry is False


def test_a_body_nested_too_deep_never_reaches_the_json_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decoder would recurse to the interpreter's limit (and a collector running there
    cannot even report what it finds): the depth is read first, without recursion."""
    from llm_circuit_breaker._judge import kinds

    def refuse(text: str) -> Any:
        raise AssertionError("json.loads was called")

    deep = '{"a": ' * 65 + "1" + "}" * 65
    monkeypatch.setattr(kinds.json, "loads", refuse)
    assert kinds.parse_json(deep) == deep
    assert kinds.parse_json("[" * 100_000) == "[" * 100_000
    monkeypatch.undo()
    quoted = {"a": "[" * 1_000, "b": [[[["{" * 100]]]]}  # brackets inside strings do not count
    assert kinds.parse_json(json.dumps(quoted)) == quoted


@pytest.mark.parametrize("size", [2 * KB, 64 * KB])
def test_an_unclosed_run_of_escaped_quotes_is_read_in_one_pass(size: int) -> None:
    """A body nested past the depth limit that ends in an unclosed string of escaped quotes
    (what a hostile 2xx answer can send the transport's judge): the depth check reads it in
    one pass (the string pattern rescanned it from every quote: 64 KiB took 12 s)."""
    body = '{"choices": ' + "[" * 65 + '"' + '\\"' * (size // 2)
    started = time.perf_counter()
    assert parse_json(body) == body  # no JSON: the text itself
    assert parse_json(body.encode()) == body
    assert time.perf_counter() - started < 2.0  # linear: ~1 ms
