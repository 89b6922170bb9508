"""The store interface: whole transitions of a named circuit, one call each."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from llm_circuit_breaker._core.permits import THROTTLED
from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._core.views import (
    Admission,
    Control,
    StoreUnavailableError,
    ThrottleNews,
    View,
)
from llm_circuit_breaker.config import CircuitBreakerConfig

if TYPE_CHECKING:
    from llm_circuit_breaker._core.budget import BudgetDelta
    from llm_circuit_breaker._core.headers import RateLimits

__all__ = [
    "THROTTLED",
    "Admission",
    "AsyncStateStore",
    "AsyncStoreCall",
    "Control",
    "Ride",
    "StateStore",
    "StoreCall",
    "StoreUnavailableError",
    "ThrottleNews",
    "View",
]

T = TypeVar("T")
# One of a store's methods, as a link calls it: ``store.admit(name, config, ...)``, and
# ``await store.aadmit(name, config, ...)`` for an asyncio store.
StoreCall = Callable[..., T]
AsyncStoreCall = Callable[..., Awaitable[T]]


@dataclasses.dataclass(slots=True)
class Ride:
    """What a call to a store carries besides its own operation, for a store whose
    ``rides`` is True (given as ``ride=`` to every method but ``control``): a response's
    rate-limit headers to follow first, and a sync of the breaker's budgets (whose answer
    the store sets on it).

    ``landing``: what the sender calls as ``landing(ride, ok=...)`` once a call's fate is
    known. An asyncio store whose caller was cancelled while the call went on (Redis may run
    it anyway) sets ``late`` and calls ``landing`` itself when the call completes: what the
    sync carried is then counted once, by the store's answer, not sent again."""

    limits: RateLimits | None = None
    budget: BudgetDelta | None = None
    landing: Callable[..., None] | None = None
    late: bool = False


class StateStore(Protocol):
    """Keeps circuits by name. Each method is one atomic transition.

    ``is_async`` is False: a store whose client is asyncio is an :class:`AsyncStateStore`.
    ``available`` is False while the store is known to be unreachable. A store whose
    ``rides`` attribute is True also takes ``ride=`` (a :class:`Ride`, or None) on every
    method but ``control``; the others are called without it.
    """

    @property
    def is_async(self) -> bool:
        """False: the methods below are plain calls."""

    @property
    def available(self) -> bool:
        """Whether the store is worth asking now."""

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
        """Admit a call to circuit ``name`` (creating it CLOSED if unknown) and, when its
        throttle paces, reserve its slot (``tokens``: the call's estimated token cost) and up
        to ``lease`` more for the caller's process to hand out (a store may lease none),
        taking back ``unused`` slots (of ``unused_tokens``) of an earlier lease."""

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
        """Report a call's outcome; the outcome as counted, and the view. A ``THROTTLED``
        outcome pauses the throttle ``pause`` seconds (None: the adaptive pause)."""

    def release(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        tokens: float,
        ride: Ride | None = None,
    ) -> View:
        """Give back a throttle slot whose caller will not call (and its permit)."""

    def observe(
        self, name: str, config: CircuitBreakerConfig, limits: RateLimits, ride: Ride | None = None
    ) -> View:
        """Follow a response's rate-limit headers."""

    def snapshot(self, name: str, config: CircuitBreakerConfig, ride: Ride | None = None) -> View:
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

    async def aadmit(
        self,
        name: str,
        config: CircuitBreakerConfig,
        tokens: float = 0.0,
        lease: int = 0,
        unused: int = 0,
        unused_tokens: float = 0.0,
        ride: Ride | None = None,
    ) -> Admission:
        """Admit a call (and reserve its throttle slot; lease and take back as ``admit``)."""

    async def arecord(
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
        """Report a call's outcome; the outcome as counted, and the view."""

    async def arelease(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        tokens: float,
        ride: Ride | None = None,
    ) -> View:
        """Give back a throttle slot whose caller will not call (and its permit)."""

    async def aobserve(
        self, name: str, config: CircuitBreakerConfig, limits: RateLimits, ride: Ride | None = None
    ) -> View:
        """Follow a response's rate-limit headers."""

    async def asnapshot(
        self, name: str, config: CircuitBreakerConfig, ride: Ride | None = None
    ) -> View:
        """The circuit's current state (applying the lazy OPEN -> HALF_OPEN)."""

    async def acontrol(self, name: str, config: CircuitBreakerConfig, action: Control) -> View:
        """Reset, force open or force closed."""
