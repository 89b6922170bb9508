"""A scripted provider outage, shared by the demo and the outage benchmark.

The provider is healthy, then rate limited (a real quota of ``RATE_LIMIT`` requests per
second: 429s with the true ``retry-after-ms``), then down (503s and hung requests), then
healthy again. Every answer carries the provider's ``x-ratelimit-*`` headers (a generous
quota outside the rate-limited phase). Phases are fractions of the run's duration; the server
answers by the time a request arrives, so every client sees the same outage.

As OpenAI documents for its rate limits, refused requests count against the limit too
("unsuccessful requests contribute to your per-minute limit, so continuously resending a
request won't work"): a 429 spends from the bucket as an answer does, down to one window of
debt, so a client that keeps resending keeps itself limited.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time

from llm_circuit_breaker.testing import FakeLLMServer, Reply

__all__ = ["PHASES", "RATE_LIMIT", "Bucket", "Scenario"]

RATE_LIMIT = 10  # requests per second in the rate-limited phase

# (name, share of the run, what happens: one line for the demo)
PHASES = (
    ("healthy", 0.1, "the provider answers every call"),
    (
        "rate limited",
        0.3,
        f"a quota of {RATE_LIMIT} requests/s; a 429 above it, and 429s count against it",
    ),
    ("outage", 0.3, "503s, and requests that hang past the client's timeout"),
    ("recovered", 0.3, "the provider answers again"),
)


class Bucket:
    """``limit`` requests per ``window`` seconds, refilled continuously, where a refused
    request spends from the bucket too (down to ``-limit``). Answers with OpenAI's
    ``x-ratelimit-*-requests`` headers; a 429 carries the true wait. Thread-safe."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.rate = limit / window
        self._level = float(limit)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def reply(self) -> Reply:
        """The answer to one request arriving now: a completion, or a 429."""
        with self._lock:
            now = time.monotonic()
            self._level = min(float(self.limit), self._level + (now - self._at) * self.rate)
            self._at = now
            granted = self._level >= 1.0
            self._level = max(-float(self.limit), self._level - 1.0)
            headers = {
                "x-ratelimit-limit-requests": str(self.limit),
                "x-ratelimit-remaining-requests": str(max(0, int(self._level))),
                "x-ratelimit-reset-requests": f"{(self.limit - self._level) / self.rate:.3f}s",
            }
            wait = (1.0 - self._level) / self.rate
        if granted:
            return Reply.ok("ok", headers=headers)
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        return Reply.error(
            429, "rate_limit_exceeded", "Rate limit reached for requests", headers=headers
        )


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
        self.hits_by_phase = {name: 0 for name, _, _ in PHASES}
        self.arrivals: list[float] = []  # seconds from the start at which requests arrived
        self.limited = Bucket(RATE_LIMIT, 1.0)
        self.generous = Bucket(6000, 60.0)
        self.rate_limited = 0  # 429s sent

    def begin(self) -> None:
        self.started = time.monotonic()

    def phase_at(self, elapsed: float) -> str:
        edge = 0.0
        for name, share, _ in PHASES:
            edge += share * self.duration
            if elapsed < edge:
                return name
        return PHASES[-1][0]

    def phase_start(self, name: str) -> float:
        """Seconds from the start at which phase ``name`` begins."""
        edge = 0.0
        for phase, share, _ in PHASES:
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
