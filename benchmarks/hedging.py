"""Hedged requests against a long-tailed provider: time to first token and extra requests,
without hedging and with ``with_hedging``, side by side in one run.

    python benchmarks/hedging.py                      # 400 requests per row, 16 at a time
    python benchmarks/hedging.py --requests 1000 --concurrency 32
    python benchmarks/hedging.py --quick              # smoke run

A local provider (``FakeLLMServer`` in a process of its own, the real OpenAI SDK streaming
from it) whose first token comes after 0.2 s for 90% of requests and after 5 s for the other
10% (drawn per request, seeded). Each row sends the same number of logical calls through
``@circuit_breaker`` (an async generator over the SDK's stream) with ``concurrency`` callers,
and measures, per call, the time from the call to its first *content* chunk as the caller
sees it. "extra requests" is what reached the provider beyond one per call. Each row has a
breaker of its own, so the adaptive rows start from ``delay_default`` (1 s) until their
breaker knows 20 times.

Goal (``delay="p90"``, ``max_attempts=3``): p99 <= 4x the unhedged p50, <= 15% extra requests.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai

from llm_circuit_breaker import BreakerRegistry, circuit_breaker, with_hedging
from llm_circuit_breaker._judge.content import is_content
from llm_circuit_breaker.breaker.telemetry import latency_of
from llm_circuit_breaker.testing import FakeLLMServer, Reply

FAST, SLOW, SLOW_SHARE = 0.2, 5.0, 0.10


@dataclasses.dataclass
class Row:
    label: str
    times: list[float]
    requests: int
    stats: Any = None
    learned: float | None = None  # the breaker's p90 time to first item at the end


class Provider:
    """The fake provider in a process of its own, so that its work and the client's do not
    share one interpreter lock: its base URL and the requests it received."""

    def __init__(self, seed: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._hits = context.Value("l", 0)
        self._stop = context.Event()
        receiving, sending = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve, args=(sending, self._hits, self._stop, seed), daemon=True
        )
        self._process.start()
        self.openai_base_url: str = receiving.recv()

    @property
    def hits(self) -> int:
        return int(self._hits.value)

    def close(self) -> None:
        self._stop.set()
        self._process.join(30)


def _serve(url: Any, hits: Any, stop: Any, seed: int) -> None:
    draw = random.Random(seed)

    def reply(number: int) -> Reply:
        with hits.get_lock():
            hits.value += 1
        delay = SLOW if draw.random() < SLOW_SHARE else FAST
        return dataclasses.replace(Reply.chat("Hello there", stream=True), first_token_delay=delay)

    with FakeLLMServer(responder=reply) as server:
        url.send(server.openai_base_url)
        stop.wait()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-round(q * len(ordered) * 1e9) // 1_000_000_000))  # ceil, nearest rank
    return ordered[min(rank, len(ordered)) - 1]


async def _run(
    label: str,
    server: Provider,
    make: Callable[[Any], Any],
    requests: int,
    concurrency: int,
    registry: BreakerRegistry,
) -> Row:
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-bench", max_retries=0)

    @circuit_breaker(f"bench {label}", registry=registry, failure_threshold=1000)
    async def ask(prompt: str) -> AsyncIterator[Any]:
        stream = await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": prompt}], stream=True
        )
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.close()

    call = make(ask)
    times: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(requests):
        queue.put_nowait(number)
    hits_before = server.hits

    async def caller() -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.monotonic()
            first = None
            async for chunk in call("hi"):
                if first is None and is_content(chunk):
                    first = time.monotonic() - started
            times.append(first if first is not None else time.monotonic() - started)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    await client.close()
    learned = latency_of(registry.get(f"bench {label}")).first_item.quantile(0.9)
    return Row(label, times, server.hits - hits_before, getattr(call, "hedge_stats", None), learned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="logical calls per row")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at a time")
    parser.add_argument("--fixed-delay", type=float, default=0.5, help="the fixed-delay row's")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--quick", action="store_true", help="100 requests per row")
    args = parser.parse_args()
    requests = 100 if args.quick else args.requests
    rows: list[Row] = []
    setups: list[tuple[str, Callable[[Any], Any]]] = [
        ("no hedging", lambda ask: ask),
        (
            f"delay={args.fixed_delay:g}s, max_attempts=2",
            lambda ask: with_hedging(ask, delay=args.fixed_delay),
        ),
        ('delay="p90", max_attempts=2', lambda ask: with_hedging(ask, delay="p90")),
        (
            'delay="p90", max_attempts=3',
            lambda ask: with_hedging(ask, delay="p90", max_attempts=3),
        ),
    ]
    server = Provider(args.seed)
    try:
        for label, make in setups:
            registry = BreakerRegistry()
            rows.append(
                asyncio.run(_run(label, server, make, requests, args.concurrency, registry))
            )
    finally:
        server.close()
    base = _quantile(rows[0].times, 0.5)
    print(
        f"{requests} calls per row, {args.concurrency} at a time; first token after "
        f"{FAST:g} s ({1 - SLOW_SHARE:.0%}) or {SLOW:g} s ({SLOW_SHARE:.0%})\n"
    )
    print(
        "| setup | p50 TTFT (s) | p90 (s) | p99 (s) | max (s) | p99 / unhedged p50 "
        "| extra requests |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        p50, p90, p99 = (_quantile(row.times, q) for q in (0.5, 0.9, 0.99))
        extra = row.requests / len(row.times) - 1
        print(
            f"| {row.label} | {p50:.3f} | {p90:.3f} | {p99:.3f} | {max(row.times):.3f} "
            f"| {p99 / base:.2f}x | {extra:.1%} |"
        )
    last = rows[-1]
    p99 = _quantile(last.times, 0.99)
    extra = last.requests / len(last.times) - 1
    print(
        f'\ngoal, delay="p90", max_attempts=3: p99 {p99:.3f} s <= 4x unhedged p50 '
        f"({4 * base:.3f} s): {'met' if p99 <= 4 * base else 'NOT met'}; extra requests "
        f"{extra:.1%} <= 15%: {'met' if extra <= 0.15 else 'NOT met'}"
    )
    for row in rows[1:]:
        stats = row.stats
        learned = "" if row.learned is None else f"; learned p90 {row.learned:.3f} s"
        print(
            f"{row.label}: {stats.attempts} attempts, {stats.hedges} hedges, "
            f"{stats.failovers} failovers{learned}"
        )


if __name__ == "__main__":
    main()
