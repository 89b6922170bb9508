"""``LocalCircuit``: the pure core behind a lock that never spans the caller's call.

What a breaker without a store runs, and what a store-backed breaker falls back to while its
store is unreachable. In CLOSED a call takes no lock: admission reads one attribute and a clean
success bumps a counter; failing fast in OPEN needs no lock either. One object per breaker: the
state machine, the counts and hooks, the throttle's place.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from llm_circuit_breaker._core.permits import REJECTED, SHADOW, is_refusal
from llm_circuit_breaker._core.state import (
    LOCK_FREE,
    NOT_OPEN,
    BreakerCore,
    CircuitState,
    FailureWindow,
    Outcome,
)
from llm_circuit_breaker._core.throttle import TOKEN_COST, ThrottleCore, Wait, spread
from llm_circuit_breaker._core.views import Control, View
from llm_circuit_breaker.breaker import clock
from llm_circuit_breaker.breaker.clock import TimeSource
from llm_circuit_breaker.breaker.telemetry import NOT_OPEN_YET, Telemetry, _counting, refused
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError

__all__ = ["Entry", "LocalCircuit", "check_report"]

# What an admission hands back: a permit, a refusal to raise, or a throttle slot to wait for.
Entry = int | CircuitOpenError | ThrottledError | Wait

OPEN, CLOSED = CircuitState.OPEN, CircuitState.CLOSED
_INF = float("inf")
_new = BaseException.__new__
_NOT_OPEN_YET = NOT_OPEN_YET

# The locks of the local circuits: a circuit takes one of these, chosen by its id, instead of a
# lock of its own (100k breakers, a few dozen locks). A circuit's lock guards only its state
# for a few lines and never spans a call, nor another circuit's lock: a shared one serialises
# at worst two circuits' bookkeeping, never deadlocks.
_STRIPES = tuple(threading.Lock() for _ in range(67))  # a prime: ids are multiples of 16
_N_STRIPES = len(_STRIPES)


def check_report(permit: object, outcome: object, open_for: float | None) -> None:
    """Refuse a malformed report before it can touch the state machine."""
    if permit.__class__ is not int:
        raise TypeError(f"permit must be the int that admit() returned, got {permit!r}")
    if outcome.__class__ is not Outcome:
        raise TypeError(f"outcome must be an Outcome, got {outcome!r}")
    if open_for is not None and not (0.0 <= open_for < float("inf")):
        raise ValueError(f"open_for must be a finite number of seconds >= 0, got {open_for!r}")


class LocalCircuit(BreakerCore, Telemetry):
    """One circuit decided in this process (thread- and asyncio-safe), in one object: its
    :class:`BreakerCore` (the state machine itself, not a part held apart), its throttle,
    its :class:`Telemetry` (counts, listeners, observers), and a lock-free path in CLOSED and
    for failing fast. Its lock is one of a few shared ones; it holds a circuit as a
    ``MemoryStateStore``'s ``Cell`` does (the core, the throttle, a lock)."""

    # BreakerCore's slots, and: Telemetry's (``_counts`` ... ``template``), the throttle
    # (made on first need, at once when rates are configured), the cause of the last opening,
    # the registry's ``rejoin`` and the time source.
    __slots__ = (
        "_counts",
        "_hooks",
        "_rejections",
        "_successes",
        "_waits",
        "breaker",
        "cause",
        "name",
        "plain_refusals",
        "rejoin",
        "source",
        "template",
        "throttle",
    )

    def __init__(self, name: str, config: CircuitBreakerConfig, source: TimeSource) -> None:
        # The core's slots set here, as ``BreakerCore.__init__`` sets them (one frame fewer:
        # making a breaker is a hot path too), with its lock-free permits set, not refreshed:
        # CLOSED, generation 0, no clean permit before the success counter is made.
        self.config = config
        self.state = CLOSED
        self.failure_count = 0
        self.success_count = 0
        self.opened_at = None
        self.open_reason = ""
        self.open_until = NOT_OPEN
        self.transitions = None  # made by the first state change
        self._seq = 0
        self.generation = 0
        self._inflight = None  # made by the first tracked admission
        self._window = (
            None
            if config.failure_rate_threshold is None
            else FailureWindow(config.effective_window)
        )
        self.clean_permit = REJECTED
        # The throttle: made at once when rates are configured. Paced (every call on the
        # slow path) while it has a say.
        if config.requests_per_minute is None and config.tokens_per_minute is None:
            self.throttle = throttle = None
        else:
            self.throttle = throttle = ThrottleCore(config) if config.throttle else None
        if throttle is None or not throttle.active:
            self.paced = False
            simple = LOCK_FREE and config.slow_call_duration is None
            self.lock_free_permit = 0 if simple else REJECTED
        else:
            self.paced = True
            self.lock_free_permit = REJECTED
        self.cause: BaseException | None = None  # the error that last opened the circuit
        # Set while the registry has forgotten this circuit: the next call puts it back.
        self.rejoin: Callable[[], None] | None = None
        self.source = source
        # Telemetry's attributes (set here, where every breaker is made). Successes
        # are an int until the lock-free counter is made (by the second clean success: a
        # circuit called once makes none); the fail-fast path's counter is made by the
        # first report or control that can open the circuit.
        self.name = name
        self.breaker = None
        self.template = None
        self._successes = 0
        self._hooks = ()
        self._rejections = NOT_OPEN_YET
        self._counts = None
        self._waits = None
        self.plain_refusals = config.enabled

    @property
    def core(self) -> LocalCircuit:
        """The state machine: this circuit itself."""
        return self

    def locked(self) -> threading.Lock:
        """This circuit's lock: one of the shared stripes, chosen by its id."""
        return _STRIPES[id(self) % _N_STRIPES]

    def made_throttle(self) -> ThrottleCore | None:
        """The throttle, made now if this circuit paces and has none yet (lock held)."""
        throttle = self.throttle
        if throttle is None and self.config.throttle:
            throttle = self.throttle = ThrottleCore(self.config)
        return throttle

    def throttle_now(self, now: float) -> dict[str, float | int | None] | None:
        """What the throttle says (a new one's word while none is made; lock held), None
        without a throttle."""
        throttle = self.throttle
        if throttle is None and self.config.throttle:  # nothing learned yet
            throttle = ThrottleCore(self.config)
        return None if throttle is None else throttle.view(now)

    def _follow_throttle(self) -> None:
        """Send every call through the slow path while the throttle has a say (lock held)."""
        throttle = self.throttle
        active = throttle is not None and throttle.active
        if throttle is not None and not active and throttle.flying:
            # the calls in flight report on the fast path from now: none would leave
            throttle.flying.clear()
        self.set_paced(active or self.rejoin is not None)

    def _refresh(self) -> None:
        """The core's lock-free permits (``BreakerCore._refresh``, inline), with no clean one
        (a success that changes nothing but the count) until the success counter is made."""
        simple = (
            LOCK_FREE
            and self.state is CLOSED
            and self.config.slow_call_duration is None
            and not self.paced
        )
        self.lock_free_permit = permit = self.generation if simple else REJECTED
        quiet = not self.failure_count and self._window is None
        armed = self._successes.__class__ is not int
        self.clean_permit = permit if quiet and armed else REJECTED

    def _quiet(self, permit: int) -> bool:
        """Whether a success or an ignored call with ``permit`` changes nothing but the counts
        (what ``clean_permit`` says once the success counter is made)."""
        return (
            permit == self.lock_free_permit
            and permit >= 0
            and not self.failure_count
            and self._window is None
        )

    def _armed(self) -> itertools.count[int]:
        """Make the lock-free success counter (the second clean success) if none is made yet,
        and open the clean path: a circuit called once makes none."""
        counter = self.success_counter()
        with self.locked():
            self._refresh()
        return counter

    def detach(self, rejoin: Callable[[], None]) -> None:
        """The registry forgot this circuit: the next admission calls ``rejoin`` first (until
        then every call takes the slow path, which is where it looks)."""
        with self.locked():
            self.rejoin = rejoin
            self._follow_throttle()

    def return_to_registry(self) -> None:
        """Call the pending ``rejoin`` (once) and take the fast path again."""
        rejoin, self.rejoin = self.rejoin, None
        if rejoin is not None:
            rejoin()
        with self.locked():
            self._follow_throttle()

    # -- admitting and recording -----------------------------------------------------------

    def enter(self) -> Entry:
        """Admit one call: its permit, the :class:`CircuitOpenError` that says why not, the
        :class:`ThrottledError` when its throttle slot is too far away, or the ``Wait`` for a
        slot within ``throttle_max_wait``."""
        permit = self.lock_free_permit
        if permit >= 0:
            return permit
        now = self.source.now()  # the one clock read of a refusal
        open_until = self.open_until
        if now < open_until and self.state is OPEN:  # failing fast needs no lock either
            # Built by BaseException.__new__ alone (C code, no __init__, no partial); open_until
            # is infinite only while held open (forced): retry_after is None then.
            error = _new(
                CircuitOpenError,
                self.name,
                None if open_until == _INF else open_until - now,
                self.open_reason,
            )
            error.__cause__ = self.cause
            next(self._rejections)  # the builtin: cheaper than a bound ``__next__``
            if self.plain_refusals:  # enforced, nobody to tell
                return error
            return self.observed(error, self.refusal)
        if self.rejoin is not None:
            self.return_to_registry()
        with _STRIPES[id(self) % _N_STRIPES]:  # ``locked()``, inline
            permit = self.admit(now)
            refusal = is_refusal(permit)  # SHADOW: metrics-only, let through
            retry_after = self.retry_after(now) if refusal else 0.0
            reason = self.open_reason or "half-open: probe slots taken"
            paced = not refusal and self.paced
            entry = self._pace(permit, now) if paced else permit
            transitions = self.drain()
        if transitions:
            self.publish(transitions)
        if refusal:
            return self._refuse(permit, retry_after, reason)
        if entry.__class__ is ThrottledError:
            self.count_throttle_refusal()
        elif paced and not self.plain_refusals:
            self.tell_waited(entry.seconds if isinstance(entry, Wait) else 0.0)
        return entry

    def _pace(
        self, permit: int, now: float, tokens: float | None = None
    ) -> int | ThrottledError | Wait:
        """The throttle's say on an admitted call (lock held)."""
        throttle = self.throttle
        if throttle is None:  # pragma: no cover - paced with a throttle only
            return permit
        if tokens is None:
            tokens = TOKEN_COST.get()
        max_wait = self.config.throttle_max_wait
        wait = throttle.book(now, tokens, max_wait)
        if wait <= 0.0:
            self.waits.add(0.0)
            return permit
        if wait > max_wait:
            self.report(permit, Outcome.IGNORED, now)
            return ThrottledError(self.name, wait)
        throttle.waiting += 1
        self.waits.add(wait)
        return Wait(permit, wait, tokens, now + wait)

    def waited(self, wait: Wait, *, gave_up: bool) -> Wait | ThrottledError | None:
        """A caller woke up for its slot, or gave it up (cancelled: the slot is freed). A rate
        limit that paused calls after the slot was booked, past it, holds the caller back: a
        new slot after the pause (another wait), or ``ThrottledError`` past the longest wait."""
        again: int | ThrottledError | Wait = wait.permit
        with self.locked():
            now, throttle = self.source.now(), self.throttle
            if throttle is not None:
                throttle.waiting -= 1
                rebook = not gave_up and throttle.paused_until > max(wait.at, now)
                if gave_up or rebook:
                    throttle.cancel(wait.tokens)
                if rebook:
                    again = self._pace(wait.permit, now, wait.tokens)
            if gave_up:
                self.report(wait.permit, Outcome.IGNORED, now)
            transitions = self.drain()
        self.publish(transitions)
        if isinstance(again, int):
            return None
        if isinstance(again, ThrottledError):
            self.count_throttle_refusal()
        elif isinstance(again, Wait) and not self.plain_refusals:
            self.tell_waited(again.seconds)
        return again

    def _refuse(
        self, permit: int, retry_after: float | None, reason: str
    ) -> int | CircuitOpenError:
        """Count the core's refusal ``permit``: the error to raise, or ``SHADOW`` to let the
        call through (metrics-only)."""
        error = refused(self.name, retry_after, reason)
        error.__cause__ = self.cause
        self.count_rejection()
        return self.observed(error, permit)

    def record_success(self, permit: int) -> None:
        """Report that the call holding ``permit`` succeeded."""
        if permit == self.clean_permit:  # nothing to change but the count
            next(self._successes)  # type: ignore[arg-type]  # made before the clean path opens
            return
        if (
            permit == self.lock_free_permit
            and not self.failure_count
            and permit >= 0
            and self._window is None
        ):  # clean (see ``_quiet``), but the clean path is not open yet
            if self._successes:  # a success counted before (or a counter made elsewhere)
                next(self._armed())
                return
            # the first: an int, under the counting lock (bare acquire / release: a scope's
            # first call is a hot path too)
            _counting.acquire()
            successes = self._successes
            if isinstance(successes, int):
                self._successes = successes + 1  # the second success makes the counter
                _counting.release()
                return
            _counting.release()
            next(successes)  # the counter, made meanwhile
            return
        self.record(permit, Outcome.SUCCESS)

    def record_abandoned(self, permit: int) -> None:
        """Report that the caller stopped reading the result of the call holding ``permit``
        (neither outcome: counted as ignored)."""
        if self.throttle is None and (permit == self.clean_permit or self._quiet(permit)):
            self.tally(Outcome.IGNORED)  # nothing to change but the count
            return
        self.record(permit, Outcome.IGNORED)

    def record(
        self,
        permit: int,
        outcome: Outcome,
        *,
        open_for: float | None = None,
        why: str = "",
        error: BaseException | None = None,
        hint: float | None = None,
    ) -> Outcome:
        """Report a finished call; ``open_for`` opens the circuit that long on a failure.
        ``error`` is kept as the cause of later refusals if this report opens the circuit;
        ``hint`` is the server's wait for a rate limit (``THROTTLED``)."""
        check_report(permit, outcome, open_for)
        if self._rejections is _NOT_OPEN_YET and (
            outcome is Outcome.FAILURE or self.config.slow_call_duration is not None
        ):  # this report may open the circuit: its fail-fast path counts with this
            self.rejection_count()
        with _STRIPES[id(self) % _N_STRIPES]:  # ``locked()``, inline
            now = self.source.now()
            counted = self.report(permit, outcome, now, open_for=open_for, why=why)
            throttle = self.throttle
            if throttle is None and outcome is Outcome.THROTTLED:
                throttle = self.made_throttle()
            news = None
            if throttle is not None:
                news = throttle.report(
                    now, outcome is Outcome.THROTTLED, outcome is Outcome.SUCCESS, spread(hint)
                )
                self._follow_throttle()
            transitions = self.drain()
        if transitions and transitions[-1].new is OPEN:
            self.cause = error
        if permit != SHADOW:  # a metrics-only pass-through counted once, as its rejection
            self.tally(counted)
        if transitions:
            self.publish(transitions)
        if news is not None:
            self.throttle_event(*news, at=now)
        if self.rejoin is not None and counted is Outcome.FAILURE:
            self.return_to_registry()  # a forgotten circuit's failure is the registry's news
        return counted

    # -- reading and control ---------------------------------------------------------------

    @property
    def now(self) -> Callable[[], float]:
        """The breaker's clock (the library's, read anew each time, unless it has its own)."""
        return clock.now if self.source is clock.SHARED else self.source.now

    def observe(self, headers: object) -> None:
        """Feed a response's rate-limit headers to the throttle."""
        if not self.config.throttle:
            return
        import time

        from llm_circuit_breaker._core.headers import parse_rate_limits

        limits = parse_rate_limits(headers, time.time())
        if limits is None:
            return
        with self.locked():
            throttle = self.made_throttle()
            if throttle is not None:
                throttle.observe(limits, self.source.now())
            self._follow_throttle()

    @property
    def idle(self) -> bool:
        """CLOSED with nothing counted, nothing paced and nobody waiting: dropping the
        circuit loses no state (a registry may drop idle scoped breakers)."""
        throttle = self.throttle
        return (
            self.state is CircuitState.CLOSED
            and not self.failure_count
            and self.rejoin is None
            and (
                throttle is None
                or (not throttle.waiting and throttle.quiet and not throttle.active)
            )
            and (self._window is None or not self._window_failures())
        )

    def _window_failures(self) -> int:
        """The failures the sliding window still holds (the expired ones forgotten now)."""
        window = self._window
        if window is None or not window.failures:
            return 0
        with self.locked():
            window.expire(self.source.now())
            return window.failures

    def throttle_view(self) -> dict[str, float | int | None]:
        """What the throttle says now (all None/0 without a throttle)."""
        with self.locked():
            view = self.throttle_now(self.source.now())
        if view is None:
            return dict.fromkeys(
                ("paused_for", "requests_remaining", "tokens_remaining", "reset_in"), None
            ) | {"waiting": 0}
        return view

    def view(self) -> View:
        """The circuit now (applying the lazy OPEN -> HALF_OPEN)."""
        with self.locked():
            now = self.source.now()
            retry_after = self.retry_after(now)
            view = View(
                self.state,
                self.failure_count,
                self.success_count,
                self.opened_at,
                retry_after,
                reason=self.open_reason,
            )
            transitions = self.drain()
        self.publish(transitions)
        return view

    @property
    def state_now(self) -> CircuitState:
        """The current state (applying the lazy OPEN -> HALF_OPEN) without a whole view."""
        with self.locked():
            self.advance(self.source.now())
            state = self.state
            transitions = self.drain()
        self.publish(transitions)
        return state

    def control(self, action: Control) -> None:
        """Reset (the circuit and the throttle), force open or force closed."""
        self.rejection_count()  # made before the circuit can open
        with self.locked():
            now = self.source.now()
            if action == "force_open":
                self.force_open(now)
            else:
                self.close(now, "reset" if action == "reset" else "forced closed")
            if action != "force_open" and self.throttle is not None:
                self.throttle.forget()  # a pause or a learned limit is state too
                self._follow_throttle()
            transitions = self.drain()
        if action != "force_open":
            self.cause = None
        self.publish(transitions)
