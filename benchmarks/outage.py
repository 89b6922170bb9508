"""The same scripted outage against three clients, side by side in one run.

    pip install -e ".[bench]" && python benchmarks/outage.py            # 20 s, writes outage.png
    python benchmarks/outage.py --duration 4 --no-plot                  # quick (CI)

Each client gets its own fake provider running the same script (healthy -> outage with 503s
and hung requests -> rate limited -> recovered) from the same start time, and the same number
of concurrent callers:

* unprotected: one aiohttp request per call;
* tenacity alone: up to 4 attempts with exponential backoff and jitter;
* llm-circuit-breaker: ``LLMCircuitBreaker`` (breaker + retries).

Reported per client: requests that reached the provider during the outage, errors seen by the
callers, and the time from the provider's recovery to the first answered call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import tenacity

from llm_circuit_breaker import BreakerRegistry, CircuitOpenError, LLMCircuitBreaker, StateChange
from llm_circuit_breaker._cli.scenario import Scenario
from llm_circuit_breaker.testing import FakeLLMServer

BREAKER = {"failure_threshold": 5, "reset_timeout": 1.5, "success_threshold": 2, "timeout": 0.5}
RETRY = {"max_retries": 3, "initial_delay": 0.1, "max_delay": 2.0}
Call = Callable[[str], Awaitable[Any]]


class Client:
    """Concurrent callers through one ``call``; counts what the callers saw."""

    def __init__(self, name: str, scenario: Scenario) -> None:
        self.name = name
        self.scenario = scenario
        self.errors = self.answered = self.failed_fast = 0
        self.first_answer_after_recovery: float | None = None

    async def run(self, call: Call, url: str, callers: int) -> None:
        recovery = self.scenario.phase_start("recovered")

        async def caller() -> None:
            while self.scenario.elapsed() < self.scenario.duration:
                try:
                    await call(url)
                except CircuitOpenError:
                    self.failed_fast += 1
                except Exception:
                    self.errors += 1
                else:
                    self.answered += 1
                    elapsed = self.scenario.elapsed()
                    if elapsed >= recovery and self.first_answer_after_recovery is None:
                        self.first_answer_after_recovery = elapsed - recovery
                await asyncio.sleep(0.05)

        await asyncio.gather(*(caller() for _ in range(callers)))


async def main_async(duration: float, callers: int, plot: Path | None) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    timeout = aiohttp.ClientTimeout(total=BREAKER["timeout"])
    names = ("unprotected", "tenacity alone", "llm-circuit-breaker")
    scenarios = {name: Scenario(duration=duration, seed=7, hang=2.0) for name in names}
    servers = {name: FakeLLMServer(responder=scenarios[name].reply) for name in names}
    for server in servers.values():
        await server.astart()
    session = aiohttp.ClientSession()

    async def plain(url: str) -> Any:
        async with session.post(url, json=body, timeout=timeout) as response:
            response.raise_for_status()
            return await response.json()

    retried = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(RETRY["max_retries"] + 1),
        wait=tenacity.wait_random_exponential(
            multiplier=RETRY["initial_delay"], max=RETRY["max_delay"]
        ),
        reraise=True,
    )

    async def with_tenacity(url: str) -> Any:
        return await retried(plain, url)

    ours = LLMCircuitBreaker(
        name="outage-bench", circuit_breaker=BREAKER, retry=RETRY, registry=BreakerRegistry()
    )
    changes: list[tuple[float, StateChange]] = []
    ours.breaker.add_listener(
        lambda change: changes.append((scenarios["llm-circuit-breaker"].elapsed(), change))
    )

    async def with_breaker(url: str) -> Any:
        return await ours.acall(url, data=body)

    clients = {name: Client(name, scenarios[name]) for name in names}
    calls: dict[str, Call] = {
        "unprotected": plain,
        "tenacity alone": with_tenacity,
        "llm-circuit-breaker": with_breaker,
    }
    for scenario in scenarios.values():
        scenario.begin()
    await asyncio.gather(
        *(clients[n].run(calls[n], servers[n].url + "/v1/chat/completions", callers) for n in names)
    )
    await session.close()
    await ours.aclose()
    for server in servers.values():
        await server.astop()

    outage_start = scenarios[names[0]].phase_start("outage")
    outage_length = scenarios[names[0]].phase_start("rate limited") - outage_start
    results: dict[str, Any] = {}
    for name in names:
        client, scenario = clients[name], scenarios[name]
        results[name] = {
            "requests during the outage": scenario.hits_by_phase["outage"],
            "requests in all": len(scenario.arrivals),
            "errors seen by callers": client.errors,
            "calls failed fast": client.failed_fast,
            "calls answered": client.answered,
            "first answer after recovery (s)": client.first_answer_after_recovery,
        }
    recovery = scenarios["llm-circuit-breaker"].phase_start("recovered")
    closed = [
        at - recovery for at, change in changes if at >= recovery and change.new.value == "CLOSED"
    ]
    before = [change for at, change in changes if at < recovery]
    results["llm-circuit-breaker"]["recovery to CLOSED (s)"] = (
        0.0 if not before or before[-1].new.value == "CLOSED" else (closed[0] if closed else None)
    )
    bound = BREAKER["failure_threshold"] * (RETRY["max_retries"] + 1) + int(
        outage_length / BREAKER["reset_timeout"] + 1
    )
    results["bound"] = {
        "outage seconds": outage_length,
        "failure_threshold + probes per reset_timeout (with in-flight retries)": bound,
    }
    if plot is not None:
        _plot(plot, scenarios, changes, duration)
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
    for phase, colour in (("outage", "#f4cccc"), ("rate limited", "#fff2cc")):
        start = any_scenario.phase_start(phase)
        end = any_scenario.phase_start("rate limited" if phase == "outage" else "recovered")
        for axis in (top, bottom):
            axis.axvspan(start, end, color=colour, zorder=0)
    top.set_ylabel("requests reaching the provider / 100 ms")
    top.legend(loc="upper right")
    top.set_title("The same outage, three clients")
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
    names = [n for n in results if n != "bound"]
    columns = ["requests during the outage", "errors seen by callers", "calls failed fast"]
    print("\n| client | " + " | ".join(columns) + " | first answer after recovery |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        row = results[name]
        first = row["first answer after recovery (s)"]
        cells = " | ".join(str(row[column]) for column in columns)
        print(f"| {name} | {cells} | {'-' if first is None else f'{first:.2f}s'} |")
    print(f"\nwall time {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
