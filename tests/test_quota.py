"""Concurrent callers against a real quota: the fake server enforces a continuously refilling
bucket (``testing.Quota``) and answers 429s with the true wait, on real time.

What is asserted holds on a machine of any speed: the server refuses whatever goes over its
bucket, so a slow machine only sends fewer requests. Every caller's wait fits
``throttle_max_wait`` (8 callers on 10 requests a second wait under a second), so no caller
may see an error, and the circuit never opens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitState,
    LLMCircuitBreaker,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport
from llm_circuit_breaker.testing import FakeLLMServer, Quota, Reply

CALLERS = 8
ANSWERS = 640  # the bucket's 600 at once, then 40 at the refill rate: about 4 s
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class Provider:
    """A fake provider behind a quota of 600 requests per minute (10 a second)."""

    def __init__(self) -> None:
        self.quota = Quota(600, 60.0)
        self.server = FakeLLMServer(responder=self._reply)

    def _reply(self, _number: int) -> Reply:
        return self.quota.reply()


@pytest.fixture
def provider() -> Iterator[Provider]:
    provider = Provider()
    with provider.server:
        yield provider


async def _until_answered(call: Callable[[], Awaitable[Any]]) -> list[BaseException]:
    """``CALLERS`` callers call back to back until ``ANSWERS`` calls were answered; the errors
    they saw."""
    answered = 0
    errors: list[BaseException] = []

    async def caller() -> None:
        nonlocal answered
        while answered < ANSWERS:
            try:
                await call()
            except Exception as exc:
                errors.append(exc)
                return
            answered += 1

    await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(CALLERS))), 60)
    return errors


def _never_failed(breaker: CircuitBreaker) -> None:
    """The rate limit was never taken for an outage: no failure, no state change."""
    stats = breaker.stats
    assert (stats.failures, sum(stats.state_changes.values()), stats.rejections) == (0, 0, 0)
    assert breaker.state is CircuitState.CLOSED


def _sdk(provider: Provider, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=provider.server.url + "/v1", **kwargs)


async def test_the_http_helper_paces_from_every_answers_headers(provider: Provider) -> None:
    """Headers visible: the throttle models the bucket, so only calls already in flight when it
    ran dry draw a 429 (at most one per caller); unpaced, 8 callers would draw dozens a second."""
    helper = LLMCircuitBreaker(name="quota-helper", registry=BreakerRegistry())
    url = provider.server.url + "/v1/chat/completions"
    try:
        errors = await _until_answered(lambda: helper.acall(url, data=BODY))
    finally:
        await helper.aclose()
    assert errors == []
    assert provider.quota.granted >= ANSWERS
    # At most the calls already in flight when the bucket ran dry; none once paced.
    assert provider.quota.refused <= CALLERS
    _never_failed(helper.breaker)


async def test_the_transport_paces_an_unchanged_sdk(provider: Provider) -> None:
    """The openai SDK with its default retries over the transport: paced from every answer."""
    registry = BreakerRegistry()
    transport = AsyncCircuitBreakerTransport("quota-transport", registry=registry)
    client = _sdk(provider, http_client=httpx.AsyncClient(transport=transport))
    async with client:
        errors = await _until_answered(lambda: client.chat.completions.create(**BODY))
    assert errors == []
    assert provider.quota.refused <= CALLERS
    _never_failed(registry.get("quota-transport"))


async def test_decorators_alone_learn_the_bucket_from_its_429s(provider: Provider) -> None:
    """Decorators see only the 429s (and their headers): callers still get every answer, none
    an error, and the circuit stays CLOSED; after the first 429s the calls are paced."""
    registry = BreakerRegistry()
    client = _sdk(provider, max_retries=0)

    @with_retry(max_retries=3)
    @circuit_breaker("quota-decorated", registry=registry)
    async def ask() -> Any:
        return await client.chat.completions.create(**BODY)

    async with client:
        errors = await _until_answered(ask)
    assert errors == []
    # The in-flight calls at the edge, and a few more while a 429's headers are learned.
    assert provider.quota.refused <= 2 * CALLERS
    _never_failed(registry.get("quota-decorated"))
