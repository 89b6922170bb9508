"""The examples run as shipped, against the local fake server when no key is set."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer


@pytest.fixture
async def aiohttp_client_factory() -> AsyncIterator[
    Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
]:
    """Serve an aiohttp app on 127.0.0.1 and give a client for it."""
    clients: list[TestClient[Any, Any]] = []

    async def make(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("openai_chat.py", "answer: Paris."),
        ("anthropic_messages.py", "answer: Bonjour !"),
        ("streaming.py", "Once upon a time."),
    ],
)
def test_example_runs_offline(script: str, expected: str) -> None:
    """Each example prints its answer, having recovered from the scripted failures."""
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


async def test_health_endpoint_serves_the_snapshot(aiohttp_client_factory: Any) -> None:
    """The health example serves the snapshot; readiness stays 200 while a provider's circuit
    is open and lists it as degraded (a provider outage must not empty the load balancer)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import health_endpoint
    finally:
        sys.path.remove(str(EXAMPLES))
    client = await aiohttp_client_factory(health_endpoint.make_app())
    assert (await (await client.get("/ask?q=x")).json()) == {"answer": "echo: x"}
    healthy = await client.get("/health/breakers")
    assert healthy.status == 200
    assert (await healthy.json())["openai"]["state"] == "CLOSED"
    ready = await client.get("/health/ready")
    assert (ready.status, await ready.json()) == (200, {"status": "ok", "degraded": {}})
    health_endpoint.complete.breaker.force_open()
    ready = await client.get("/health/ready")
    assert ready.status == 200
    body = await ready.json()
    assert body["status"] == "degraded"
    assert body["degraded"]["openai"]["state"] == "OPEN"


def test_outage_benchmark_quick_mode() -> None:
    """benchmarks/outage.py runs end to end in a quick mode (no timing asserted)."""
    script = EXAMPLES.parent / "benchmarks" / "outage.py"
    done = subprocess.run(
        [sys.executable, str(script), "--duration", "3", "--callers", "3", "--no-plot"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| llm-circuit-breaker |" in done.stdout
