"""The same scripted outage against four clients, side by side in one run.

    pip install -e ".[bench]" && python benchmarks/outage.py            # 20 s, writes outage.png
    python benchmarks/outage.py --duration 4 --no-plot                  # quick (CI)

Each client gets its own fake provider running the same script (healthy -> rate limited by a
real quota with ``x-ratelimit-*`` headers -> outage with 503s and hung requests -> recovered)
from the same start time, and the same number of concurrent callers:

* unprotected: one aiohttp request per call;
* tenacity alone: up to 4 attempts with exponential backoff and jitter;
* llm-circuit-breaker: ``LLMCircuitBreaker`` (breaker, throttle, retries);
* with fallbacks: the same, then a second provider that stays up (``with_fallbacks``).

Then, apart: the latency a failover adds when the primary is OPEN, on top of the second
provider's own call (the chain's call minus a direct call, interleaved rounds, median).

The clients are those of ``python -m llm_circuit_breaker demo`` (``_cli/compare.py``).
Reported per client: requests that reached the provider during the outage, 429s drawn, errors
seen by the callers and the time they spent on them, calls answered (in all, and in the
rate-limited phase), and the time from the provider's recovery to the first answered call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from llm_circuit_breaker import (
    BreakerRegistry,
    LLMCircuitBreaker,
    StateChange,
    ThrottleEvent,
    with_fallbacks,
)
from llm_circuit_breaker._cli.compare import BREAKER, NAMES, RETRY, Contest
from llm_circuit_breaker._cli.scenario import RATE_LIMIT, Scenario
from llm_circuit_breaker.testing import FakeLLMServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def failover_latency(calls: int = 300, rounds: int = 5) -> dict[str, float]:
    """Microseconds per call: the second provider directly, and through a chain whose
    primary is OPEN; the difference is what the failover adds."""
    server = FakeLLMServer()
    await server.astart()
    url = server.url + "/v1/chat/completions"
    registry = BreakerRegistry()
    primary = LLMCircuitBreaker(name="primary", retry={"max_retries": 0}, registry=registry)
    second = LLMCircuitBreaker(name="secondary", retry={"max_retries": 0}, registry=registry)
    primary.breaker.force_open()

    async def first(_: object) -> object:
        return await primary.acall(url, data=BODY)

    async def other(_: object) -> object:
        return await second.acall(url, data=BODY)

    chain = with_fallbacks(first, other)
    times: dict[str, list[float]] = {"direct": [], "chain": []}
    for _ in range(rounds):
        for name, call in (("direct", other), ("chain", chain)):
            started = time.perf_counter()
            for _ in range(calls):
                await call(None)
            times[name].append((time.perf_counter() - started) / calls * 1e6)
    await primary.aclose()
    await second.aclose()
    await server.astop()
    direct, through = statistics.median(times["direct"]), statistics.median(times["chain"])
    return {
        "direct (us)": direct,
        "through the chain (us)": through,
        "added (us)": through - direct,
    }


async def main_async(duration: float, callers: int, plot: Path | None) -> dict[str, Any]:
    contest = Contest(duration, callers, seed=7)
    changes: list[tuple[float, StateChange]] = []

    def heard(change: StateChange | ThrottleEvent) -> None:
        if isinstance(change, StateChange):
            changes.append((contest.scenario.elapsed(), change))

    contest.ours.breaker.add_listener(heard)
    await contest.run()
    results: dict[str, Any] = contest.results()
    scenario = contest.scenario
    recovery = scenario.phase_start("recovered")
    closed = [
        at - recovery for at, change in changes if at >= recovery and change.new.value == "CLOSED"
    ]
    before = [change for at, change in changes if at < recovery]
    results["llm-circuit-breaker"]["recovery to CLOSED (s)"] = (
        0.0 if not before or before[-1].new.value == "CLOSED" else (closed[0] if closed else None)
    )
    outage_length = recovery - scenario.phase_start("outage")
    limited_length = scenario.phase_start("outage") - scenario.phase_start("rate limited")
    reset_timeout = contest.ours.config.reset_timeout
    results["bound"] = {
        "outage seconds": outage_length,
        "failure_threshold + probes per reset_timeout (with in-flight retries)": (
            BREAKER["failure_threshold"] * (RETRY["max_retries"] + 1)
            + int(outage_length / reset_timeout + 1)
        ),
        "rate-limited allowance (quota burst + refill over the phase)": int(
            RATE_LIMIT + RATE_LIMIT * limited_length
        ),
    }
    results["failover to an OPEN primary"] = await failover_latency()
    if plot is not None:
        _plot(plot, contest.scenarios, changes, duration)
    return results


def _plot(
    path: Path,
    scenarios: dict[str, Scenario],
    changes: list[tuple[float, StateChange]],
    duration: float,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no timeline (pip install matplotlib)")
        return
    bins = int(duration / 0.1)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=[3, 1])
    for name, scenario in scenarios.items():
        counts = [0] * (bins + 1)
        for at in scenario.arrivals:
            counts[min(bins, int(at / 0.1))] += 1
        top.plot([i * 0.1 for i in range(bins + 1)], counts, label=name, linewidth=1.2)
    any_scenario = next(iter(scenarios.values()))
    for phase, end_phase, colour in (
        ("rate limited", "outage", "#fff2cc"),
        ("outage", "recovered", "#f4cccc"),
    ):
        start, end = any_scenario.phase_start(phase), any_scenario.phase_start(end_phase)
        for axis in (top, bottom):
            axis.axvspan(start, end, color=colour, zorder=0)
    top.set_ylabel("requests reaching the provider / 100 ms")
    top.legend(loc="upper right")
    top.set_title(
        f"The same script, four clients (yellow: rate limited, {RATE_LIMIT}/s quota; red: outage)"
    )
    level = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}
    xs, ys = [0.0], [0]
    for at, change in changes:
        xs += [at, at]
        ys += [level[change.old.value], level[change.new.value]]
    xs.append(duration)
    ys.append(ys[-1])
    bottom.plot(xs, ys, drawstyle="default", color="black")
    bottom.set_yticks([0, 1, 2], ["CLOSED", "HALF_OPEN", "OPEN"])
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("circuit")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"timeline written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("outage.png"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    results = asyncio.run(
        main_async(args.duration, args.callers, None if args.no_plot else args.plot)
    )
    print(json.dumps(results, indent=2))
    columns = [
        "requests during the outage",
        "429s drawn",
        "errors seen by callers",
        "seconds callers spent on failed calls",
        "answered in the rate-limited phase",
        "success rate in the outage",
        "calls answered",
    ]
    print("\n| client | " + " | ".join(columns) + " | first answer after recovery |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for name in NAMES:
        row = results[name]
        first = row["first answer after recovery (s)"]
        cells = " | ".join(str(row[column]) for column in columns)
        print(f"| {name} | {cells} | {'-' if first is None else f'{first:.2f}s'} |")
    added = results["failover to an OPEN primary"]
    print(
        f"\nfailover to an OPEN primary: {added['added (us)']:.0f} us on top of the second "
        f"provider's own call ({added['direct (us)']:.0f} us)"
    )
    print(f"\nwall time {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
