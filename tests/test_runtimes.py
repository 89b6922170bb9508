"""Every runtime Python services use: asyncio (uvloop included), trio and anyio on either
backend run the async decorators, with_retry, the throttle's waits, call_timeout and the
async transport with cooperative waits; gevent (patched after the package was imported) too;
each runtime's cancellation is ignored by the breaker, never counted as a failure."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
import uvloop

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    LLMCircuitBreaker,
    Outcome,
    breaker_registry,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport

RUNTIMES = ["asyncio", "uvloop", "trio", "anyio-asyncio", "anyio-trio"]


def run(runtime: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main`` to its end under ``runtime`` (the test bodies use anyio's neutral calls)."""
    if runtime == "asyncio":
        return asyncio.run(main())  # type: ignore[arg-type]
    if runtime == "uvloop":
        return uvloop.run(main())  # type: ignore[arg-type]
    if runtime == "trio":
        return trio.run(main)
    return anyio.run(main, backend=runtime.partition("-")[2])


def paused(breaker: CircuitBreaker, seconds: float) -> None:
    """A rate limit told ``breaker`` to pause ``seconds`` (the next admission waits)."""
    breaker.record(breaker.admit(), Outcome.THROTTLED, hint=seconds)


async def meanwhile(wait: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
    """``wait()``'s result, and whether another task ran while it waited (a cooperative wait
    lets it; a blocking one would not until the wait is over)."""
    ran = anyio.Event()
    result: list[Any] = []

    async def waiter() -> None:
        result.append(await wait())
        result.append(ran.is_set())

    async def other() -> None:
        ran.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        group.start_soon(other)
    return result[0], result[1]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_throttle_wait_is_cooperative(runtime: str) -> None:
    """A call that waits for its throttle slot sleeps in the running library."""
    breaker = CircuitBreaker(f"paced-{runtime}")

    @circuit_breaker(breaker=breaker)
    async def ask() -> str:
        return "ok"

    async def main() -> tuple[Any, bool]:
        paused(breaker, 0.05)
        return await meanwhile(ask)

    assert run(runtime, main) == ("ok", True)
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_retry_backoff_is_cooperative(runtime: str) -> None:
    """with_retry's first retry sleeps in the running library (tenacity's loop, our wait)."""
    calls: list[int] = []

    @with_retry(max_retries=2, initial_delay=0.05, jitter=False)
    @circuit_breaker(f"retried-{runtime}")
    async def ask() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise http_status_error(503)
        return "ok"

    async def main() -> tuple[Any, bool]:
        return await meanwhile(ask)

    assert run(runtime, main) == ("ok", True)
    assert len(calls) == 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_call_timeout_times_out_in_the_running_library(runtime: str) -> None:
    """call_timeout raises the built-in TimeoutError, counted as a failure, under each."""

    @circuit_breaker(f"timed-{runtime}", call_timeout=0.05)
    async def slow() -> None:
        await anyio.sleep(30)

    async def main() -> None:
        with pytest.raises(TimeoutError, match="call_timeout"):
            await slow()

    run(runtime, main)
    assert slow.breaker.stats.failures == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_call_timeout_bounds_each_item_of_an_async_generator(runtime: str) -> None:
    """An async generator's items are each bounded; the items that came in time arrive."""

    @circuit_breaker(f"items-{runtime}", call_timeout=0.5)
    async def tokens() -> Any:
        yield "a"
        await anyio.sleep(30)
        yield "b"

    async def main() -> list[str]:
        got: list[str] = []
        with pytest.raises(TimeoutError):
            async for item in tokens():
                got.append(item)
        return got

    assert run(runtime, main) == ["a"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cancellation_counts_nothing(runtime: str) -> None:
    """Five calls cancelled by the runtime (move_on_after) leave the circuit CLOSED and clean."""

    @with_retry(max_retries=3)
    @circuit_breaker(f"cancelled-{runtime}", failure_threshold=2)
    async def slow() -> None:
        await anyio.sleep(30)

    async def main() -> None:
        for _ in range(5):
            with anyio.move_on_after(0.01):
                await slow()

    run(runtime, main)
    stats = slow.breaker.stats
    assert slow.breaker.state is CircuitState.CLOSED
    assert (stats.failures, stats.ignored, stats.retries) == (0, 5, 0)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cancelled_throttle_wait_frees_its_slot(runtime: str) -> None:
    """A call cancelled while it waits for its slot gives the slot back and counts nothing."""
    breaker = CircuitBreaker(f"waiting-{runtime}", CircuitBreakerConfig(failure_threshold=1))

    @circuit_breaker(breaker=breaker)
    async def ask() -> str:
        return "ok"

    async def main() -> None:
        paused(breaker, 10.0)
        with anyio.move_on_after(0.01):
            await ask()

    run(runtime, main)
    assert breaker.throttle["waiting"] == 0
    assert breaker.stats.failures == 0
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_async_transport_waits_in_the_running_library(runtime: str) -> None:
    """httpx.AsyncClient over the async transport: its throttle wait and its report work."""
    served: list[str] = []

    async def provider(request: httpx.Request) -> httpx.Response:
        served.append(str(request.url))
        return httpx.Response(200, json={"ok": True})

    breaker = breaker_registry.get_or_create(f"transport-{runtime}")
    transport = AsyncCircuitBreakerTransport(breaker.name, transport=httpx.MockTransport(provider))

    async def main() -> tuple[Any, bool]:
        async with httpx.AsyncClient(transport=transport) as client:
            paused(breaker, 0.05)

            async def get() -> int:
                return (await client.get("http://llm.test/v1/models")).status_code

            return await meanwhile(get)

    assert run(runtime, main) == (200, True)
    assert len(served) == 1


@pytest.mark.parametrize("runtime", ["trio", "anyio-trio"])
def test_aiohttp_helpers_say_they_need_asyncio(runtime: str) -> None:
    """LLMCircuitBreaker.acall / astream under trio: an error naming asyncio and what to use."""
    cb = LLMCircuitBreaker(name=f"facade-{runtime}")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="asyncio only"):
            await cb.acall("http://127.0.0.1:9/v1/chat/completions", data={})
        with pytest.raises(RuntimeError, match="AsyncCircuitBreakerTransport"):
            cb.astream("http://127.0.0.1:9/v1/chat/completions", data={})

    run(runtime, main)
    assert cb.breaker.stats.calls == 0


GEVENT_SCRIPT = textwrap.dedent(
    """
    import json, time

    # Imported before patch_all, as under gunicorn --preload.
    from llm_circuit_breaker import CircuitBreaker, Outcome, circuit_breaker, with_retry
    from llm_circuit_breaker.errors import http_status_error

    from gevent import monkey
    monkey.patch_all()
    import gevent

    def cooperative(wait):
        ran = []
        other = gevent.spawn(ran.append, True)
        result = wait()
        seen = bool(ran)
        other.join()
        return result, seen

    paced = CircuitBreaker("paced")

    @circuit_breaker(breaker=paced)
    def ask():
        return "ok"

    paced.record(paced.admit(), Outcome.THROTTLED, hint=0.05)
    throttle = cooperative(ask)

    calls = []

    @with_retry(max_retries=2, initial_delay=0.05, jitter=False)
    @circuit_breaker("retried")
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise http_status_error(503)
        return "ok"

    retry = cooperative(flaky)

    @circuit_breaker("killed", failure_threshold=2)
    def slow():
        time.sleep(30)

    workers = [gevent.spawn(slow) for _ in range(5)]
    gevent.sleep(0.01)
    gevent.killall(workers)
    stats = slow.breaker.stats
    print(json.dumps({
        "throttle": throttle,
        "retry": retry,
        "killed": [slow.breaker.state.value, stats.failures, stats.ignored],
    }))
    """
)


def test_gevent_waits_cooperate_and_killed_greenlets_count_nothing(tmp_path: Path) -> None:
    """Under gevent patched after import, throttle and retry waits yield to other greenlets,
    and greenlets killed mid-call (GreenletExit) leave the circuit CLOSED and clean."""
    pytest.importorskip("gevent")
    script = tmp_path / "gevent_app.py"
    script.write_text(GEVENT_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["throttle"] == ["ok", True]
    assert report["retry"] == ["ok", True]
    assert report["killed"] == ["CLOSED", 0, 5]
