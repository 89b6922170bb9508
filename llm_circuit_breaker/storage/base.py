"""The store interface: whole transitions of a named circuit, one call each."""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol

from llm_circuit_breaker._state import CircuitState, Outcome, Transition
from llm_circuit_breaker.config import CircuitBreakerConfig

__all__ = ["Admission", "AsyncStateStore", "Control", "StateStore", "StoreUnavailableError", "View"]

Control = Literal["reset", "force_open", "force_closed"]


class StoreUnavailableError(Exception):
    """The store could not be reached; the breaker decides locally meanwhile."""


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """A circuit's state as a store reports it after an operation."""

    state: CircuitState
    failure_count: int
    success_count: int
    opened_at: float | None
    retry_after: float | None
    transitions: tuple[Transition, ...] = ()
    repaired: bool = False  # corrupt or foreign data was found and replaced by a CLOSED circuit
    clean: bool = False  # CLOSED with nothing pending: a success needs not be reported
    reason: str = ""  # why the circuit is open, when it is


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """The result of admitting a call: a permit (``-1`` when refused) and the view."""

    permit: int
    view: View


class StateStore(Protocol):
    """Keeps circuits by name. Each method is one atomic transition.

    ``is_async`` is False: a store whose client is asyncio is an :class:`AsyncStateStore`.
    ``available`` is False while the store is known to be unreachable.
    """

    @property
    def is_async(self) -> bool:
        """False: the methods below are plain calls."""

    @property
    def available(self) -> bool:
        """Whether the store is worth asking now."""

    def admit(self, name: str, config: CircuitBreakerConfig) -> Admission:
        """Admit a call to circuit ``name`` (creating it CLOSED if unknown)."""

    def record(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        outcome: Outcome,
        open_for: float | None,
        why: str,
    ) -> tuple[Outcome, View]:
        """Report a call's outcome; the outcome as counted, and the view."""

    def snapshot(self, name: str, config: CircuitBreakerConfig) -> View:
        """The circuit's current state (applying the lazy OPEN -> HALF_OPEN)."""

    def control(self, name: str, config: CircuitBreakerConfig, action: Control) -> View:
        """Reset, force open or force closed."""


class AsyncStateStore(Protocol):
    """A :class:`StateStore` whose transitions are coroutines (``is_async`` is True)."""

    @property
    def is_async(self) -> bool:
        """True: the methods below are coroutines."""

    @property
    def available(self) -> bool:
        """Whether the store is worth asking now."""

    async def aadmit(self, name: str, config: CircuitBreakerConfig) -> Admission:
        """Admit a call to circuit ``name`` (creating it CLOSED if unknown)."""

    async def arecord(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        outcome: Outcome,
        open_for: float | None,
        why: str,
    ) -> tuple[Outcome, View]:
        """Report a call's outcome; the outcome as counted, and the view."""

    async def asnapshot(self, name: str, config: CircuitBreakerConfig) -> View:
        """The circuit's current state (applying the lazy OPEN -> HALF_OPEN)."""

    async def acontrol(self, name: str, config: CircuitBreakerConfig, action: Control) -> View:
        """Reset, force open or force closed."""
