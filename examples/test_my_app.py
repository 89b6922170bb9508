"""Tests of examples/support_bot written as its team would, with the package's pytest plugin:
``fake_llm`` (a local OpenAI-compatible provider), ``llm_clock`` (no test sleeps) and
``llm_breakers`` (no circuit leaks from one test into the next)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from support_bot import BUSY, answer, make_client

from llm_circuit_breaker.testing import FakeLLMServer


@pytest.fixture
def client(fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[openai.OpenAI]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with make_client(fake_llm.openai_base_url) as client:
        yield client


def test_answers_while_the_provider_is_healthy(client: openai.OpenAI, llm_breakers) -> None:
    assert answer(client, "Hi") == "Hello!"


def test_busy_while_openai_is_down_then_recovers(
    client: openai.OpenAI, fake_llm: FakeLLMServer, llm_clock, llm_breakers
) -> None:
    fake_llm.outage(status=503)
    assert answer(client, "Hi") == BUSY  # three attempts, retried without sleeping
    assert answer(client, "Hi") == BUSY  # the circuit is open: nothing sent
    sent = len(fake_llm.requests)
    assert answer(client, "Hi") == BUSY
    assert len(fake_llm.requests) == sent
    fake_llm.healthy()
    llm_clock.advance(30)  # the reset timeout: the next call is a probe
    assert answer(client, "Hi") == "Hello!"


def test_no_circuit_leaks_from_the_test_before(client: openai.OpenAI, llm_breakers) -> None:
    """The previous test left the circuit open and paused nothing: ``llm_breakers`` reset it."""
    assert answer(client, "Hi") == "Hello!"
