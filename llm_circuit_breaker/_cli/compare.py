"""The same scripted outage against four clients at once: unprotected, tenacity alone, this
library, and this library with a fallback to a second, healthy provider. Shared by the demo
(which shows this library's client live) and ``benchmarks/outage.py``.

Each client gets its own fake provider running the same script from the same start, and the
same number of concurrent callers. Per client: requests that reached the provider during the
outage, errors the callers saw (by type), and calls made and answered in each phase.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

from llm_circuit_breaker._cli.scenario import Scenario
from llm_circuit_breaker.breaker.registry import BreakerRegistry
from llm_circuit_breaker.http.client import LLMCircuitBreaker
from llm_circuit_breaker.strategies.fallbacks import with_fallbacks
from llm_circuit_breaker.testing import FakeLLMServer

__all__ = ["BREAKER", "NAMES", "REFUSALS", "RETRY", "Contest", "Tally"]

BREAKER = {
    "failure_threshold": 5,
    "reset_timeout": 0.3,
    "success_threshold": 2,
    "half_open_max_calls": 2,
    "timeout": 0.5,
}
RETRY = {"max_retries": 3, "initial_delay": 0.1, "max_delay": 2.0}
NAMES = ("unprotected", "tenacity alone", "llm-circuit-breaker", "with fallbacks")
BODY = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
REFUSALS = ("CircuitOpenError", "ThrottledError")  # what a refused call raises: nothing sent
Call = Callable[[str], Awaitable[Any]]


@dataclasses.dataclass
class Tally:
    """What one client's callers saw."""

    calls: int = 0
    answered: int = 0
    answered_by_phase: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    calls_by_phase: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    first_answer_after_recovery: float | None = None
    seconds_lost: float = 0.0  # what failed calls cost their callers, in all
    refusal_seconds: list[float] = dataclasses.field(default_factory=list)  # per refused call

    @property
    def failed(self) -> int:
        """Calls that ended in an error, of any type."""
        return sum(self.errors.values())


