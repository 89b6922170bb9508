"""A scripted provider outage, shared by the demo and the outage benchmark.

The provider is healthy, then rate limited (a real quota of ``RATE_LIMIT`` requests per
second: 429s with the true ``retry-after-ms``), then down (503s and hung requests), then
healthy again. Every answer carries the provider's ``x-ratelimit-*`` headers (a generous
quota outside the rate-limited phase). Phases are fractions of the run's duration; the server
answers by the time a request arrives, so every client sees the same outage.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time

from llm_circuit_breaker.testing import FakeLLMServer, Quota, Reply

__all__ = ["PHASES", "RATE_LIMIT", "Scenario"]

RATE_LIMIT = 10  # requests per second in the rate-limited phase

# (name, share of the run)
PHASES = (("healthy", 0.15), ("rate limited", 0.25), ("outage", 0.3), ("recovered", 0.3))


@dataclasses.dataclass
class Scenario:
    """The outage script over ``duration`` seconds, starting at :meth:`begin`."""

    duration: float
    seed: int = 0
    hang: float = 2.0  # how long an outage request hangs: longer than the client timeout
    started: float = 0.0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self.hits_by_phase = {name: 0 for name, _ in PHASES}
        self.arrivals: list[float] = []  # seconds from the start at which requests arrived
        self.limited = Quota(RATE_LIMIT, 1.0)
        self.generous = Quota(6000, 60.0)
        self.rate_limited = 0  # 429s sent

    def begin(self) -> None:
        self.started = time.monotonic()

    def phase_at(self, elapsed: float) -> str:
        edge = 0.0
        for name, share in PHASES:
            edge += share * self.duration
            if elapsed < edge:
                return name
        return PHASES[-1][0]

    def phase_start(self, name: str) -> float:
        """Seconds from the start at which phase ``name`` begins."""
        edge = 0.0
        for phase, share in PHASES:
            if phase == name:
                return edge
            edge += share * self.duration
        raise KeyError(name)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def reply(self, _number: int) -> Reply:
        """The server's answer to a request arriving now."""
        elapsed = self.elapsed()
        phase = self.phase_at(elapsed)
        with self._lock:
            self.hits_by_phase[phase] += 1
            self.arrivals.append(elapsed)
            roll = self._random.random()
        if phase == "outage":
            return (
                Reply.ok(delay=self.hang)
                if roll < 0.3
                else Reply.error(503, "service_unavailable_error")
            )
        answer = (self.limited if phase == "rate limited" else self.generous).reply()
        if answer.status == 429:
            with self._lock:
                self.rate_limited += 1
        return answer

    def server(self) -> FakeLLMServer:
        return FakeLLMServer(responder=self.reply)
