"""What a breaker tells the world: counts, state-change listeners, observers and logs.

Written apart from the deciding so that the in-process circuit and the store links report
the same way; its attributes live in the breaker's ``LocalCircuit`` (no object of their own).
Successes and refusals are counted without a lock (``itertools.count`` is atomic under the
GIL; a breaker's first success in an int, under a lock), the rarer counts under one lock.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import itertools
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, cast

from llm_circuit_breaker._core.permits import REJECTED
from llm_circuit_breaker._core.state import CircuitState, Outcome, Transition
from llm_circuit_breaker._redact import hide_context, shown
from llm_circuit_breaker.errors import CircuitOpenError

if TYPE_CHECKING:
    from llm_circuit_breaker.config import CircuitBreakerConfig

__all__ = [
    "THROTTLE_REASONS",
    "BreakerStats",
    "Latency",
    "Listener",
    "Listening",
    "Observer",
    "RecentTimes",
    "StateChange",
    "Telemetry",
    "ThrottleEvent",
    "ThrottleSignal",
    "WaitHistogram",
    "error_type",
    "latency_of",
    "split_name",
]

logger = logging.getLogger("llm_circuit_breaker")
logger.addHandler(logging.NullHandler())  # a library logs; the application decides where to
state_logger = logging.getLogger("llm_circuit_breaker.state")
throttle_logger = logging.getLogger("llm_circuit_breaker.throttle")

# Why a call was refused before it ran while the circuit was not open (the ``reason`` label of
# the ``throttled`` outcome): its throttle slot was too far, a concurrency limit, a budget.
THROTTLE_REASONS = ("rate_limit", "concurrency", "retry_budget", "token_budget")

# CircuitOpenError built by BaseException.__new__ alone: C code, no Python frame (hot path).
refused = functools.partial(CircuitOpenError.__new__, CircuitOpenError)


@dataclasses.dataclass(frozen=True, slots=True)
class StateChange:
    """A circuit moved from ``old`` to ``new`` at ``at`` (seconds on the breaker's clock)."""

    name: str
    old: CircuitState
    new: CircuitState
    at: float
    reason: str


class ThrottleSignal(str, enum.Enum):
    """Where a breaker's throttle is: paused by a rate limit, or letting calls flow;
    ``BUDGET_EXCEEDED``: its token budget is spent (calls refused until the window ends)."""

    THROTTLED = "THROTTLED"
    UNTHROTTLED = "UNTHROTTLED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"


@dataclasses.dataclass(frozen=True, slots=True)
class ThrottleEvent:
    """A breaker's throttle paused (``new`` is ``THROTTLED``: a rate limit, for
    ``paused_for`` seconds) or calls flow again (``UNTHROTTLED``). Not a state change: the
    circuit stays as it was. Listeners receive these beside :class:`StateChange`, with the
    same ``name / old / new / at / reason`` fields; tell them apart with ``isinstance``."""

    name: str
    old: ThrottleSignal
    new: ThrottleSignal
    at: float
    reason: str
    paused_for: float = 0.0

    @property
    def event(self) -> ThrottleSignal:
        """``THROTTLED`` or ``UNTHROTTLED``."""
        return self.new


Listener = Callable[[StateChange | ThrottleEvent], object]

# Upper bounds (seconds) of the throttle-wait histogram's buckets; the last is +Inf.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WaitHistogram:
    """How long admitted calls waited for their throttle slot (cumulative buckets as
    Prometheus wants them). Updated under the circuit's lock; read at collection."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(WAIT_BUCKETS) + 1)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        """Count one wait."""
        index = 0
        while index < len(WAIT_BUCKETS) and seconds > WAIT_BUCKETS[index]:
            index += 1
        self.counts[index] += 1
        self.total += seconds

    def reset(self) -> None:
        """Forget every wait."""
        self.counts = [0] * (len(WAIT_BUCKETS) + 1)
        self.total = 0.0

    def buckets(self) -> list[tuple[float, int]]:
        """``[(upper bound, calls that waited at most that long), ...]`` ending at +Inf."""
        running, out = 0, []
        for bound, count in zip((*WAIT_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def error_type(error: BaseException) -> str:
    """A low-cardinality ``error.type``: the HTTP status when there is one, else the class."""
    from llm_circuit_breaker._judge.classify import classify

    status = classify(error).status
    if status is not None:
        return str(status)
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def split_name(name: str, template: str | None) -> tuple[str, str]:
    """``(template, scope value)`` of a breaker name: ``("openai:{model}", "gpt-4o")`` for
    ``openai:gpt-4o`` made from that template, ``(name, "")`` for a breaker named outright."""
    if not template:
        return name, ""
    prefix = template[: template.find("{")]
    suffix = template[template.rfind("}") + 1 :]
    if len(name) < len(prefix) + len(suffix) or not name.startswith(prefix):
        return name, ""  # pragma: no cover - a name its template did not make
    return template, name[len(prefix) : len(name) - len(suffix)]


class Observed(Protocol):
    """What an observer is told of the breaker that saw an event (its name, to label by)."""

    @property
    def name(self) -> str: ...


class Observer(Protocol):
    """A hook that hears of refusals and retries as they happen (the exporters are ones).

    One protocol for whatever hears a breaker, every method looked up, none required:
    ``changed(event)`` (a :class:`StateChange` or :class:`ThrottleEvent`: what a listener
    hears; ``add_listener(fn)`` makes ``fn`` a hook with only this method), ``rejected``,
    ``retried``, ``waited(breaker, seconds)`` (an admitted call waits for its throttle slot)
    and ``throttled(breaker, reason)`` (a throttle, limit or budget refused a call)."""

    def rejected(self, breaker: Observed, enforced: bool) -> None:
        """A call was refused (``enforced`` False: a metrics-only breaker let it through)."""

    def retried(self, breaker: Observed, attempt: int, error: BaseException, delay: float) -> None:
        """``with_retry`` will retry after ``attempt`` failed with ``error``, in ``delay`` s."""


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerStats:
    """Counts since the breaker was made. ``calls`` = successes + failures + ignored +
    throttled; refused calls are ``rejections`` (circuit open) and ``throttle_refusals``
    (refused before running, by reason: ``rate_limit`` ...). In metrics-only mode a call the
    circuit would have refused counts as a rejection only, not by how it then ended."""

    calls: int
    successes: int
    failures: int
    ignored: int
    throttled: int
    rejections: int
    retries: int
    state_changes: dict[str, int]
    throttle_refusals: dict[str, int] = dataclasses.field(default_factory=dict)
    retries_denied: int = 0  # retries the retry budget could not pay (not made)


# The counts of every breaker that need no lock-free path are updated under this one lock
# (failures, retries, state changes, refusals by reason: rare next to successes), and the
# two lock-free counters are read under it.
_counting = threading.Lock()

# Where each count sits in a breaker's ``counts`` list (made on the first count).
_FAILURES, _IGNORED, _THROTTLED, _RETRIES = 0, 1, 2, 3
_CHANGES = {CircuitState.CLOSED: 4, CircuitState.OPEN: 5, CircuitState.HALF_OPEN: 6}
_REFUSALS = {reason: 7 + i for i, reason in enumerate(THROTTLE_REASONS)}
_BY_OUTCOME = {Outcome.FAILURE: _FAILURES, Outcome.IGNORED: _IGNORED, Outcome.THROTTLED: _THROTTLED}
# Bookkeeping of the two lock-free counters (successes, rejections): reads made and the raw
# value at the last reset.
_SUCCESS_READS, _SUCCESS_ZERO, _REJECTION_READS, _REJECTION_ZERO = 11, 12, 13, 14
_SIZE = 15


def _raw(counter: Iterator[int] | int, counts: list[int], reads: int) -> int:
    """How often ``counter`` was bumped by its users (call with ``_counting`` held): an int
    is its own count (successes before the lock-free counter is made).

    ``itertools.count`` is bumped atomically under the GIL (the CLOSED success path and the
    fail-fast path count without a lock), and it has no way to be read but to be bumped: a read
    bumps it too, and ``counts[reads]`` keeps how often that happened."""
    if counter.__class__ is int:
        return counter
    if counter is NOT_OPEN_YET:
        return 0
    bumped = next(cast("Iterator[int]", counter)) - counts[reads]
    counts[reads] += 1
    return bumped


def _not_open_yet() -> int:  # pragma: no cover - a circuit opens only after a report
    raise RuntimeError("a refusal was counted before the circuit could open")


# What the refusal counter is until it is made (before the circuit can first open).
NOT_OPEN_YET: Iterator[int] = iter(_not_open_yet, None)


class Telemetry:
    """Counts, listeners and observers of one breaker: the reporting half of its
    :class:`~llm_circuit_breaker.breaker.circuit.LocalCircuit`, which keeps these attributes
    in its own slots (no object, no header and no name of their own).

    Compact: successes are an int (counted under a lock) until the circuit opens its lock-free
    path, then one ``itertools.count``; the other counts live in one list of ints made on the
    first of them, the refusal counter is made before the circuit can first open, the
    listeners and observers are tuples (empty: shared), the wait histogram is made on the
    first throttle wait."""

    if not TYPE_CHECKING:  # its attributes are the circuit's slots (mypy: see them here)
        __slots__ = ()

    name: str
    config: CircuitBreakerConfig
    # The breaker observers are told of: set when the first observer is added (an idle
    # breaker holds no reference cycle, so dropping it frees it at once).
    breaker: Observed | None
    template: str | None  # the name template, for the log records' fields
    # Listeners and observers alike, in the order added (empty: a shared tuple).
    _hooks: tuple[object, ...]
    # Successes: an int bumped under ``_counting``, then (``success_counter()``) an
    # ``itertools.count`` bumped without a lock (``next(telemetry._successes)``).
    _successes: int | itertools.count[int]
    _rejections: Iterator[int]  # NOT_OPEN_YET until made
    _counts: list[int] | None
    _waits: WaitHistogram | None
    # Refusals need no more than a count: enforced, and nobody to tell.
    plain_refusals: bool

    @property
    def count_success(self) -> Callable[[], int]:
        """Count a success (lock-free: bind it once where successes are counted)."""
        return self.success_counter().__next__

    def success_counter(self) -> itertools.count[int]:
        """The lock-free success counter, made now (from the successes counted so far) if it
        was not yet."""
        counter = self._successes
        if counter.__class__ is int:
            with _counting:
                counter = self._successes
                if counter.__class__ is int:
                    counter = self._successes = itertools.count(counter)
        return cast("itertools.count[int]", counter)

    def rejection_count(self) -> Iterator[int]:
        """The lock-free refusal counter (``next()`` counts one), made now if it was not yet:
        a circuit calls this before it can first open, and keeps it for its fail-fast path."""
        counter = self._rejections
        if counter is NOT_OPEN_YET:
            with _counting:
                counter = self._rejections
                if counter is NOT_OPEN_YET:
                    counter = self._rejections = itertools.count()
        return counter

    def count_rejection(self) -> None:
        """Count one refusal (the circuit was open)."""
        next(self.rejection_count())

    def _bump(self, index: int) -> None:
        with _counting:
            counts = self._counts
            if counts is None:
                counts = self._counts = [0] * _SIZE
            counts[index] += 1

    @property
    def waits(self) -> WaitHistogram:
        """How long admitted calls waited for their throttle slot (made on first need)."""
        waits = self._waits
        if waits is None:
            waits = self._waits = WaitHistogram()
        return waits

    def known_waits(self) -> WaitHistogram:
        """The wait histogram, or an empty one (not kept) while nothing waited."""
        return WaitHistogram() if self._waits is None else self._waits

    def zero(self) -> None:
        """Zero every count and the wait histogram (``registry.reset_all()``)."""
        with _counting:
            counts = self._counts
            if counts is None:
                counts = self._counts = [0] * _SIZE
            success_zero = _raw(self._successes, counts, _SUCCESS_READS)
            rejection_zero = _raw(self._rejections, counts, _REJECTION_READS)
            counts[:_SUCCESS_READS] = [0] * _SUCCESS_READS
            counts[_SUCCESS_ZERO] = success_zero
            counts[_REJECTION_ZERO] = rejection_zero
        if self._waits is not None:
            self._waits.reset()

    def tally(self, outcome: Outcome) -> None:
        """Count a finished call by its outcome as the circuit counted it."""
        if outcome is Outcome.SUCCESS:
            counter = self._successes
            if counter.__class__ is int:
                with _counting:
                    counter = self._successes
                    if counter == 0:  # the first success: an int, no counter
                        self._successes = 1
                        return
                    if counter.__class__ is int:  # the second makes the counter
                        counter = self._successes = itertools.count(counter)
            next(cast("itertools.count[int]", counter))
        else:
            self._bump(_BY_OUTCOME[outcome])

    def recount_success_as_ignored(self) -> None:
        """Count one success already counted as ignored instead: a hedge's losing attempt in a
        thread, which cannot be cancelled, whose plain result came after the race ended and
        was discarded. Nothing if no success is counted."""
        with _counting:
            counts = self._counts
            if counts is None:
                counts = self._counts = [0] * _SIZE
            counted = _raw(self._successes, counts, _SUCCESS_READS) - counts[_SUCCESS_ZERO]
            if counted > 0:
                counts[_SUCCESS_ZERO] += 1
                counts[_IGNORED] += 1

    def stats(self) -> BreakerStats:
        """The counts now."""
        with _counting:
            counts = self._counts
            if counts is None:
                counts = self._counts = [0] * _SIZE
            successes = _raw(self._successes, counts, _SUCCESS_READS) - counts[_SUCCESS_ZERO]
            rejections = _raw(self._rejections, counts, _REJECTION_READS)
            rejections -= counts[_REJECTION_ZERO]
            counts = list(counts)
        failures, ignored, throttled = counts[_FAILURES], counts[_IGNORED], counts[_THROTTLED]
        return BreakerStats(
            calls=successes + failures + ignored + throttled,
            successes=successes,
            failures=failures,
            ignored=ignored,
            throttled=throttled,
            rejections=rejections,
            retries=counts[_RETRIES],
            state_changes={state.value: counts[index] for state, index in _CHANGES.items()},
            throttle_refusals={reason: counts[index] for reason, index in _REFUSALS.items()},
            retries_denied=counts[_REFUSALS["retry_budget"]],
        )

    def count_throttle_refusal(self, reason: str = "rate_limit") -> None:
        """Count a call refused before it ran by its throttle (or a limit or budget)."""
        self._bump(_REFUSALS[reason])
        throttle_logger.debug(
            "circuit %r refused a call: %s",
            shown(self.name),
            reason,
            extra=self._fields(reason=reason),
        )
        if self._hooks:
            self._tell("throttled", reason, owned=True)

    # -- refusals and retries --------------------------------------------------------------

    def observed(self, error: CircuitOpenError, permit: int) -> int | CircuitOpenError:
        """After counting a refusal: tell the observers. ``permit`` is the refusal the core
        decided (its ``refusal``): ``REJECTED`` gives the error to raise, ``SHADOW`` (a
        metrics-only core) the permit that lets the call through."""
        enforced = permit == REJECTED
        if self._hooks:
            self._tell("rejected", enforced, owned=True)
        if enforced:
            return error
        state_logger.debug(
            "circuit %r would have refused a call (metrics-only)",
            shown(self.name),
            extra=self._fields(enforced=False),
        )
        return permit

    def retried(self, attempt: int, error: BaseException, delay: float) -> None:
        """Count a retry and tell the observers."""
        self._bump(_RETRIES)
        if self._hooks:
            self._tell("retried", attempt, error, delay, owned=True)

    def tell_waited(self, seconds: float) -> None:
        """Tell the observers that can hear it (``waited(breaker, seconds)``) how long an
        admitted call waits for its throttle slot."""
        if self._hooks:
            self._tell("waited", seconds, owned=True)

    def _tell(self, event: str, *args: object, owned: bool = False) -> None:
        """Call ``event(*args)`` on every hook that defines it (``owned``: with the breaker
        first); one that raises is logged."""
        for hook in self._hooks:
            hear = getattr(hook, event, None)
            if hear is None:
                continue
            try:
                if owned:
                    hear(self._owner(), *args)
                else:
                    hear(*args)
            except Exception:
                hide_context()
                if isinstance(hook, Listening):
                    logger.exception(
                        "state-change listener %r of circuit %r raised", hear, shown(self.name)
                    )
                else:
                    logger.exception("observer %r of circuit %r raised", hook, shown(self.name))

    def _fields(self, **more: object) -> dict[str, object]:
        """``extra=`` fields for a log record: the breaker's template and scope, and more."""
        template, scope = split_name(self.name, self.template)
        return {
            "breaker": shown(template),
            "scope": shown(scope),
            "enforced": self.config.enabled,
            **more,
        }

    def _owner(self) -> Observed:
        if self.breaker is None:  # pragma: no cover - the breaker sets it at construction
            raise RuntimeError("telemetry used before its breaker was made")
        return self.breaker

    # -- listeners and observers -----------------------------------------------------------

    def add_observer(self, observer: Observer, breaker: Observed) -> None:
        """Tell ``observer`` of refusals and retries on ``breaker`` (once, however often it
        is added)."""
        with _counting:
            self.breaker = breaker
            if observer not in self._hooks:
                self._hooks = (*self._hooks, observer)
            self.plain_refusals = False

    def add_listener(self, listener: Listener, *, once: bool = False) -> None:
        """Call ``listener(StateChange)`` after every state change; ``once``: not if it is a
        listener already (a scoped decoration meets a scope's breaker again and again)."""
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {listener!r}")
        with _counting:
            if once and any(  # == too: a bound method is made anew at each attribute read
                isinstance(hook, Listening)
                and (hook.changed is listener or hook.changed == listener)
                for hook in self._hooks
            ):
                return
            self._hooks = (*self._hooks, Listening(listener))

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener`` (``ValueError`` if it is not one)."""
        with _counting:
            hooks = list(self._hooks)
            for index, hook in enumerate(hooks):
                if isinstance(hook, Listening) and hook.changed == listener:
                    del hooks[index]
                    break
            else:
                raise ValueError(f"{listener!r} is not a listener of circuit {self.name!r}")
            self._hooks = tuple(hooks)

    def publish(self, transitions: Sequence[Transition]) -> None:
        """Count, log and announce the state changes a circuit made."""
        for t in transitions:
            self._bump(_CHANGES[t.new])
            # Opening (or holding open) is news for whoever is on call; recovering is not.
            level = logging.WARNING if t.new is CircuitState.OPEN else logging.INFO
            if state_logger.isEnabledFor(level):
                fields = self._fields(old_state=t.old.value, new_state=t.new.value, reason=t.reason)
                state_logger.log(
                    level,
                    "circuit %r %s -> %s: %s",
                    shown(self.name),
                    t.old.value,
                    t.new.value,
                    t.reason,
                    extra=fields,
                )
            self.notify(StateChange(self.name, t.old, t.new, t.at, t.reason))

    def throttle_event(self, paused: bool, reason: str, paused_for: float, *, at: float) -> None:
        """Log and announce that the throttle paused (``THROTTLED``) or resumed."""
        if paused:
            throttle_logger.warning(
                "circuit %r throttled: %s",
                shown(self.name),
                reason,
                extra=self._fields(reason=reason),
            )
            old, new = ThrottleSignal.UNTHROTTLED, ThrottleSignal.THROTTLED
        else:
            throttle_logger.info(
                "circuit %r unthrottled: %s",
                shown(self.name),
                reason,
                extra=self._fields(reason=reason),
            )
            old, new = ThrottleSignal.THROTTLED, ThrottleSignal.UNTHROTTLED
        self.notify(ThrottleEvent(self.name, old, new, at, reason, paused_for))

    def budget_spent(self, spent: float, limit: float, resets_in: float, *, at: float) -> None:
        """Log and announce (``BUDGET_EXCEEDED``) that the token budget ran out."""
        reason = f"token budget spent: {spent:.0f} of {limit:.0f} tokens"
        throttle_logger.warning(
            "circuit %r: %s", shown(self.name), reason, extra=self._fields(reason="token_budget")
        )
        old, new = ThrottleSignal.UNTHROTTLED, ThrottleSignal.BUDGET_EXCEEDED
        self.notify(ThrottleEvent(self.name, old, new, at, reason, resets_in))

    def notify(self, change: StateChange | ThrottleEvent) -> None:
        """Hand ``change`` to every hook that hears changes (the listeners)."""
        if self._hooks:
            self._tell("changed", change)


class Listening:
    """A state-change listener as a hook: ``changed`` is the listener itself."""

    __slots__ = ("changed",)

    def __init__(self, changed: Listener) -> None:
        self.changed = changed

    def __repr__(self) -> str:
        return f"Listening({self.changed!r})"


# -- latency: times to first item, hedges ---------------------------------------------------


class RecentTimes:
    """The last ``size`` durations in seconds (a ring): what a quantile is read from."""

    __slots__ = ("_lock", "_samples")

    def __init__(self, size: int = 200) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()  # appends from threads while another one sorts

    def add(self, seconds: float) -> None:
        """Keep one duration (the oldest one goes when the ring is full)."""
        with self._lock:
            self._samples.append(seconds)

    def __len__(self) -> int:
        return len(self._samples)

    def quantile(self, q: float, *, minimum: int = 20) -> float | None:
        """The ``q`` quantile (0 < q < 1, nearest rank) of the durations kept, or None while
        fewer than ``minimum`` are."""
        with self._lock:
            if len(self._samples) < max(1, minimum):
                return None
            ordered = sorted(self._samples)
        rank = math.ceil(round(q * len(ordered), 9))  # 0.9 * 200 is 180.00000000000003
        return ordered[min(max(rank, 1), len(ordered)) - 1]


class Latency:
    """One breaker's recent times to first item (an answer, or a stream's first content
    item) and the hedges started and won on it. Not a state change: listeners hear nothing
    of it; the exporters read the counts at collection."""

    __slots__ = ("first_item", "hedges_started", "hedges_won")

    def __init__(self) -> None:
        self.first_item = RecentTimes()
        self.hedges_started = 0  # hedges started on this breaker
        self.hedges_won = 0  # hedges on this breaker that answered first

    def hedge_started(self) -> None:
        """Count an extra attempt started because the ones in flight were slow."""
        with _counting:
            self.hedges_started += 1

    def hedge_won(self) -> None:
        """Count a hedge that answered first."""
        with _counting:
            self.hedges_won += 1


_latencies: weakref.WeakKeyDictionary[Observed, Latency] = weakref.WeakKeyDictionary()
_latencies_lock = threading.Lock()


def latency_of(breaker: Observed) -> Latency:
    """The :class:`Latency` record of ``breaker`` (made on first use, gone with the breaker)."""
    found = _latencies.get(breaker)
    if found is None:
        with _latencies_lock:
            found = _latencies.setdefault(breaker, Latency())
    return found
