"""Fixtures shared by the whole suite: a fresh default registry per test and a fake clock."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from llm_circuit_breaker import breaker_registry
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer


@pytest.fixture(autouse=True)
def _fresh_default_registry() -> Iterator[None]:
    """Every test starts and ends with an empty process-wide registry."""
    breaker_registry.clear()
    yield
    breaker_registry.clear()


@pytest.fixture(autouse=True)
def _no_tracing_left_on() -> Iterator[None]:
    """An OpenTelemetry instrumentation a test left on traces no later test's calls."""
    yield
    from llm_circuit_breaker.strategies import tracing

    hook = tracing.hook
    if hook is not None:
        for owner in list(hook.owners):
            owner.uninstrument()


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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port for the whole run (skipped loudly without the binary)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A sync client on a flushed database."""
    if redis_server.process is None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


# A Redis Cluster for the modules that use one (started once per module).
@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """Three primaries on free ports, for this module."""
    made = RedisCluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def flushed(cluster: RedisCluster) -> RedisCluster:
    """The cluster with every node emptied."""
    cluster.flush()
    return cluster
