"""Functions run in child processes by the multi-process Redis tests (importable by spawn).

Every process reads the time from one Redis key (``CLOCK_KEY``) that the test moves, so no
assertion depends on how fast the processes start on a busy machine.
"""

from __future__ import annotations

import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    circuit_breaker,
)
from llm_circuit_breaker._core.throttle import Wait
from llm_circuit_breaker.storage import RedisStateStore

CONFIG = CircuitBreakerConfig(failure_threshold=3, reset_timeout=1.0, half_open_max_calls=1)
CLOCK_KEY = "procs-test:now"


def _breaker(port: int) -> CircuitBreaker:
    client = redis.Redis(port=port, socket_timeout=5.0, retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client, prefix="procs", clock=lambda: float(client.get(CLOCK_KEY)))
    return CircuitBreaker("provider", CONFIG, store=store)


def trip(port: int) -> str:
    """Fail three calls: the shared circuit opens."""
    breaker = _breaker(port)

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        raise ConnectionError("provider down")

    for _ in range(3):
        try:
            call()
        except ConnectionError:
            pass
    return breaker.state.value


def follow(port: int) -> tuple[int, int]:
    """Try five calls: (how many ran, how many were refused)."""
    ran = 0

    @circuit_breaker(breaker=_breaker(port))
    def call() -> None:
        nonlocal ran
        ran += 1

    refused = 0
    for _ in range(5):
        try:
            call()
        except CircuitOpenError:
            refused += 1
    return ran, refused


def race(port: int, threads: int) -> int:
    """``threads`` threads try to probe at once: how many were admitted."""
    breaker = _breaker(port)
    barrier = threading.Barrier(threads)
    admitted = []

    def work() -> None:
        barrier.wait()
        try:
            breaker.admit()
        except CircuitOpenError:
            return
        admitted.append(1)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return len(admitted)


def paced(port: int) -> list[float]:
    """Ten admissions under a shared 20-per-minute throttle on the frozen shared clock; the
    wait each was handed (nobody sleeps: the slots stay reserved)."""
    client = redis.Redis(port=port, socket_timeout=5.0, retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client, prefix="paced", clock=lambda: float(client.get(CLOCK_KEY)))
    config = CircuitBreakerConfig(requests_per_minute=20, throttle_max_wait=3600.0)
    breaker = CircuitBreaker("provider", config, store=store)
    waits = []
    for _ in range(10):
        entry = breaker.enter()
        waits.append(entry.seconds if isinstance(entry, Wait) else 0.0)
    return waits


def spend(port: int, cap: float, tokens: float, calls: int) -> int:
    """Up to ``calls`` calls each spending ``tokens`` against one fleet-wide ``token_budget``
    of ``cap`` (the shared clock frozen): how many were admitted."""
    from llm_circuit_breaker import BudgetExceededError

    client = redis.Redis(port=port, socket_timeout=5.0, retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client, prefix="spend", clock=lambda: float(client.get(CLOCK_KEY)))
    breaker = CircuitBreaker("provider", CircuitBreakerConfig(token_budget=cap), store=store)
    admitted = 0
    for _ in range(calls):
        try:
            permit = breaker.admit()
        except BudgetExceededError:
            continue
        admitted += 1
        breaker.spend(tokens)
        breaker.record_success(permit)
    return admitted
