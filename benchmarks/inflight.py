"""Threads against a small quota: the 429s drawn while calls are in flight.

    python benchmarks/inflight.py             # 80 calls per mode, a few seconds each
    python benchmarks/inflight.py --runs 5    # several runs per mode

A fake provider of ``--limit`` requests per ``--window`` seconds (default 20 per 2 s, a
continuously refilling bucket, ``testing.Quota``) answers each request ``--latency`` seconds
after it counted it (default 0.05 s). ``--threads`` threads (default 8) share ``--calls`` calls
(default 80), each thread calling back to back:

* LLMCircuitBreaker: ``call`` through the sync HTTP helper (requests);
* httpx transport: ``httpx.Client`` over ``CircuitBreakerTransport``, a ``with_retry`` around.

Every answer's headers pace the throttle. While a call is in flight the provider has counted
it and the throttle has booked it; the answers of earlier calls report a ``remaining`` that
does not count the calls booked after them yet. Reported per mode and run: calls answered, 429s
the provider drew, and the seconds the run took.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from llm_circuit_breaker import BreakerRegistry, LLMCircuitBreaker, with_retry
from llm_circuit_breaker.testing import FakeLLMServer, Quota, Reply

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
MODES = ("LLMCircuitBreaker", "httpx transport")


def _run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    quota = Quota(args.limit, args.window)
    latency = args.latency

    def reply(_number: int) -> Reply:
        import dataclasses

        return dataclasses.replace(quota.reply(), delay=latency)

    registry = BreakerRegistry()
    closers: list[Callable[[], None]] = []
    with FakeLLMServer(responder=reply) as server:
        url = server.url + "/v1/chat/completions"
        if mode == "LLMCircuitBreaker":
            helper = LLMCircuitBreaker(name="inflight-helper", registry=registry)
            closers.append(helper.close)

            def call() -> Any:
                return helper.call(url, data=BODY)

        else:
            import httpx

            from llm_circuit_breaker.httpx import CircuitBreakerTransport

            breaker = registry.get_or_create("inflight-transport")
            client = httpx.Client(transport=CircuitBreakerTransport(breaker))
            closers.append(client.close)

            @with_retry(max_retries=5)
            def call() -> Any:
                response = client.post(url, json=BODY)
                response.raise_for_status()
                return response.json()

        tickets = itertools.count()
        answered, errors = 0, 0
        lock = threading.Lock()

        def worker() -> None:
            nonlocal answered, errors
            while next(tickets) < args.calls:
                try:
                    call()
                except Exception:  # every error a caller sees is counted
                    with lock:
                        errors += 1
                else:
                    with lock:
                        answered += 1

        started = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        for close in closers:
            close()
    return {
        "answered": answered,
        "errors": errors,
        "429s": quota.refused,
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=80)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for mode in args.modes:
        runs = [_run(mode, args) for _ in range(args.runs)]
        results[mode] = {
            "429s per run": [run["429s"] for run in runs],
            "median 429s": statistics.median(run["429s"] for run in runs),
            "answered per run": [run["answered"] for run in runs],
            "errors per run": [run["errors"] for run in runs],
            "seconds per run": [run["seconds"] for run in runs],
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
