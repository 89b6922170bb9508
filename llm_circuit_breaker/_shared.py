"""``SharedCircuitBreaker``: a breaker whose circuit lives in a store (Redis, shared memory).

``CircuitBreaker(name, config, store=...)`` makes one. Every admission and every report that
can change the circuit is one store call; a success admitted into a clean CLOSED circuit is not
reported at all, so the success path costs one round trip. When the store fails, the breaker
decides with its own local state until the store answers again (one listener event each way).

Permits carry where they came from in their two low bits: 0 local, 1 shared and clean (a
success changes nothing), 2 shared (every outcome is reported).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from llm_circuit_breaker._state import REJECTED, Outcome, Transition
from llm_circuit_breaker.breaker import CircuitBreaker, Clock, StateChange, _check_report
from llm_circuit_breaker.config import CircuitBreakerConfig, CircuitState
from llm_circuit_breaker.errors import CircuitOpenError
from llm_circuit_breaker.storage.base import Control, StateStore, StoreUnavailableError, View

__all__ = ["SharedCircuitBreaker"]

_LOCAL, _CLEAN, _SHARED = 0, 1, 2


class SharedCircuitBreaker(CircuitBreaker):
    """A :class:`CircuitBreaker` whose state is kept by ``store`` (see the module docs)."""

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        store: StateStore | None = None,
    ) -> None:
        if store is None:
            raise TypeError("SharedCircuitBreaker needs a store")
        super().__init__(name, config, clock=clock)
        self.store = store
        self.is_async = store.is_async
        self._local = False  # deciding locally because the store failed
        self._known = View(CircuitState.CLOSED, 0, 0, None, 0.0)
        self._known_at = time.monotonic()

    # -- following the store ---------------------------------------------------------------

    def _adopt(self, view: View) -> None:
        if self._local:
            self._local = False
            self._event(super().state, view.state, "shared store reachable again: following it")
        now = self._clock()
        self._known, self._known_at = view, time.monotonic()
        self._publish([Transition(t.old, t.new, t.reason, now) for t in view.transitions])

    def _go_local(self) -> None:
        if not self._local:
            self._local = True
            self._event(
                self._known.state, super().state, "shared store unavailable: deciding locally"
            )

    def _event(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        self._notify(StateChange(self.name, old, new, self._clock(), reason))

    def _admitted(self, permit: int, view: View) -> int | CircuitOpenError:
        self._adopt(view)
        if permit < 0:
            self._count_rejection()
            refusal = CircuitOpenError.refused(self.name, view.retry_after)
            return refusal if self._plain_refusals else self._refused(refusal)
        return permit * 4 + (_CLEAN if view.clean else _SHARED)

    def _local_admit(self) -> int | CircuitOpenError:
        self._go_local()
        entry = super().enter()
        return entry * 4 if entry.__class__ is int else entry

    # -- admitting -------------------------------------------------------------------------

    def try_admit(self) -> Any:
        """A permit or -1 (a coroutine giving one when the store is asyncio)."""
        if self.is_async:
            return self._atry_admit()
        return super().try_admit()

    async def _atry_admit(self) -> int:
        entry = await self._aenter()
        return entry if entry.__class__ is int else REJECTED

    def enter(self) -> Any:
        """A permit or the refusal (a coroutine giving one when the store is asyncio)."""
        if self.is_async:
            return self._aenter()
        if self.store.available:
            try:
                admission = self.store.admit(self.name, self.config)
            except StoreUnavailableError:
                pass
            else:
                return self._admitted(admission.permit, admission.view)
        return self._local_admit()

    async def _aenter(self) -> int | CircuitOpenError:
        if self.store.available:
            try:
                admission = await self.store.aadmit(self.name, self.config)  # type: ignore[attr-defined]
            except StoreUnavailableError:
                pass
            else:
                return self._admitted(admission.permit, admission.view)
        return self._local_admit()

    # -- recording -------------------------------------------------------------------------

    def record_success(self, permit: int) -> Any:
        if permit & 3 == _CLEAN:
            self._count_success()
            return None
        return self.record(permit, Outcome.SUCCESS)

    def record(
        self, permit: int, outcome: Outcome, *, open_for: float | None = None, why: str = ""
    ) -> Any:
        """Report an outcome (a coroutine to await when the store is asyncio)."""
        _check_report(permit, outcome, open_for)
        if permit & 3 == _LOCAL:
            super().record(permit >> 2, outcome, open_for=open_for, why=why)
            return None
        if self.is_async:
            return self._arecord(permit >> 2, outcome, open_for, why)
        counted = outcome
        if self.store.available:
            try:
                counted, view = self.store.record(
                    self.name, self.config, permit >> 2, outcome, open_for, why
                )
            except StoreUnavailableError:
                self._go_local()
            else:
                self._adopt(view)
        self._tally(counted)
        return None

    async def _arecord(
        self, permit: int, outcome: Outcome, open_for: float | None, why: str
    ) -> None:
        counted = outcome
        if self.store.available:
            try:
                counted, view = await self.store.arecord(  # type: ignore[attr-defined]
                    self.name, self.config, permit, outcome, open_for, why
                )
            except StoreUnavailableError:
                self._go_local()
            else:
                self._adopt(view)
        self._tally(counted)

    # -- reading ---------------------------------------------------------------------------

    def _local_view(self) -> View:
        state = super().state
        core = self._core
        return View(
            state, core.failure_count, core.success_count, core.opened_at, super().retry_after
        )

    def _view(self) -> View:
        """The store's view (the last one known, for an asyncio store), or the local one."""
        if self._local and not self.store.available:
            return self._local_view()
        if self.is_async:
            known = self._known
            if known.state is CircuitState.OPEN and known.retry_after is not None:
                left = known.retry_after - (time.monotonic() - self._known_at)
                if left <= 0:
                    return View(CircuitState.HALF_OPEN, 0, 0, None, 0.0)
                return View(known.state, known.failure_count, 0, known.opened_at, left)
            return known
        try:
            view = self.store.snapshot(self.name, self.config)
        except StoreUnavailableError:
            self._go_local()
            return self._local_view()
        self._adopt(view)
        return view

    @property
    def state(self) -> CircuitState:
        """The shared state (for an asyncio store, as of the last call; see ``asnapshot``)."""
        return self._view().state

    @property
    def failure_count(self) -> int:
        return self._view().failure_count

    @property
    def success_count(self) -> int:
        return self._view().success_count

    @property
    def retry_after(self) -> float | None:
        return self._view().retry_after

    def snapshot(self) -> dict[str, Any]:
        return self._as_dict(self._view())

    async def asnapshot(self) -> dict[str, Any]:
        """The shared state read from an asyncio store now."""
        try:
            view = await self.store.asnapshot(self.name, self.config)  # type: ignore[attr-defined]
        except StoreUnavailableError:
            self._go_local()
            view = self._local_view()
        else:
            self._adopt(view)
        return self._as_dict(view)

    def _as_dict(self, view: View) -> dict[str, Any]:
        stats = self.stats
        return {
            "state": view.state.value,
            "failure_count": view.failure_count,
            "success_count": view.success_count,
            "opened_at": view.opened_at,
            "retry_after": view.retry_after,
            "stats": dataclasses.asdict(stats),
        }

    # -- manual control --------------------------------------------------------------------

    def _control(self, action: Control, local: Callable[[], None]) -> None:
        if self.is_async:
            raise TypeError(f"this breaker's store is asyncio: use `await breaker.a{action}()`")
        local()
        try:
            self._adopt(self.store.control(self.name, self.config, action))
        except StoreUnavailableError:
            self._go_local()

    async def _acontrol(self, action: Control, local: Callable[[], None]) -> None:
        local()
        try:
            self._adopt(await self.store.acontrol(self.name, self.config, action))  # type: ignore[attr-defined]
        except StoreUnavailableError:
            self._go_local()

    def reset(self) -> None:
        self._control("reset", super().reset)

    def force_open(self) -> None:
        self._control("force_open", super().force_open)

    def force_closed(self) -> None:
        self._control("force_closed", super().force_closed)

    async def areset(self) -> None:
        """``reset()`` for a breaker on an asyncio store."""
        await self._acontrol("reset", super().reset)

    async def aforce_open(self) -> None:
        """``force_open()`` for a breaker on an asyncio store."""
        await self._acontrol("force_open", super().force_open)

    async def aforce_closed(self) -> None:
        """``force_closed()`` for a breaker on an asyncio store."""
        await self._acontrol("force_closed", super().force_closed)
