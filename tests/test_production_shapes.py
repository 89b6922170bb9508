"""The shapes production has (SPEC section 12): threads each with their own event loop, clients
reused across event loops, local faults that are never the provider's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
from typing import Any

from llm_circuit_breaker import CircuitState, LLMCircuitBreaker
from llm_circuit_breaker.testing import FakeLLMServer

THREADS = 8
RUNS = 5


def _run_in_fresh_loop(cb: LLMCircuitBreaker, url: str) -> Any:
    return asyncio.run(cb.acall(url + "/v1/chat/completions", data={}))


def test_threads_each_running_their_own_loop_share_one_facade(llm_server: FakeLLMServer) -> None:
    """8 threads each running asyncio.run(cb.acall(...)) again and again: every call answered,
    no session of another loop closed under it, the circuit stays CLOSED."""
    cb = LLMCircuitBreaker(retry={"max_retries": 0})
    try:
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            futures = [
                pool.submit(_run_in_fresh_loop, cb, llm_server.url) for _ in range(THREADS * RUNS)
            ]
            answers = [f.result() for f in futures]
        assert all(a["object"] == "chat.completion" for a in answers)
        assert cb.breaker.state is CircuitState.CLOSED
        assert cb.breaker.stats.failures == 0
        assert llm_server.hits == THREADS * RUNS
    finally:
        cb.close()


def test_one_facade_used_from_two_loops_alternately(llm_server: FakeLLMServer) -> None:
    """Two live event loops take turns with one facade: each keeps its own session, and
    aclose() in one loop leaves the other's session open."""
    cb = LLMCircuitBreaker(retry={"max_retries": 0})
    url = llm_server.url + "/v1/chat/completions"
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        for _ in range(3):
            for loop in (first, second):
                assert loop.run_until_complete(cb.acall(url, data={}))["object"]
        sessions = [loop.run_until_complete(_session_of(cb)) for loop in (first, second)]
        assert sessions[0] is not sessions[1]
        first.run_until_complete(cb.aclose())
        assert sessions[0].closed and not sessions[1].closed
        assert second.run_until_complete(cb.acall(url, data={}))["object"]
        assert cb.breaker.stats.failures == 0
        assert cb.breaker.state is CircuitState.CLOSED
    finally:
        second.run_until_complete(cb.aclose())
        first.close()
        second.close()
        cb.close()


async def _session_of(cb: LLMCircuitBreaker) -> Any:
    return await cb._async.session()


def test_a_session_of_an_ended_loop_is_dropped(llm_server: FakeLLMServer) -> None:
    """Once its event loop is gone, a loop's session is let go without closing anyone else's."""
    cb = LLMCircuitBreaker(retry={"max_retries": 0})
    url = llm_server.url + "/v1/chat/completions"
    live = asyncio.new_event_loop()
    try:
        live.run_until_complete(cb.acall(url, data={}))
        kept = live.run_until_complete(_session_of(cb))
        for _ in range(3):
            asyncio.run(cb.acall(url, data={}))
        gc.collect()
        assert not kept.closed
        assert len(cb._async.sessions()) == 1
        cb.close()  # closes what it can: the live loop's session too
        assert kept.closed
    finally:
        live.run_until_complete(live.shutdown_asyncgens())  # what asyncio.run does at its end
        live.close()
