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
    """The health example answers 200 with the snapshot, and 503 while a circuit is open."""
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
    health_endpoint.complete.breaker.force_open()
    assert (await client.get("/health/breakers")).status == 503


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
