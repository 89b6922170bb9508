"""A pool of three deployments with unequal quotas: how much of their allowance each strategy
gets, and how many 429s it draws.

    pip install -e ".[bench]" && python benchmarks/pool.py     # 60 s, every strategy at once
    python benchmarks/pool.py --duration 20                     # shorter

Each strategy gets its own three fake deployments (``testing.Quota``: continuously refilling
buckets of 60, 120 and 240 requests per minute, 420 in all, with OpenAI-style
``x-ratelimit-*-requests`` headers on every answer and the true ``retry-after-ms`` on a 429),
its own three ``LLMCircuitBreaker`` helpers (default options: every response's headers pace
the throttle, 3 retries) and ``with_pool(*deployments, strategy=...)`` over their ``acall``.
``--callers`` async callers (32) call the pool back to back for ``--duration`` seconds; all
the strategies run side by side in one event loop.

The allowance of a run is what the buckets hold at the start plus what they refill:
``420 + 420 / 60 * duration``. Reported per strategy: calls the deployments answered within
the run / allowance (the goodput share), the calls answered beyond the 420 the buckets held
at the start, per minute (the pace kept, against the 420/min refill), 429s / requests sent,
the answered calls per deployment, and the errors the callers saw.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import time
from typing import Any

from llm_circuit_breaker import BreakerRegistry, LLMCircuitBreaker, with_pool
from llm_circuit_breaker.testing import FakeLLMServer, Quota, Reply

QUOTAS = (60, 120, 240)  # requests per minute of each deployment
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
STRATEGIES = ["headroom", "least_busy", "latency", "weighted", "round_robin"]


class Deployment:
    """A fake deployment with its own quota, recording when it answered what."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.quota = Quota(per_minute, 60.0)
        self.answers: list[tuple[float, int]] = []  # (monotonic time, status)
        self.server = FakeLLMServer(responder=self._reply)

    def _reply(self, _number: int) -> Reply:
        reply = self.quota.reply()
        self.answers.append((time.monotonic(), reply.status))
        return reply


async def _callers(call: Any, count: int, until: float) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()

    async def caller() -> None:
        while time.monotonic() < until:
            try:
                await call(data=BODY)
            except Exception as exc:  # every error a caller sees is counted by type
                seen[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
            else:
                seen["answered"] += 1

    tasks = [asyncio.create_task(caller()) for _ in range(count)]
    # Callers asleep in a throttle past the end are not waited for: their calls would land
    # after the run.
    await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()) + 1.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return seen


async def _strategy(
    strategy: str, deployments: list[Deployment], callers: int, until: float
) -> collections.Counter[str]:
    registry = BreakerRegistry()
    helpers = [
        LLMCircuitBreaker(name=f"{strategy}-{d.per_minute}", registry=registry) for d in deployments
    ]
    targets = [
        functools.partial(h.acall, d.server.url + "/v1/chat/completions")
        for h, d in zip(helpers, deployments, strict=True)
    ]
    weights = QUOTAS if strategy == "weighted" else None
    pool = with_pool(*targets, strategy=strategy, weights=weights)  # type: ignore[arg-type]
    try:
        return await _callers(pool, callers, until)
    finally:
        for helper in helpers:
            await helper.aclose()


async def main_async(duration: float, callers: int, strategies: list[str]) -> dict[str, Any]:
    deployments = {s: [Deployment(q) for q in QUOTAS] for s in strategies}
    for each in deployments.values():
        for deployment in each:
            await deployment.server.astart()
    started = time.monotonic()
    until = started + duration
    seen = dict(
        zip(
            strategies,
            await asyncio.gather(
                *(_strategy(s, deployments[s], callers, until) for s in strategies)
            ),
            strict=True,
        )
    )
    for each in deployments.values():
        for deployment in each:
            await deployment.server.astop()
    allowance = sum(QUOTAS) * (1.0 + duration / 60.0)
    results: dict[str, Any] = {"allowance": allowance, "seconds": duration}
    for strategy in strategies:
        answers = [
            (d.per_minute, at, status) for d in deployments[strategy] for at, status in d.answers
        ]
        ok = [q for q, at, status in answers if status == 200 and at <= until]
        limited = sum(1 for _, _, status in answers if status == 429)
        errors = {k: v for k, v in seen[strategy].items() if k != "answered"}
        results[strategy] = {
            "goodput share": round(len(ok) / allowance, 3),
            # what the buckets held at the start aside: the pace the pool kept, against 420/min
            "answered per minute after the burst": round(
                max(0, len(ok) - sum(QUOTAS)) * 60.0 / duration, 1
            ),
            "requests sent": len(answers),
            "429s": limited,
            "429 share": round(limited / max(1, len(answers)), 4),
            "answered per deployment": {f"{q}/min": ok.count(q) for q in QUOTAS},
            "errors seen by callers": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES, choices=STRATEGIES)
    args = parser.parse_args()
    results = asyncio.run(main_async(args.duration, args.callers, args.strategies))
    print(json.dumps(results, indent=2))
    print(
        f"\nquotas {'/'.join(map(str, QUOTAS))} per minute, {args.callers} callers, "
        f"{args.duration:g} s: allowance {results['allowance']:.0f} calls"
    )
    print(
        "\n| strategy | goodput share | pace after the burst (/min) | 429 share | answered per "
        "deployment (60 / 120 / 240) | errors seen by callers |"
    )
    print("|---|---:|---:|---:|---|---|")
    for strategy in args.strategies:
        row = results[strategy]
        split = " / ".join(str(v) for v in row["answered per deployment"].values())
        errors = ", ".join(f"{k} {v}" for k, v in row["errors seen by callers"].items()) or "none"
        print(
            f"| {strategy} | {row['goodput share']:.3f} | "
            f"{row['answered per minute after the burst']:.0f} | "
            f"{row['429 share']:.2%} | {split} | {errors} |"
        )


if __name__ == "__main__":
    main()
