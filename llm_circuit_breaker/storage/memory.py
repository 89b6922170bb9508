"""``MemoryStateStore``: circuits in this process, each a :class:`Cell` (a ``BreakerCore``
and its throttle behind a lock).

A ``CircuitBreaker`` without a store embeds a ``LocalCircuit`` (breaker/circuit.py) instead:
the same parts in one object (a ``BreakerCore`` itself, with its throttle, a shared lock and a
lock-free fast path). As a store this lets several breaker objects of one process share
circuits by name, and serves as the reference the Redis store is tested against.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_circuit_breaker._core.permits import REJECTED, THROTTLED, is_refusal
from llm_circuit_breaker._core.state import BreakerCore, CircuitState, Outcome
from llm_circuit_breaker._core.throttle import ThrottleCore
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.storage.base import (
    Admission,
    Control,
    Ride,
    ThrottleNews,
    View,
)

if TYPE_CHECKING:
    from llm_circuit_breaker._core.headers import RateLimits

__all__ = ["Cell", "MemoryStateStore"]


class MemoryStateStore:
    """Circuits kept in this process. ``clock`` returns monotonic seconds (tests inject one)."""

    is_async = False
    available = True

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._cores: dict[str, Cell] = {}
        self._lock = threading.Lock()

    def _slot(self, name: str, config: CircuitBreakerConfig) -> Cell:
        slot = self._cores.get(name)
        if slot is None:
            with self._lock:
                slot = self._cores.setdefault(name, Cell(config))
        return slot

    @staticmethod
    def _view(slot: Cell, now: float, news: ThrottleNews | None = None) -> View:
        core, throttle = slot.core, slot.throttle
        retry_after = core.retry_after(now)
        transitions = tuple(core.drain())
        config = core.config
        clean = (
            core.state is CircuitState.CLOSED
            and not core.failure_count
            and config.slow_call_duration is None
            and config.failure_rate_threshold is None
            and (throttle is None or throttle.quiet)
        )
        return View(
            core.state,
            core.failure_count,
            core.success_count,
            core.opened_at,
            retry_after,
            transitions,
            clean=clean,
            reason=core.open_reason,
            throttle=slot.throttle_now(now),
            news=news,
        )

    def admit(
        self,
        name: str,
        config: CircuitBreakerConfig,
        tokens: float = 0.0,
        lease: int = 0,
        unused: int = 0,
        unused_tokens: float = 0.0,
        ride: Ride | None = None,
    ) -> Admission:
        """Admit a call (nothing is leased: every holder lives in this process)."""
        slot = self._slot(name, config)
        with slot.locked():
            now = self._clock()
            permit = slot.core.admit(now)
            wait, throttle = 0.0, slot.throttle
            if not is_refusal(permit) and throttle is not None and throttle.active:
                wait = throttle.book(now, tokens, config.throttle_max_wait)
                if wait > config.throttle_max_wait:
                    slot.core.report(permit, Outcome.IGNORED, now)
                    permit = THROTTLED
            if is_refusal(permit):  # a store speaks REJECTED: metrics-only is the breaker's
                permit = REJECTED
            return Admission(permit, self._view(slot, now), wait)

    def record(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        outcome: Outcome,
        open_for: float | None,
        why: str,
        pause: float | None = None,
        ride: Ride | None = None,
    ) -> tuple[Outcome, View]:
        slot = self._slot(name, config)
        with slot.locked():
            now = self._clock()
            counted = slot.core.report(permit, outcome, now, open_for=open_for, why=why)
            news = None
            throttle = slot.throttle
            if throttle is None and outcome is Outcome.THROTTLED:
                throttle = slot.made_throttle()
            if throttle is not None:
                said = throttle.report(
                    now, outcome is Outcome.THROTTLED, outcome is Outcome.SUCCESS, pause
                )
                news = None if said is None else ThrottleNews(*said)
            return counted, self._view(slot, now, news)

    def release(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        tokens: float,
        ride: Ride | None = None,
    ) -> View:
        slot = self._slot(name, config)
        with slot.locked():
            now = self._clock()
            if slot.throttle is not None:
                slot.throttle.cancel(tokens)
            slot.core.report(permit, Outcome.IGNORED, now)
            return self._view(slot, now)

    def observe(
        self, name: str, config: CircuitBreakerConfig, limits: RateLimits, ride: Ride | None = None
    ) -> View:
        slot = self._slot(name, config)
        with slot.locked():
            now = self._clock()
            throttle = slot.made_throttle()
            if throttle is not None:
                throttle.observe(limits, now)
            return self._view(slot, now)

    def snapshot(self, name: str, config: CircuitBreakerConfig, ride: Ride | None = None) -> View:
        slot = self._slot(name, config)
        with slot.locked():
            return self._view(slot, self._clock())

    def control(self, name: str, config: CircuitBreakerConfig, action: Control) -> View:
        slot = self._slot(name, config)
        with slot.locked():
            now = self._clock()
            if action == "force_open":
                slot.core.force_open(now)
            else:
                slot.core.close(now, "reset" if action == "reset" else "forced closed")
                if slot.throttle is not None:  # a pause or a learned limit is state too
                    slot.throttle.forget()
            return self._view(slot, now)


class Cell:
    """One circuit's pure cores behind their lock: the :class:`BreakerCore`, its throttle
    and the lock that serialises them. What a ``MemoryStateStore`` keeps per name and what a
    breaker's ``LocalCircuit`` holds in one object (one way to hold a circuit in this process).

    The throttle is made on first need (a rate limit, rate-limit headers), at once when rates
    are configured; ``paces``: whether this circuit has one to make (``throttle=True``)."""

    __slots__ = ("core", "lock", "paces", "throttle")

    def __init__(
        self,
        config: CircuitBreakerConfig,
        *,
        paces: bool = True,
        lock: threading.Lock | None = None,
        paced: bool = False,
    ) -> None:
        self.core = BreakerCore(config, paced=paced)  # paced: every call on the slow path
        # A lock of its own, or one shared with other cells (a breaker's circuit takes one of
        # a few striped locks): it guards the cores for a few lines, never across a call.
        self.lock = threading.Lock() if lock is None else lock
        self.paces = paces = config.throttle and paces
        rated = config.requests_per_minute is not None or config.tokens_per_minute is not None
        self.throttle = ThrottleCore(config) if paces and rated else None

    def locked(self) -> threading.Lock:
        """The lock."""
        return self.lock

    def made_throttle(self) -> ThrottleCore | None:
        """The throttle, made now if this circuit paces and has none yet (lock held)."""
        throttle = self.throttle
        if throttle is None and self.paces:
            throttle = self.throttle = ThrottleCore(self.core.config)
        return throttle

    def throttle_now(self, now: float) -> dict[str, float | int | None] | None:
        """What the throttle says (a new one's word while none is made; lock held), None
        without a throttle."""
        throttle = self.throttle
        if throttle is None and self.paces:  # nothing learned yet: what a new one says
            throttle = ThrottleCore(self.core.config)
        return None if throttle is None else throttle.view(now)