class Contest:
    """Four clients, each with its own provider (and the fourth a second one), one script."""

    def __init__(self, duration: float, callers: int, seed: int, pause: float = 0.05) -> None:
        self.duration = duration
        self.callers = callers
        self.pause = pause
        hang = max(1.0, duration / 10)
        self.scenarios = {name: Scenario(duration=duration, seed=seed, hang=hang) for name in NAMES}
        self.servers = {name: self.scenarios[name].server() for name in NAMES}
        self.tallies = {name: Tally() for name in NAMES}
        self.begun = asyncio.Event()  # set once the providers are up and the script runs
        # The outage lasts seconds, not minutes: a short reset timeout probes often enough
        # that the circuit closes soon after the provider recovers (a short run, sooner).
        breaker = {
            **BREAKER,
            "reset_timeout": max(0.2, min(BREAKER["reset_timeout"], duration / 60)),
        }
        registry = BreakerRegistry()
        self.ours = LLMCircuitBreaker(
            name="demo-provider", circuit_breaker=breaker, retry=RETRY, registry=registry
        )
        # The fallback client: the same kind of primary, then a second provider that stays up.
        self.primary = LLMCircuitBreaker(
            name="primary", circuit_breaker=breaker, retry=RETRY, registry=registry
        )
        self.secondary = LLMCircuitBreaker(
            name="secondary", circuit_breaker=breaker, retry=RETRY, registry=registry
        )
        self.second_provider = FakeLLMServer()

    @property
    def scenario(self) -> Scenario:
        """This library's scenario (they all run the same script at the same time)."""
        return self.scenarios["llm-circuit-breaker"]

    async def run(self) -> None:
        """Start the providers, drive every client to the end, stop them."""
        import aiohttp
        import tenacity

        for server in (*self.servers.values(), self.second_provider):
            await server.astart()
        session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=BREAKER["timeout"])

        async def plain(url: str) -> Any:
            async with session.post(url, json=BODY, timeout=timeout) as response:
                response.raise_for_status()
                return await response.json()

        retried = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(int(RETRY["max_retries"]) + 1),
            wait=tenacity.wait_random_exponential(
                multiplier=RETRY["initial_delay"], max=RETRY["max_delay"]
            ),
            reraise=True,
        )

        async def with_tenacity(url: str) -> Any:
            return await retried(plain, url)

        async def with_breaker(url: str) -> Any:
            return await self.ours.acall(url, data=BODY)

        second_url = self.second_provider.url + "/v1/chat/completions"

        async def primary(url: str) -> Any:
            return await self.primary.acall(url, data=BODY)

        async def secondary(url: str) -> Any:
            return await self.secondary.acall(second_url, data=BODY)

        vars(primary)["breaker"] = self.primary.breaker  # names the targets in the stats
        vars(secondary)["breaker"] = self.secondary.breaker
        self.chain = with_fallbacks(primary, secondary)
        calls: dict[str, Call] = {
            "unprotected": plain,
            "tenacity alone": with_tenacity,
            "llm-circuit-breaker": with_breaker,
            "with fallbacks": self.chain,
        }
        for scenario in self.scenarios.values():
            scenario.begin()
        self.begun.set()
        try:
            await asyncio.gather(
                *(
                    self._drive(name, calls[name], self.servers[name].url + "/v1/chat/completions")
                    for name in NAMES
                )
            )
        finally:
            await session.close()
            for client in (self.ours, self.primary, self.secondary):
                await client.aclose()
            for server in (*self.servers.values(), self.second_provider):
                await server.astop()

    async def _drive(self, name: str, call: Call, url: str) -> None:
        scenario, tally = self.scenarios[name], self.tallies[name]
        recovery = scenario.phase_start("recovered")

        async def caller() -> None:
            while scenario.elapsed() < scenario.duration:
                tally.calls += 1
                began = scenario.elapsed()
                phase = scenario.phase_at(began)  # a call belongs to the phase it began in
                tally.calls_by_phase[phase] += 1
                try:
                    await call(url)
                except Exception as exc:  # every error a caller sees is counted
                    kind = _kind(exc)
                    tally.errors[kind] += 1
                    tally.seconds_lost += scenario.elapsed() - began
                    if kind in REFUSALS:
                        tally.refusal_seconds.append(scenario.elapsed() - began)
                else:
                    tally.answered += 1
                    elapsed = scenario.elapsed()
                    tally.answered_by_phase[phase] += 1
                    if elapsed >= recovery and tally.first_answer_after_recovery is None:
                        tally.first_answer_after_recovery = elapsed - recovery
                await asyncio.sleep(self.pause)

        await asyncio.gather(*(caller() for _ in range(self.callers)))

    def results(self) -> dict[str, dict[str, Any]]:
        """Per client: requests during the outage, errors by type, answers by phase."""
        out: dict[str, dict[str, Any]] = {}
        for name in NAMES:
            scenario, tally = self.scenarios[name], self.tallies[name]
            out[name] = {
                "requests during the outage": scenario.hits_by_phase["outage"],
                "requests in all": len(scenario.arrivals),
                "429s drawn": scenario.rate_limited,
                "calls": tally.calls,
                "errors seen by callers": tally.failed,
                "errors by type": dict(tally.errors.most_common()),
                "seconds callers spent on failed calls": round(tally.seconds_lost, 1),
                "median refusal (us)": round(
                    statistics.median(tally.refusal_seconds or [0.0]) * 1e6, 1
                ),
                "calls answered": tally.answered,
                "answered in the rate-limited phase": tally.answered_by_phase["rate limited"],
                "success rate in the outage": round(
                    tally.answered_by_phase["outage"] / max(1, tally.calls_by_phase["outage"]), 3
                ),
                "first answer after recovery (s)": tally.first_answer_after_recovery,
            }
        return out


def _kind(exc: BaseException) -> str:
    """A caller-facing name for an error: the library's class, else an HTTP status or class."""
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    name = type(exc).__name__
    if name in REFUSALS:
        return name
    if isinstance(status, int):
        return f"HTTP {status}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return name
