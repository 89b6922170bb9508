"""A retry storm: a provider failing half of all calls, 64 callers that retry up to 3 times.
How many requests reach the provider for each logical call, with and without a retry budget.

    pip install -e ".[bench]" && python benchmarks/retry_storm.py     # 6,400 calls per row
    python benchmarks/retry_storm.py --calls 1280 --rate 1000          # shorter

Each row runs ``--calls`` logical calls from ``--callers`` threads against a provider that
fails each request with probability ``--failure`` (a 503, drawn independently per request).
Time is virtual (``testing.frozen_time``): every request the provider receives moves the
library's clock on by ``1 / --rate`` seconds, so the fleet's traffic has the same rate on any
machine and the floor of the retry budget (``retry_budget_floor`` retries per second) weighs
what it would at that rate. Retries wait nothing (``initial_delay=0``), so a row's figures
do not depend on the machine's speed either; the circuit itself never opens
(``failure_threshold`` out of reach), so only the retries differ between rows.

Rows: no retries (the baseline), ``with_retry(max_retries=3)`` over ``circuit_breaker`` with
the retry budget off (``retry_budget=None``) and on (the defaults: 0.2, floor 10/s),
tenacity alone (``stop_after_attempt(4)``), the openai SDK's own retries (``max_retries=3``,
over an ``httpx.MockTransport`` that answers 503 with ``retry-after-ms: 1``), and the same SDK
through ``CircuitBreakerTransport`` (the budget sees its retries by ``x-stainless-retry-count``).
Reported: requests sent / logical calls, and the share of logical calls that succeeded.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llm_circuit_breaker import BreakerRegistry, ServerError, circuit_breaker, with_retry
from llm_circuit_breaker.testing import FakeClock, frozen_time

NEVER_OPENS = 10**9


class Provider:
    """Fails each request with probability ``failure``; every request moves the clock on."""

    def __init__(self, failure: float, rate: float, clock: FakeClock, seed: int) -> None:
        self.failure = failure
        self.step = 1.0 / rate
        self.clock = clock
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0

    def fails(self) -> bool:
        """One request arrives: whether it fails."""
        with self.lock:
            self.requests += 1
            self.clock.advance(self.step)
            return self.random.random() < self.failure

    def call(self) -> str:
        """A request as a function: a 503 half of the time."""
        if self.fails():
            raise ServerError(503, {}, "overloaded")
        return "ok"


def _run(calls: int, callers: int, call: Callable[[], Any]) -> int:
    """Run ``calls`` logical calls from ``callers`` threads; the number that succeeded."""
    ok = 0
    lock = threading.Lock()

    def one(_: int) -> None:
        nonlocal ok
        try:
            call()
        except Exception:
            return
        with lock:
            ok += 1

    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(one, range(calls)))
    return ok


def _library(provider: Provider, budget: bool) -> Callable[[], Any]:
    options: dict[str, Any] = {} if budget else {"retry_budget": None}
    guarded = circuit_breaker(
        "storm", registry=BreakerRegistry(), failure_threshold=NEVER_OPENS, **options
    )(provider.call)
    return with_retry(max_retries=3, initial_delay=0.0, max_delay=0.0)(guarded)


def _tenacity(provider: Provider) -> Callable[[], Any]:
    import tenacity

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_none(), reraise=True
    ).wraps(provider.call)


def _openai(provider: Provider, through_breaker: bool) -> Callable[[], Any]:
    import httpx
    import openai

    def answer(request: httpx.Request) -> httpx.Response:
        if provider.fails():
            return httpx.Response(503, headers={"retry-after-ms": "1"}, json={"error": {}})
        # a streamed body, as a real transport hands over (the guard reports at its end)
        body = httpx.ByteStream(json.dumps(_COMPLETION).encode())
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=body)

    transport: Any = httpx.MockTransport(answer)
    if through_breaker:
        from llm_circuit_breaker.httpx import CircuitBreakerTransport

        transport = CircuitBreakerTransport(
            "storm-sdk", transport, registry=BreakerRegistry(), failure_threshold=NEVER_OPENS
        )
    client = openai.OpenAI(
        api_key="sk-bench",
        base_url="http://provider.invalid/v1",
        max_retries=3,
        http_client=httpx.Client(transport=transport),
    )

    def call() -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )

    return call


_COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "ok"},
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}

ROWS: dict[str, Callable[[Provider], Callable[[], Any]]] = {
    "no retries": lambda p: p.call,
    "llm-circuit-breaker, budget off": lambda p: _library(p, budget=False),
    "llm-circuit-breaker, budget on": lambda p: _library(p, budget=True),
    "tenacity alone": _tenacity,
    "openai SDK retries": lambda p: _openai(p, through_breaker=False),
    "openai SDK retries + transport (budget on)": lambda p: _openai(p, through_breaker=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=6400, help="logical calls per row")
    parser.add_argument("--callers", type=int, default=64, help="threads calling at once")
    parser.add_argument("--failure", type=float, default=0.5, help="share of requests failing")
    parser.add_argument("--rate", type=float, default=1000.0, help="fleet requests / s (virtual)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    print(
        f"{args.calls} logical calls, {args.callers} callers, {args.failure:.0%} of requests "
        f"failing, {args.rate:g} requests/s (virtual time)\n"
    )
    print("| client | requests / logical call | succeeded |")
    print("|---|---:|---:|")
    for row in args.rows:
        with frozen_time(0.0) as clock:
            provider = Provider(args.failure, args.rate, clock, args.seed)
            ok = _run(args.calls, args.callers, ROWS[row](provider))
        print(f"| {row} | {provider.requests / args.calls:.2f}x | {ok / args.calls:.1%} |")


if __name__ == "__main__":
    main()
