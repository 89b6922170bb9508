"""The breaker's decisions: a pure, synchronous state machine with no I/O and no lock.

Every method takes ``now`` (seconds on the breaker's clock) and mutates the core; the caller
holds whatever lock makes that atomic and, after releasing it, hands ``transitions`` to the
listeners. OPEN -> HALF_OPEN is computed lazily from ``now``: there are no timers or threads.

Permits are ints drawn from one increasing sequence. A CLOSED call's permit is the state's
generation; a probe's permit (and, with ``slow_call_duration``, every call's) is a fresh number
kept in ``_inflight`` with its admission time. Each state change starts a new generation and
forgets every in-flight permit, so an outcome that arrives after the state changed since its
call was admitted matches nothing and is ignored.

Two conditions are states of the core too, not flags of its callers:

* :class:`Hold` -- whether the circuit moves with its counts (``NONE``) or is held where an
  operator put it (``FORCED_OPEN``: open until :meth:`BreakerCore.close`, whatever successes,
  failures or time pass; ``open_until`` is infinite then, which is what a lock-free reader
  compares against).
* ``enforced`` -- whether a refusal stops the call. A metrics-only core (``enabled=False``)
  decides exactly as an enforcing one, but what it would refuse gets :data:`SHADOW` instead of
  :data:`REJECTED`: a permit the caller lets through, counts once as a refusal not enforced,
  and whose report matches nothing, so the circuit evolves as if the call had not run.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm_circuit_breaker._core.permits import REJECTED, SHADOW

if TYPE_CHECKING:
    from llm_circuit_breaker.config import CircuitBreakerConfig

__all__ = [
    "REJECTED",
    "SHADOW",
    "BreakerCore",
    "CircuitState",
    "FailureWindow",
    "NOT_OPEN",
    "Hold",
    "Outcome",
    "Transition",
]


class CircuitState(str, enum.Enum):
    """The three states of a circuit; the values are the names, so they compare equal to str."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"

    def __str__(self) -> str:
        return self.value


CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
# The lock-free CLOSED path leans on single attribute reads and itertools.count being atomic,
# which holds under the GIL. A free-threaded interpreter takes the lock for every call.
LOCK_FREE = getattr(sys, "_is_gil_enabled", lambda: True)()
_BUCKETS = 20  # resolution of the failure-rate window
# ``open_until`` while not open: one float shared by every core (not one made per core).
NOT_OPEN = -math.inf


class Hold(enum.Enum):
    """Whether a circuit follows its counts or is held where an operator put it."""

    NONE = "none"  # the counts and the clock decide
    FORCED_OPEN = "forced_open"  # open until closed: no success, failure or time moves it


class Outcome(enum.Enum):
    """How a finished call reports to the breaker."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"  # neither: cancellation, the caller's own 4xx, excluded types
    THROTTLED = "throttled"  # a rate limit: not the provider's health; the throttle pauses


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as the core decided it."""

    old: CircuitState
    new: CircuitState
    reason: str
    at: float


class _FailureWindow:
    """Calls and failures over the last ``span`` seconds, in ``_BUCKETS`` time buckets."""

    __slots__ = ("_buckets", "_width", "calls", "failures")

    def __init__(self, span: float) -> None:
        self._width = span / _BUCKETS
        self._buckets: collections.deque[list[int]] = collections.deque()
        self.calls = 0
        self.failures = 0

    def add(self, failed: bool, now: float) -> None:
        index = self.expire(now)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        self.calls += 1
        self.failures += failed

    def expire(self, now: float) -> int:
        index = math.floor(now / self._width)
        while self._buckets and self._buckets[0][0] <= index - _BUCKETS:
            _, calls, failures = self._buckets.popleft()
            self.calls -= calls
            self.failures -= failures
        return index

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = self.failures = 0


FailureWindow = _FailureWindow  # for the local circuit, which sets the core's slots itself


