"""Fixtures shared by the whole suite: a fresh default registry per test and a fake clock."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from llm_circuit_breaker import breaker_registry
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer


@pytest.fixture(autouse=True)
def _fresh_default_registry() -> Iterator[None]:
    """Every test starts and ends with an empty process-wide registry."""
    breaker_registry.clear()
    yield
    breaker_registry.clear()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock(start=1000.0)


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    """A real fake-LLM HTTP server on 127.0.0.1, on a random port, scripted per test."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
