"""``python -m llm_circuit_breaker demo``: watch a breaker protect an app through an outage.

The scripted provider goes healthy -> rate limited -> outage -> recovered. Four clients run
the same script at the same time against their own copy of the provider: unprotected,
tenacity alone, this library, and this library with a fallback to a second provider; the
live line follows this library's client, and the summary sets the four side by side.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from llm_circuit_breaker._cli.compare import NAMES, Contest
from llm_circuit_breaker.breaker.telemetry import StateChange, ThrottleEvent

_COLOURS = {"CLOSED": "\x1b[32m", "OPEN": "\x1b[31m", "HALF_OPEN": "\x1b[33m"}
_RESET = "\x1b[0m"
_CLEAR = "\r\x1b[K"


class Demo:
    """Runs the contest and reports this library's client as it goes."""

    def __init__(self, duration: float, concurrency: int, seed: int, out: TextIO) -> None:
        self.contest = Contest(duration, concurrency, seed)
        self.scenario = self.contest.scenario
        self.breaker = self.contest.ours.breaker
        self.out = out
        self.live = out.isatty()
        self.changes: list[tuple[float, StateChange]] = []
        self.throttle_events: list[tuple[float, ThrottleEvent]] = []
        self.breaker.add_listener(self._changed)

    def _changed(self, change: StateChange | ThrottleEvent) -> None:
        elapsed = self.scenario.elapsed()
        if isinstance(change, ThrottleEvent):
            self.throttle_events.append((elapsed, change))
            what = f"throttle {change.new.value}"
        else:
            self.changes.append((elapsed, change))
            what = f"{change.old.value} -> {change.new.value}"
        phase = self.scenario.phase_at(elapsed)
        line = f"[{elapsed:5.1f}s] {phase:<12} {what}: {change.reason}"
        # In a terminal the event goes above the live line, which is drawn again next tick.
        print((_CLEAR if self.live else "") + line, file=self.out, flush=True)

    def _line(self) -> str:
        elapsed = self.scenario.elapsed()
        state = self.breaker.state.value
        tally = self.contest.tallies["llm-circuit-breaker"]
        colour = _COLOURS[state] if self.live else ""
        waiting = self.breaker.throttle["waiting"] or 0
        bar_width = 20
        done = min(bar_width, int(bar_width * elapsed / self.scenario.duration))
        return (
            f"[{'#' * done}{'.' * (bar_width - done)}] {elapsed:4.1f}s  "
            f"{self.scenario.phase_at(elapsed):<12} "
            f"circuit {colour}{state:<9}{_RESET if self.live else ''} "
            f"calls {tally.calls:>5}  reached server {len(self.scenario.arrivals):>5}  "
            f"answered {tally.answered:>5}  failed fast "
            f"{tally.errors['CircuitOpenError']:>4}  paced {waiting:>2}"
        )

    async def _report(self) -> None:
        last_plain = 0.0
        while True:
            if self.live:
                print(_CLEAR + self._line(), end="", file=self.out, flush=True)
            elif self.scenario.elapsed() - last_plain >= 2.0:
                last_plain = self.scenario.elapsed()
                print(self._line(), file=self.out)
            await asyncio.sleep(0.1)

    async def run(self) -> int:
        print(
            f"fake LLM provider on 127.0.0.1: healthy -> rate limited -> outage -> recovered "
            f"over {self.scenario.duration:g}s; {self.contest.callers} callers per client",
            file=self.out,
        )
        reporter = asyncio.create_task(self._delayed_report())
        try:
            await self.contest.run()
        finally:
            reporter.cancel()
        if self.live:
            print(_CLEAR + self._line(), file=self.out)
        self._summary()
        return 0

    async def _delayed_report(self) -> None:
        await self.contest.begun.wait()
        await self._report()

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

    def _summary(self) -> None:
        results = self.contest.results()
        rows = (
            ("requests that hit the failing provider", "requests during the outage"),
            ("429s drawn from the provider", "429s drawn"),
            ("errors callers saw (fail-fast included)", "errors seen by callers"),
            ("seconds callers spent on failed calls", "seconds callers spent on failed calls"),
            ("calls answered", "calls answered"),
            ("calls answered in the rate-limited phase", "answered in the rate-limited phase"),
            ("success rate of calls in the outage", "success rate in the outage"),
        )
        print("\nsummary: the same scenario, four clients side by side", file=self.out)
        print(f"  {'':<42}" + "".join(f"{name:>20}" for name in NAMES), file=self.out)
        for label, key in rows:
            cells = "".join(_cell(results[name][key], key) for name in NAMES)
            print(f"  {label:<42}{cells}", file=self.out)
        ours = results["llm-circuit-breaker"]["errors by type"]
        opened = sum(1 for _, change in self.changes if change.new.value == "OPEN")
        took = self.recovery_time()
        print("\n  this library's callers:", file=self.out)
        print(
            f"    refused while the circuit was open: {ours.get('CircuitOpenError', 0)} "
            "CircuitOpenError (at once, nothing sent)",
            file=self.out,
        )
        print(
            f"    refused by the throttle: {ours.get('ThrottledError', 0)} ThrottledError "
            "(slot further than throttle_max_wait); the rest of the rate-limited phase waited "
            "in line",
            file=self.out,
        )
        others = {k: v for k, v in ours.items() if k not in {"CircuitOpenError", "ThrottledError"}}
        print(f"    other errors: {others or 'none'}", file=self.out)
        print(f"    retries: {self.breaker.stats.retries}", file=self.out)
        print(
            f"    circuit opened {opened} times; throttle paused "
            f"{sum(1 for _, e in self.throttle_events if e.new.value == 'THROTTLED')} times",
            file=self.out,
        )
        recovered = "not within the run" if took is None else f"{took:.2f}s"
        print(f"    recovery to CLOSED: {recovered}", file=self.out)
        served = self.contest.chain.fallback_stats  # type: ignore[attr-defined]
        print(
            "  with fallbacks: the primary answered "
            f"{served['primary'].served}, the second provider {served['secondary'].served} "
            f"(the primary was skipped unasked {served['primary'].refused} times while open)",
            file=self.out,
        )


def _cell(value: object, key: str) -> str:
    if key.startswith("success rate") and isinstance(value, float):
        return f"{value:>20.1%}"
    return f"{value:>20}"


def run_demo(duration: float, concurrency: int, seed: int, out: TextIO = sys.stdout) -> int:
    """Run the demo; the exit status."""
    started = time.monotonic()
    status = asyncio.run(Demo(duration, concurrency, seed, out).run())
    print(f"  wall time: {time.monotonic() - started:.1f}s", file=out)
    return status