class BreakerCore:
    """The state machine of one circuit. Not thread-safe: the caller serialises access.
    (``LocalCircuit.__init__`` sets these slots itself: keep the two alike.)"""

    __slots__ = (
        "_inflight",
        "_seq",
        "_window",
        "clean_permit",
        "config",
        "failure_count",
        "generation",
        "lock_free_permit",
        "open_reason",
        "open_until",
        "opened_at",
        "paced",
        "state",
        "success_count",
        "transitions",
    )

    def __init__(self, config: CircuitBreakerConfig, *, paced: bool = False) -> None:
        self.config = config
        self.state = CLOSED
        self.failure_count = 0
        self.success_count = 0
        self.opened_at: float | None = None
        self.open_reason = ""
        self.open_until = NOT_OPEN
        self.paced = paced  # a throttle must see every call: no lock-free path
        self.transitions: list[Transition] | None = None  # made by the first state change
        self._seq = 0
        self.generation = 0
        self._inflight: dict[int, float] | None = None  # made by the first tracked admission
        rate_mode = config.failure_rate_threshold is not None
        self._window = _FailureWindow(config.effective_window) if rate_mode else None
        # Readable without the lock: the permit of a CLOSED call that needs no bookkeeping at
        # admission (-1 when it does), and the same once no failures are pending (a success
        # with that permit changes nothing but the statistics).
        self.lock_free_permit = REJECTED
        self.clean_permit = REJECTED
        if not paced:  # paced: both stay -1
            self._refresh()

    # -- reading ---------------------------------------------------------------------------

    @property
    def enforced(self) -> bool:
        """Whether a refusal stops the call. Metrics-only (``enabled=False``): the same
        decisions, but what is refused gets a shadow permit that the caller lets through
        (counted once, as a refusal not enforced)."""
        return self.config.enabled

    @property
    def refusal(self) -> int:
        """What :meth:`admit` gives a call it refuses: ``REJECTED``, or ``SHADOW`` when not
        enforced."""
        return REJECTED if self.config.enabled else SHADOW

    def advance(self, now: float) -> None:
        """Apply the lazy OPEN -> HALF_OPEN transition once ``reset_timeout`` has passed (never
        while held open)."""
        if self.state is OPEN and now >= self.open_until:  # never while held (infinite)
            self._move(HALF_OPEN, now, "reset timeout elapsed")

    @property
    def hold(self) -> Hold:
        """Whether the circuit follows its counts (``NONE``) or is held open (``FORCED_OPEN``):
        held exactly while ``open_until`` is infinite (every other open lasts finite seconds),
        so the hold needs no attribute of its own."""
        return Hold.FORCED_OPEN if self.open_until == math.inf else Hold.NONE

    @property
    def held_open(self) -> bool:
        """Forced open: held open until closed (``open_until`` is infinite meanwhile)."""
        return self.open_until == math.inf

    def retry_after(self, now: float) -> float | None:
        """Seconds until a call may be admitted (0.0 when one may be now; None when held)."""
        self.advance(now)
        if self.state is OPEN:
            return None if self.held_open else max(0.0, self.open_until - now)
        inflight = self._inflight
        if (
            self.state is HALF_OPEN
            and inflight
            and len(inflight) >= self.config.half_open_max_calls
        ):
            lease = self.config.half_open_probe_timeout
            return max(0.0, min(inflight.values()) + lease - now)
        return 0.0

    # -- admitting and recording -----------------------------------------------------------

    def admit(self, now: float) -> int:
        """Return a permit for a call starting at ``now``, or :attr:`refusal` (``REJECTED``;
        ``SHADOW`` in metrics-only mode: a call to let through that matches no permit)."""
        self.advance(now)
        if self.state is CLOSED:
            if self.config.slow_call_duration is None:  # no call to time
                return self.generation
        elif self.state is OPEN:
            return self.refusal
        else:
            self._expire_leases(now)
            if self._inflight and len(self._inflight) >= self.config.half_open_max_calls:
                return self.refusal
        self._seq += 1
        inflight = self._inflight
        if inflight is None:
            inflight = self._inflight = {}
        inflight[self._seq] = now
        return self._seq

    def report(
        self,
        permit: int,
        outcome: Outcome,
        now: float,
        *,
        open_for: float | None = None,
        why: str = "",
    ) -> Outcome:
        """Apply a finished call's outcome and return it as counted (a slow success fails).

        ``open_for`` asks for the circuit to open for that many seconds on a failure (a
        server's long retry hint, or quota exhaustion); ``why`` says which, for the listeners.
        """
        started = self._inflight.pop(permit, None) if self._inflight else None
        if started is None and not (self.state is CLOSED and permit == self.generation):
            return outcome  # admitted under an earlier state, or a probe whose lease ran out
        slow = self.config.slow_call_duration
        took = 0.0 if started is None else now - started
        if outcome is Outcome.SUCCESS and slow is not None and took > slow:
            outcome, why = Outcome.FAILURE, f"slow call ({took:.3f}s > {slow:g}s)"
        if outcome is Outcome.IGNORED or outcome is Outcome.THROTTLED:
            return outcome
        if self.state is HALF_OPEN:
            self._record_probe(outcome is Outcome.SUCCESS, now, open_for, why)
        else:
            self._record_closed(outcome is Outcome.SUCCESS, now, open_for, why)
        return outcome

    def _record_probe(self, ok: bool, now: float, open_for: float | None, why: str) -> None:
        if ok:
            self.success_count += 1
            if self.success_count >= self.config.success_threshold:
                self._move(CLOSED, now, f"{self.success_count} probe successes")
            return
        reason = "probe failed" + (f": {why}" if why else "")
        self._open(now, max(self.config.reset_timeout, self._capped(open_for)), reason)

    def _record_closed(self, ok: bool, now: float, open_for: float | None, why: str) -> None:
        window = self._window
        if window is not None:
            window.add(not ok, now)
        if ok:
            if self.failure_count:
                self.failure_count = 0
                self._refresh()
            if window is not None:  # the call that reaches minimum_calls may be a success
                self._check_rate(window, now)
            return
        self.failure_count += 1
        self._refresh()
        config = self.config
        if open_for is not None:
            self._open(now, self._capped(open_for), why or f"server asked to wait {open_for:g}s")
        elif self.failure_count >= config.failure_threshold:
            self._open(now, config.reset_timeout, f"{self.failure_count} consecutive failures")
        elif window is not None:
            self._check_rate(window, now)

    def _check_rate(self, window: _FailureWindow, now: float) -> None:
        """Open when, over the window and once ``minimum_calls`` were seen, the share of
        failures reaches ``failure_rate_threshold``: after any call, whatever its outcome."""
        config = self.config
        if window.calls >= config.effective_minimum_calls:
            rate = window.failures / window.calls
            if rate >= (config.failure_rate_threshold or 1.0):
                span = config.effective_window
                reason = f"failure rate {rate:.0%} over {window.calls} calls in {span:g}s"
                self._open(now, config.reset_timeout, reason)

    # -- manual control --------------------------------------------------------------------

    def force_open(self, now: float) -> None:
        """Open the circuit and hold it open until :meth:`close` is called (``open_until``
        infinite: the hold)."""
        self._open(now, math.inf, "forced open")

    def close(self, now: float, reason: str) -> None:
        """Close the circuit with clean counts and an empty window (ending a hold)."""
        if self.state is not CLOSED:
            self._move(CLOSED, now, reason)
        self.failure_count = 0
        if self._window is not None:
            self._window.clear()
        self._refresh()

    # -- internals -------------------------------------------------------------------------

    def _capped(self, open_for: float | None) -> float:
        """A server-directed open lasts at most ``max_open_for`` (a hint may be absurd)."""
        return min(open_for or 0.0, self.config.effective_max_open_for)

    def _open(self, now: float, duration: float, reason: str) -> None:
        self._move(OPEN, now, reason)
        self.opened_at = now
        self.open_reason = reason
        self.open_until = now + duration

    def _move(self, new: CircuitState, now: float, reason: str) -> None:
        change = Transition(self.state, new, reason, now)
        if self.transitions is None:
            self.transitions = [change]
        else:
            self.transitions.append(change)
        self.state = new
        self._seq += 1
        self.generation = self._seq
        if self._inflight:
            self._inflight.clear()
        self.success_count = 0
        if new is not OPEN:
            self.failure_count = 0
            self.opened_at = None
            self.open_reason = ""
            self.open_until = NOT_OPEN
        if self._window is not None:
            self._window.clear()
        self._refresh()

    def _expire_leases(self, now: float) -> None:
        inflight = self._inflight
        if not inflight:
            return
        deadline = now - self.config.half_open_probe_timeout
        for permit in [p for p, started in inflight.items() if started <= deadline]:
            del inflight[permit]

    def drain(self) -> Sequence[Transition]:
        """Take the pending state changes (the caller hands them to the listeners)."""
        transitions = self.transitions
        if transitions is None:
            return ()
        self.transitions = None
        return transitions

    def set_paced(self, paced: bool) -> None:
        """Whether every admission and success must reach the caller's throttle."""
        if paced is not self.paced:
            self.paced = paced
            self._refresh()

    def _refresh(self) -> None:
        simple = (
            LOCK_FREE
            and self.state is CLOSED
            and self.config.slow_call_duration is None
            and not self.paced
        )
        self.lock_free_permit = self.generation if simple else REJECTED
        quiet = not self.failure_count and self._window is None
        self.clean_permit = self.lock_free_permit if quiet else REJECTED
