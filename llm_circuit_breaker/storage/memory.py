"""``MemoryStateStore``: circuits in this process, each a ``BreakerCore`` behind a lock.

This is what a ``CircuitBreaker`` without a store embeds (with a lock-free fast path on top).
As a store it lets several breaker objects of one process share circuits by name, and serves
as the reference the Redis store is tested against.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from llm_circuit_breaker._state import REJECTED, BreakerCore, CircuitState, Outcome
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.storage.base import Admission, Control, View

__all__ = ["MemoryStateStore"]


class MemoryStateStore:
    """Circuits kept in this process. ``clock`` returns monotonic seconds (tests inject one)."""

    is_async = False
    available = True

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._cores: dict[str, tuple[BreakerCore, threading.Lock]] = {}
        self._lock = threading.Lock()

    def _slot(self, name: str, config: CircuitBreakerConfig) -> tuple[BreakerCore, threading.Lock]:
        slot = self._cores.get(name)
        if slot is None:
            with self._lock:
                slot = self._cores.setdefault(name, (BreakerCore(config), threading.Lock()))
        return slot

    @staticmethod
    def _view(core: BreakerCore, now: float) -> View:
        retry_after = core.retry_after(now)
        transitions = tuple(core.transitions)
        core.transitions = []
        config = core.config
        clean = (
            core.state is CircuitState.CLOSED
            and not core.failure_count
            and config.slow_call_duration is None
            and config.failure_rate_threshold is None
        )
        return View(
            core.state,
            core.failure_count,
            core.success_count,
            core.opened_at,
            retry_after,
            transitions,
            clean=clean,
        )

    def admit(self, name: str, config: CircuitBreakerConfig) -> Admission:
        core, lock = self._slot(name, config)
        with lock:
            now = self._clock()
            permit = core.admit(now)
            return Admission(permit if permit >= 0 else REJECTED, self._view(core, now))

    def record(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        outcome: Outcome,
        open_for: float | None,
        why: str,
    ) -> tuple[Outcome, View]:
        core, lock = self._slot(name, config)
        with lock:
            now = self._clock()
            counted = core.record(permit, outcome, now, open_for=open_for, why=why)
            return counted, self._view(core, now)

    def snapshot(self, name: str, config: CircuitBreakerConfig) -> View:
        core, lock = self._slot(name, config)
        with lock:
            return self._view(core, self._clock())

    def control(self, name: str, config: CircuitBreakerConfig, action: Control) -> View:
        core, lock = self._slot(name, config)
        with lock:
            now = self._clock()
            if action == "force_open":
                core.force_open(now)
            else:
                core.close(now, "reset" if action == "reset" else "forced closed")
            return self._view(core, now)
