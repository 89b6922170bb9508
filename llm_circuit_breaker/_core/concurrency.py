"""The concurrency limit's arithmetic: how many calls may be in flight, who waits in line, and
how an adaptive limit moves. Pure: no lock, no clock, no I/O; ``now`` is passed in.

A call takes a slot at once when one is free and nobody waits (:meth:`LimiterCore.take`);
otherwise it gets a ticket in a FIFO line (:meth:`~LimiterCore.enqueue`). Every finished call
gives its slot back (:meth:`~LimiterCore.release`), which grants the freed slots to the oldest
tickets; a waiter that gives up leaves the line (:meth:`~LimiterCore.cancel`), or hands back
the slot granted to it meanwhile.

``"adaptive"`` is AIMD (as TCP congestion avoidance, Netflix concurrency-limits): after a
window of successes (as many as the limit, each within the latency target) during which the
limit was reached, the limit grows by one; an overload (529, "overloaded", a timeout) halves
it, once per round trip (overloads of calls that started before the last cut say nothing new).
The latency target is ``slow_call_duration`` when configured, else 1.5 x the lowest latency
seen. Reports carry no id, so a finished call is matched with the oldest start in flight:
latency is approximate when calls of very different lengths overlap.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["ADAPTIVE_START", "LATENCY_FACTOR", "LimiterCore", "Signal"]

ADAPTIVE_START = 4  # an adaptive limit's first value (capped by the ceiling)
LATENCY_FACTOR = 1.5  # the latency target without slow_call_duration: x the lowest seen
_EWMA = 0.2  # weight of the newest latency in the average that hints a refused caller


class Signal(enum.Enum):
    """What a finished call tells an adaptive limit."""

    SUCCESS = "success"
    OVERLOAD = "overload"  # 529 / overloaded / timeout: too many in flight
    NEUTRAL = "neutral"  # anything else (a caller's fault, a cancelled call, a refusal)


class LimiterCore:
    """Slots in flight, the FIFO line of tickets waiting for one, and the AIMD limit."""

    __slots__ = (
        "_busy",
        "_cut_at",
        "_next_ticket",
        "_starts",
        "_successes",
        "adaptive",
        "ceiling",
        "granted",
        "in_flight",
        "latency",
        "latency_target",
        "limit",
        "lowest_latency",
        "queue",
    )

    def __init__(
        self, limit: int | str, ceiling: int = 256, *, latency_target: float | None = None
    ) -> None:
        self.adaptive = limit == "adaptive"
        self.ceiling = ceiling
        self.limit = min(ADAPTIVE_START, ceiling) if isinstance(limit, str) else limit
        self.latency_target = latency_target
        self.in_flight = 0
        self.queue: deque[int] = deque()  # tickets waiting, oldest first
        self.granted: set[int] = set()  # tickets given a slot, not yet claimed by their waiter
        self._next_ticket = 0
        self._starts: deque[float] = deque()  # when the calls in flight started, oldest first
        self._successes = 0  # successes within the target since the limit last moved
        self._busy = False  # whether the limit was reached since it last grew
        self._cut_at = -float("inf")  # when the limit was last halved
        self.latency: float | None = None  # a moving average of the latency
        self.lowest_latency: float | None = None

    @property
    def waiting(self) -> int:
        """Tickets in line."""
        return len(self.queue)

    def _occupy(self, now: float) -> None:
        self.in_flight += 1
        self._starts.append(now)
        if self.in_flight >= self.limit:
            self._busy = True

    def take(self, now: float, *, force: bool = False) -> bool:
        """A slot now, if one is free and nobody waits (``force``: counted even over the
        limit, for a metrics-only breaker); False: the caller must queue."""
        if force or (self.in_flight < self.limit and not self.queue):
            self._occupy(now)
            return True
        return False

    def enqueue(self) -> int:
        """A ticket at the end of the line."""
        ticket = self._next_ticket
        self._next_ticket += 1
        self.queue.append(ticket)
        return ticket

    def claim(self, ticket: int) -> bool:
        """Whether ``ticket`` was granted a slot (which its waiter now holds)."""
        if ticket in self.granted:
            self.granted.discard(ticket)
            return True
        return False

    def cancel(self, ticket: int, now: float) -> list[int]:
        """The waiter of ``ticket`` gave up: it leaves the line, or hands back the slot granted
        to it meanwhile; the tickets granted a slot by this."""
        if ticket in self.granted:
            self.granted.discard(ticket)
            return self.release(now, Signal.NEUTRAL)
        try:
            self.queue.remove(ticket)
        except ValueError:
            pass
        return []

    def release(self, now: float, signal: Signal = Signal.NEUTRAL) -> list[int]:
        """A call in flight ended: its slot goes to the oldest tickets in line (the tickets
        granted are returned); an adaptive limit learns from ``signal``."""
        if self.in_flight > 0:
            self.in_flight -= 1
        started = self._starts.popleft() if self._starts else now
        if signal is Signal.SUCCESS:
            latency = max(now - started, 0.0)
            average = self.latency
            self.latency = latency if average is None else average + _EWMA * (latency - average)
        if self.adaptive and signal is not Signal.NEUTRAL:
            self._adapt(signal, now - started, started, now)
        return self._grant(now)

    def _grant(self, now: float) -> list[int]:
        granted: list[int] = []
        while self.queue and self.in_flight < self.limit:
            ticket = self.queue.popleft()
            self._occupy(now)
            self.granted.add(ticket)
            granted.append(ticket)
        return granted

    def _adapt(self, signal: Signal, latency: float, started: float, now: float) -> None:
        if signal is Signal.OVERLOAD:
            if started >= self._cut_at:  # one cut per round trip
                self.limit = max(1, self.limit // 2)
                self._cut_at = now
                self._successes = 0
                self._busy = False
            return
        latency = max(latency, 0.0)
        if self.lowest_latency is None or latency < self.lowest_latency:
            self.lowest_latency = latency
        target = self.latency_target
        if target is None:
            target = LATENCY_FACTOR * self.lowest_latency
        if latency > target:
            self._successes = 0  # the provider slows down: no more calls for now
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            if self._busy and self.limit < self.ceiling:
                self.limit += 1
                self._busy = self.in_flight >= self.limit

    def hint(self) -> float:
        """A refused caller's ``retry_after``: the average latency seen (1 s before any)."""
        return 1.0 if self.latency is None else max(self.latency, 0.001)

    def view(self) -> dict[str, int | str]:
        """``{limit, in_flight, waiting, mode}``."""
        return {
            "limit": self.limit,
            "in_flight": self.in_flight,
            "waiting": len(self.queue),
            "mode": "adaptive" if self.adaptive else "fixed",
        }
