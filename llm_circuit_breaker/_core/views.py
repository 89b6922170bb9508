"""What a store answers (views, admissions), apart from the store protocols, so that a breaker
without a store never loads those."""

from __future__ import annotations

import dataclasses
from typing import Literal

from llm_circuit_breaker._core.state import CircuitState, Transition

__all__ = [
    "Admission",
    "Control",
    "StoreUnavailableError",
    "ThrottleNews",
    "View",
]

Control = Literal["reset", "force_open", "force_closed"]
# What a store's throttle reports: paused_for, requests_remaining, tokens_remaining, reset_in.
ThrottleView = dict[str, float | int | None]


@dataclasses.dataclass(frozen=True, slots=True)
class ThrottleNews:
    """The throttle paused (``paused`` True, for ``pause`` seconds) or resumed, by this call."""

    paused: bool
    reason: str
    pause: float = 0.0


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
    throttle: ThrottleView | None = None  # None: the store keeps no throttle for it
    news: ThrottleNews | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """The result of admitting a call: a permit (``-1`` when the circuit refused it,
    ``THROTTLED`` when the throttle did), the view, and the seconds the caller waits
    for its throttle slot (reserved for it; the wait when refused), and the waits of the slots
    leased with it."""

    permit: int
    view: View
    wait: float = 0.0
    lease: tuple[float, ...] = ()  # more slots reserved for this process: their waits
