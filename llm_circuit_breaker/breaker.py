"""``CircuitBreaker``: the pure core behind a lock that never spans the caller's call."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from llm_circuit_breaker._state import REJECTED, BreakerCore, Outcome, Transition
from llm_circuit_breaker.config import CircuitBreakerConfig, CircuitState
from llm_circuit_breaker.errors import CircuitOpenError

if TYPE_CHECKING:
    from llm_circuit_breaker.storage.base import StateStore

__all__ = [
    "SHADOW_PERMIT",
    "BreakerStats",
    "CircuitBreaker",
    "Clock",
    "Listener",
    "Observer",
    "StateChange",
]

logger = logging.getLogger("llm_circuit_breaker")

Clock = Callable[[], float]
OPEN = CircuitState.OPEN
# CircuitOpenError built by BaseException.__new__ alone: C code, no Python frame (hot path).
_refused = functools.partial(CircuitOpenError.__new__, CircuitOpenError)


@dataclasses.dataclass(frozen=True, slots=True)
class StateChange:
    """A circuit moved from ``old`` to ``new`` at ``at`` (seconds on the breaker's clock)."""

    name: str
    old: CircuitState
    new: CircuitState
    at: float
    reason: str


Listener = Callable[[StateChange], object]

# The permit of a call that a metrics-only breaker would have refused: it runs, and its
# outcome matches no permit of the state machine, so the circuit evolves as if it had not run.
SHADOW_PERMIT = 1 << 62


class Observer(Protocol):
    """Hears of refusals and retries as they happen (what listeners do for state changes)."""

    def rejected(self, breaker: CircuitBreaker, enforced: bool) -> None:
        """A call was refused (``enforced`` False: a metrics-only breaker let it through)."""

    def retried(
        self, breaker: CircuitBreaker, attempt: int, error: BaseException, delay: float
    ) -> None:
        """``with_retry`` will retry after ``attempt`` failed with ``error``, in ``delay`` s."""


class _Tally:
    """A counter that threads may bump without a lock (``itertools.count`` is atomic)."""

    __slots__ = ("_count", "add")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.add = self._count.__next__

    @property
    def value(self) -> int:
        return int(repr(self._count)[6:-1])  # "count(N)": reading it does not bump it


def _check_report(permit: object, outcome: object, open_for: float | None) -> None:
    """Refuse a malformed report before it can touch the state machine."""
    if permit.__class__ is not int:
        raise TypeError(f"permit must be the int that admit() returned, got {permit!r}")
    if outcome.__class__ is not Outcome:
        raise TypeError(f"outcome must be an Outcome, got {outcome!r}")
    if open_for is not None and not (0.0 <= open_for < float("inf")):
        raise ValueError(f"open_for must be a finite number of seconds >= 0, got {open_for!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerStats:
    """Counts since the breaker was made. ``calls`` = successes + failures + ignored."""

    calls: int
    successes: int
    failures: int
    ignored: int
    rejections: int
    retries: int
    state_changes: dict[str, int]


class CircuitBreaker:
    """One circuit, shared by every caller that names it.

    ``state`` reads OPEN -> HALF_OPEN lazily from the clock (``clock=`` returns monotonic
    seconds; inject one in tests). Calls are admitted with :meth:`admit` and report with
    :meth:`record_success` / :meth:`record`; the decorators and the HTTP helpers do that for
    you. Thread-safe and asyncio-safe: the lock is held only while the core decides.
    """

    is_async = False  # True when the state lives in an asyncio store (coroutines only)

    def __new__(
        cls,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        store: StateStore | None = None,
    ) -> CircuitBreaker:
        if store is not None and cls is CircuitBreaker:
            from llm_circuit_breaker._shared import SharedCircuitBreaker

            return super().__new__(SharedCircuitBreaker)
        return super().__new__(cls)

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        store: StateStore | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a circuit breaker needs a non-empty str name, got {name!r}")
        if store is not None:
            raise TypeError(
                f"{type(self).__name__} keeps its state itself; store= needs CircuitBreaker"
            )
        if config is not None and not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {type(config).__name__}")
        self.name = name
        self.config = config or CircuitBreakerConfig()
        self._clock: Clock = clock or time.monotonic
        self._core = BreakerCore(self.config)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._observers: list[Observer] = []
        # Refusals need no more than a count: enforced, and nobody to tell.
        self._plain_refusals = self.config.enabled
        self._successes, self._failures, self._ignored = _Tally(), _Tally(), _Tally()
        self._rejections, self._retries = _Tally(), _Tally()
        # Bound once: the CLOSED success path and the fail-fast path call them.
        self._count_success = self._successes.add
        self._count_rejection = self._rejections.add
        self._changes = {state: _Tally() for state in CircuitState}

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (HALF_OPEN as soon as ``reset_timeout`` has passed)."""
        with self._lock:
            self._core.advance(self._clock())
            state = self._core.state
            transitions = self._drain()
        self._publish(transitions)
        return state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted in CLOSED."""
        return self._core.failure_count

    @property
    def success_count(self) -> int:
        """Consecutive probe successes counted in HALF_OPEN."""
        return self._core.success_count

    @property
    def retry_after(self) -> float | None:
        """Seconds until a call is admitted: 0.0 when now, ``None`` while held open."""
        with self._lock:
            retry_after = self._core.retry_after(self._clock())
            transitions = self._drain()
        self._publish(transitions)
        return retry_after

    @property
    def stats(self) -> BreakerStats:
        """Calls, successes, failures, ignored, rejections, retries and state changes."""
        successes, failures, ignored = (
            t.value for t in (self._successes, self._failures, self._ignored)
        )
        return BreakerStats(
            calls=successes + failures + ignored,
            successes=successes,
            failures=failures,
            ignored=ignored,
            rejections=self._rejections.value,
            retries=self._retries.value,
            state_changes={state.value: tally.value for state, tally in self._changes.items()},
        )

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable view: state, counts, ``opened_at``, ``retry_after``, stats."""
        with self._lock:
            now = self._clock()
            retry_after = self._core.retry_after(now)
            core = self._core
            view: dict[str, Any] = {
                "state": core.state.value,
                "failure_count": core.failure_count,
                "success_count": core.success_count,
                "opened_at": core.opened_at,
                "retry_after": retry_after,
            }
            transitions = self._drain()
        self._publish(transitions)
        view["stats"] = dataclasses.asdict(self.stats)
        return view

    # -- guarding calls --------------------------------------------------------------------

    def admit(self) -> int:
        """Admit one call and return its permit, or raise :class:`CircuitOpenError`."""
        entry = self.enter()
        if isinstance(entry, CircuitOpenError):
            try:
                raise entry
            finally:
                del entry  # else frame -> error -> traceback -> frame: a cycle for the GC
        return entry

    def try_admit(self) -> int:
        """Admit one call: its permit, or ``-1`` when the circuit refuses it (counted)."""
        entry = self.enter()
        return entry if entry.__class__ is int else REJECTED

    def enter(self) -> int | CircuitOpenError:
        """Admit one call: its permit, or the :class:`CircuitOpenError` that says why not.

        What the decorators and helpers call: a refused call costs one function call, and the
        error comes ready to raise, with ``retry_after`` computed from the same instant.
        """
        core = self._core
        permit = core.lock_free_permit
        if permit >= 0:
            return permit
        now = self._clock()
        open_until = core.open_until
        if now < open_until and core.state is OPEN:  # failing fast needs no lock either
            self._count_rejection()
            refusal = _refused(self.name, None if core.held_open else open_until - now)
            return refusal if self._plain_refusals else self._refused(refusal)
        with self._lock:
            permit = core.admit(now)
            retry_after = core.retry_after(now) if permit == REJECTED else 0.0
            transitions = self._drain()
        self._publish(transitions)
        if permit == REJECTED:
            self._count_rejection()
            refusal = _refused(self.name, retry_after)
            return refusal if self._plain_refusals else self._refused(refusal)
        return permit

    def _refused(self, refusal: CircuitOpenError) -> int | CircuitOpenError:
        """A refusal that observers hear of, or that a metrics-only breaker waves through."""
        enforced = self.config.enabled
        for observer in list(self._observers):
            try:
                observer.rejected(self, enforced)
            except Exception:  # noqa: PERF203 - an observer's bug must not touch the call
                logger.exception("observer %r of circuit %r raised", observer, self.name)
        if enforced:
            return refusal
        logger.debug("circuit %r would have refused a call (metrics-only)", self.name)
        return SHADOW_PERMIT

    def record_success(self, permit: int) -> None:
        """Report that the call holding ``permit`` succeeded."""
        if permit == self._core.clean_permit:  # nothing to change but the count
            self._count_success()
            return
        self.record(permit, Outcome.SUCCESS)

    def record(
        self,
        permit: int,
        outcome: Outcome,
        *,
        open_for: float | None = None,
        why: str = "",
    ) -> None:
        """Report a finished call; ``open_for`` opens the circuit that long on a failure."""
        _check_report(permit, outcome, open_for)
        with self._lock:
            counted = self._core.record(permit, outcome, self._clock(), open_for=open_for, why=why)
            transitions = self._drain()
        self._tally(counted)
        self._publish(transitions)

    def _tally(self, outcome: Outcome) -> None:
        if outcome is Outcome.SUCCESS:
            self._count_success()
        elif outcome is Outcome.FAILURE:
            self._failures.add()
        else:
            self._ignored.add()

    def record_retry(self, attempt: int, error: BaseException, delay: float) -> None:
        """Count a retry of a call guarded by this breaker (``with_retry`` calls it)."""
        self._retries.add()
        for observer in list(self._observers):
            try:
                observer.retried(self, attempt, error, delay)
            except Exception:  # noqa: PERF203 - an observer's bug must not touch the call
                logger.exception("observer %r of circuit %r raised", observer, self.name)

    # -- manual control and listeners ------------------------------------------------------

    def reset(self) -> None:
        """Close the circuit with clean counts (statistics are kept)."""
        self._close("reset")

    def force_closed(self) -> None:
        """Close the circuit now, ending a forced or timed open; counting starts afresh."""
        self._close("forced closed")

    def force_open(self) -> None:
        """Open the circuit and hold it open, with no probes, until it is reset or closed."""
        with self._lock:
            self._core.force_open(self._clock())
            transitions = self._drain()
        self._publish(transitions)

    def _close(self, reason: str) -> None:
        with self._lock:
            self._core.close(self._clock(), reason)
            transitions = self._drain()
        self._publish(transitions)

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` of refusals and retries (the metrics exporters use this)."""
        self._observers.append(observer)
        self._plain_refusals = False

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(StateChange)`` after every state change (outside the lock)."""
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {listener!r}")
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    def _drain(self) -> Sequence[Transition]:
        """Take the core's pending transitions (call with the lock held)."""
        transitions = self._core.transitions
        if not transitions:
            return ()  # never hand out the core's own list: others append to it later
        self._core.transitions = []
        return transitions

    def _publish(self, transitions: Sequence[Transition]) -> None:
        for t in transitions:
            self._changes[t.new].add()
            logger.warning("circuit %r %s -> %s: %s", self.name, t.old.value, t.new.value, t.reason)
            self._notify(StateChange(self.name, t.old, t.new, t.at, t.reason))

    def _notify(self, change: StateChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # noqa: PERF203 - one listener's bug must not stop the rest
                logger.exception(
                    "state-change listener %r of circuit %r raised", listener, self.name
                )

    def __repr__(self) -> str:
        core = self._core
        return (
            f"CircuitBreaker({self.name!r}, state={core.state.value}, "
            f"failure_count={core.failure_count}, success_count={core.success_count})"
        )
