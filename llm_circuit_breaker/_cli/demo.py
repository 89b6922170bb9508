"""``python -m llm_circuit_breaker demo``: watch a breaker protect an app through an outage."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import time
from collections.abc import Callable
from typing import TextIO

from llm_circuit_breaker._cli.scenario import Scenario
from llm_circuit_breaker._telemetry import StateChange, ThrottleEvent
from llm_circuit_breaker.errors import CircuitOpenError, LLMCircuitBreakerError
from llm_circuit_breaker.http.client import LLMCircuitBreaker
from llm_circuit_breaker.registry import BreakerRegistry

_COLOURS = {"CLOSED": "\x1b[32m", "OPEN": "\x1b[31m", "HALF_OPEN": "\x1b[33m"}
_RESET = "\x1b[0m"


@dataclasses.dataclass
class Tally:
    """What the application saw."""

    calls: int = 0
    ok: int = 0
    failed_fast: int = 0
    errors: int = 0


class Demo:
    """Runs the scenario against concurrent async callers and reports as it goes."""

    def __init__(self, duration: float, concurrency: int, seed: int, out: TextIO) -> None:
        self.scenario = Scenario(duration=duration, seed=seed, hang=max(1.0, duration / 10))
        self.concurrency = concurrency
        self.out = out
        self.live = out.isatty()
        self.tally = Tally()
        self.changes: list[tuple[float, StateChange]] = []
        self.throttle_events: list[tuple[float, ThrottleEvent]] = []
        self._random = random.Random(seed)
        self.facade = LLMCircuitBreaker(
            name="demo-provider",
            circuit_breaker={
                "failure_threshold": 5,
                "reset_timeout": max(0.5, duration * 0.08),
                "success_threshold": 2,
                "timeout": 0.5,
            },
            retry={"max_retries": 2, "initial_delay": 0.05, "max_delay": 1.0},
            registry=BreakerRegistry(),
        )
        self.facade.breaker.add_listener(self._changed)

    def _changed(self, change: StateChange | ThrottleEvent) -> None:
        elapsed = self.scenario.elapsed()
        if isinstance(change, ThrottleEvent):
            self.throttle_events.append((elapsed, change))
        else:
            self.changes.append((elapsed, change))
        if not self.live:
            phase = self.scenario.phase_at(elapsed)
            transition = f"{change.old.value} -> {change.new.value}"
            print(f"[{elapsed:5.1f}s] {phase:<12} {transition}: {change.reason}", file=self.out)

    async def _caller(self, url: str) -> None:
        while self.scenario.elapsed() < self.scenario.duration:
            self.tally.calls += 1
            try:
                await self.facade.acall(
                    url, data={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
                )
                self.tally.ok += 1
            except CircuitOpenError:
                self.tally.failed_fast += 1
            except LLMCircuitBreakerError:
                self.tally.errors += 1
            await asyncio.sleep(0.05 + self._random.random() * 0.05)

    def _line(self, hits: int) -> str:
        elapsed = self.scenario.elapsed()
        state = self.facade.breaker.state.value
        stats = self.facade.breaker.stats
        colour = _COLOURS[state] if self.live else ""
        bar_width = 20
        done = min(bar_width, int(bar_width * elapsed / self.scenario.duration))
        return (
            f"[{'#' * done}{'.' * (bar_width - done)}] {elapsed:4.1f}s  "
            f"{self.scenario.phase_at(elapsed):<12} "
            f"circuit {colour}{state:<9}{_RESET if self.live else ''} "
            f"calls {self.tally.calls:>5}  reached server {hits:>5}  "
            f"failed fast {self.tally.failed_fast:>5}  "
            f"retries {stats.retries:>4}  errors {self.tally.errors:>4}"
        )

    async def _report(self, server_hits: Callable[[], int]) -> None:
        last_plain = 0.0
        while True:
            if self.live:
                print("\r" + self._line(server_hits()), end="", file=self.out, flush=True)
            elif self.scenario.elapsed() - last_plain >= 2.0:
                last_plain = self.scenario.elapsed()
                print(self._line(server_hits()), file=self.out)
            await asyncio.sleep(0.1)

    async def run(self) -> int:
        server = self.scenario.server()
        await server.astart()
        url = server.url + "/v1/chat/completions"
        print(
            f"fake LLM provider at {server.url}: healthy -> outage -> rate limited -> "
            f"recovered over {self.scenario.duration:g}s",
            file=self.out,
        )
        self.scenario.begin()
        reporter = asyncio.create_task(self._report(lambda: server.hits))
        try:
            await asyncio.gather(*(self._caller(url) for _ in range(self.concurrency)))
        finally:
            reporter.cancel()
            await self.facade.aclose()
            await server.astop()
        if self.live:
            print("\r" + self._line(server.hits), file=self.out)
        self._summary(server.hits)
        return 0

    def recovery_time(self) -> float | None:
        """Seconds from the provider's recovery until the circuit was CLOSED (None: never)."""
        recovery = self.scenario.phase_start("recovered")
        before = [change for at, change in self.changes if at < recovery]
        if not before or before[-1].new.value == "CLOSED":
            return 0.0  # it was already closed when the provider recovered
        closed = [
            at for at, change in self.changes if at >= recovery and change.new.value == "CLOSED"
        ]
        return closed[0] - recovery if closed else None

    def _summary(self, hits: int) -> None:
        opened = sum(1 for _, change in self.changes if change.new.value == "OPEN")
        outage = self.scenario.hits_by_phase["outage"]
        took = self.recovery_time()
        recovered = "not within the run" if took is None else f"{took:.2f}s"
        print("\nsummary", file=self.out)
        print(f"  calls made                    {self.tally.calls}", file=self.out)
        print(f"  calls that reached the server {hits} ({outage} during the outage)", file=self.out)
        print(f"  calls failed fast             {self.tally.failed_fast}", file=self.out)
        print(f"  calls answered                {self.tally.ok}", file=self.out)
        print(f"  errors seen by callers        {self.tally.errors}", file=self.out)
        print(f"  retries                       {self.facade.breaker.stats.retries}", file=self.out)
        print(f"  circuit opened                {opened} times", file=self.out)
        print(f"  recovery to CLOSED            {recovered}", file=self.out)


def run_demo(duration: float, concurrency: int, seed: int, out: TextIO = sys.stdout) -> int:
    """Run the demo; the exit status."""
    started = time.monotonic()
    status = asyncio.run(Demo(duration, concurrency, seed, out).run())
    print(f"  wall time                     {time.monotonic() - started:.1f}s", file=out)
    return status
