"""The throttle: this client's allowance, pure and clock-driven (no I/O, no lock, no sleep).

A breaker's circuit tracks the provider's health; its throttle tracks how fast this client may
call. Each resource (requests, tokens) is paced by a :class:`Pacer`, a generic cell rate
algorithm that models the provider's bucket: capacity ``limit``, refilled at ``limit`` per
window, so callers may burst up to what is left and are then spaced at the refill rate. The
rate comes from ``requests_per_minute`` / ``tokens_per_minute`` or from the providers'
rate-limit headers (:mod:`._ratelimit`). A rate-limit 429 pauses the throttle until the
server's hint plus a small positive jitter, or, without a hint, for an adaptive pause that
doubles on consecutive 429s and halves on successes (AIMD).

:meth:`ThrottleCore.reserve` hands out slots in order (FIFO): the caller sleeps until its
slot, so when a pause ends callers leave one by one at the refill rate, not all at once.

The provider's count lags this client's: a response reports ``remaining`` as of when the
provider counted it, before the calls this client admitted after it. Each booked call keeps
its ``Admission`` (its slot and its place in line) in a context variable from
:meth:`ThrottleCore.book` to its report; the headers it brings back are read as of its slot,
less the calls booked after it that have not reported yet (:meth:`Pacer.observe`): in flight,
or asleep until their slot. One booked after it that has reported was answered first, most
likely counted first too; what its own headers said is already in the model.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the header parser loads with the first response that has such headers
    from llm_circuit_breaker._core.headers import Bucket, RateLimits
    from llm_circuit_breaker.config import CircuitBreakerConfig

__all__ = [
    "ADMITTED",
    "TOKEN_COST",
    "Admission",
    "News",
    "Pacer",
    "ThrottleCore",
    "Wait",
    "estimate_tokens",
    "pause_cap",
    "spread",
]

# What a report announces: (paused, reason, pause seconds), or None.
News = tuple[bool, str, float] | None

# The estimated tokens of the call being admitted, set by code that sees the request body
# (the HTTP helpers) around the guarded call; 0 when nobody knows.
TOKEN_COST: contextvars.ContextVar[float] = contextvars.ContextVar("token_cost", default=0.0)


# A call the throttle booked, as the context of its caller keeps it until the call reports:
# (throttle, slot, place in line, outer): ``outer`` the admission of an enclosing call
# (another breaker's), if any. A tuple: made on every paced admission.
Admission = tuple["ThrottleCore", float, int, "Admission | None"]
_MAX_FLYING = 4096  # booked calls remembered until they report (the oldest forgotten first)


# The booked call running in this context (thread, task), set by ``ThrottleCore.book``: the
# headers its response brings are read against what was booked after it.
ADMITTED: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "admitted", default=None
)
_OUTPUT_FIELDS = ("max_tokens", "max_output_tokens", "max_completion_tokens")
_INPUT_FIELDS = ("messages", "prompt", "input", "system", "contents")


_MAX_CAP = 1e15  # tokens: past any model's output


def output_cap(value: float) -> float:
    """An output cap as tokens to estimate: 0 for one that is negative, infinite or too big
    for a float (1e999, ``Infinity``, 400 digits): no estimate that refuses forever."""
    try:
        cap = float(value)
    except OverflowError:
        return 0.0
    return cap if 0.0 < cap < _MAX_CAP else 0.0


def estimate_tokens(body: object) -> float:
    """A request's token cost before it is sent: its output cap plus the prompt's length / 4
    (characters of the JSON of its messages, prompt, input ...). 0 for a body of no known shape.
    The rate-limit headers of the answer reconcile the estimate with the provider's count."""
    if not isinstance(body, Mapping):
        return 0.0
    output = next(
        (output_cap(body[f]) for f in _OUTPUT_FIELDS if isinstance(body.get(f), (int, float))),
        0.0,
    )
    import json

    prompt = sum(
        len(json.dumps(body[f], default=str)) for f in _INPUT_FIELDS if body.get(f) is not None
    )
    return max(0.0, output) + prompt / 4.0


_NEVER = -math.inf
_DEFAULT_WINDOW = 60.0  # seconds: a bucket whose refill time is not reported refills per minute
_MAX_PAUSE = 60.0  # the adaptive pause never grows past this
_MIN_PAUSE = 1.0  # nor starts below this
_MAX_HINT_JITTER = 1.0


def spread(
    hint: float | None, uniform: Callable[[float, float], float] = random.uniform
) -> float | None:
    """A server's wait hint as a pause: the hint plus a positive jitter of up to 10% (at most
    1 s), never earlier than asked. None stays None (the adaptive pause applies)."""
    if hint is None:
        return None
    return hint + uniform(0.0, min(hint * 0.1, _MAX_HINT_JITTER))


def pause_cap(config: CircuitBreakerConfig) -> float:
    """The longest a throttle pause lasts: ``throttle_max_pause``, and never past
    ``max_open_for`` (the cap of a server-directed open, 10 x ``reset_timeout`` by default)."""
    return min(float(config.throttle_max_pause), config.effective_max_open_for)


class Wait:
    """What a breaker hands a caller that must wait for its throttle slot: the permit it holds
    meanwhile and the seconds to sleep."""

    __slots__ = ("at", "permit", "seconds", "tokens")

    def __init__(
        self, permit: int, seconds: float, tokens: float = 0.0, at: float = math.inf
    ) -> None:
        self.permit = permit
        self.seconds = seconds
        self.tokens = tokens  # the token cost reserved with the slot
        self.at = at  # the slot's time on the breaker's clock (inf: not checked on waking)

    def __repr__(self) -> str:
        return f"Wait(permit={self.permit}, seconds={self.seconds:.3f})"


class Pacer:
    """One resource's bucket as a generic cell rate algorithm (GCRA).

    ``interval`` seconds refill one unit; up to ``capacity`` units may go at once. ``tat`` (the
    theoretical arrival time) is when the bucket would be full again.
    """

    __slots__ = ("capacity", "interval", "tat")

    def __init__(self) -> None:
        self.interval = 0.0  # 0: the rate is unknown and nothing is paced
        self.capacity = 1.0
        self.tat = _NEVER

    @property
    def known(self) -> bool:
        """Whether this resource is paced."""
        return self.interval > 0.0

    def configure(self, per_second: float, capacity: float) -> None:
        """Pace at ``per_second`` units with bursts of up to ``capacity``."""
        self.interval = 1.0 / per_second
        self.capacity = max(1.0, capacity)

    def earliest(self, now: float, cost: float) -> float:
        """The first instant ``cost`` units fit in the bucket."""
        if not self.known:
            return now
        tolerance = (self.capacity - max(cost, 1.0)) * self.interval
        return max(now, self.tat - tolerance)

    def take(self, at: float, cost: float) -> None:
        """Spend ``cost`` units at ``at``."""
        if self.known:
            self.tat = max(self.tat, at) + self.interval * cost

    def give_back(self, cost: float) -> None:
        """Return units taken but not used (a caller that gave up its slot)."""
        if self.known:
            self.tat -= self.interval * cost

    def level(self, now: float) -> int | None:
        """Units left in the bucket now (None when not paced)."""
        if not self.known:
            return None
        used = max(0.0, self.tat - now) / self.interval
        return max(0, min(int(self.capacity), math.floor(self.capacity - used)))

    def observe(
        self,
        bucket: Bucket,
        now: float,
        max_pause: float = math.inf,
        since: tuple[float, float] | None = None,
    ) -> None:
        """Follow what the provider reported: capacity, refill rate and what is left. What
        it says never makes the next unit further away than ``max_pause`` seconds (one unit
        refills within it, and "nothing left" waits for one unit at most).

        ``since``: ``(slot, units)`` of the call whose response this is: the provider counted
        it at its slot, before the ``units`` booked after it that have not reported (in
        flight, or on their way). Its ``remaining`` is the level at the slot, less those.
        None (headers fed by hand, a call admitted before any pacing): the level now.
        """
        limit, remaining, reset = bucket.limit, bucket.remaining, bucket.reset
        slowest = 1.0 / max_pause
        if limit is not None and limit > 0:
            used = None if remaining is None else limit - remaining
            if used and reset:
                # what was spent refills in ``reset`` s
                self.configure(max(used / reset, slowest), limit)
            elif not self.known:
                self.configure(max(limit / _DEFAULT_WINDOW, slowest), limit)
            else:
                self.capacity = float(limit)
        if remaining is not None and self.known:
            # The provider's count is the truth; our own later reservations may be on top.
            spent, at = max(0.0, self.capacity - remaining), now
            if since is not None:
                at = min(now, since[0])
                spent += since[1]
            reported = at + spent * self.interval
            latest = now + max_pause + (self.capacity - 1.0) * self.interval
            self.tat = max(self.tat, min(reported, latest))


_MAX_NESTED = 8  # enclosing admissions kept with a booking (calls of other breakers)


def _enclosing(outer: Admission | None) -> Admission | None:
    """The admissions a new booking sits in: those that ended (their call reported, perhaps
    in another context) dropped from the front, and none past ``_MAX_NESTED`` deep (a
    context whose calls report elsewhere would otherwise nest one more with every call)."""
    while outer is not None and outer[2] not in outer[0].flying:
        outer = outer[3]
    depth, inner = 0, outer
    while inner is not None:
        depth += 1
        if depth > _MAX_NESTED:
            return None
        inner = inner[3]
    return outer


class ThrottleCore:
    """A breaker's throttle. Not thread-safe: the caller serialises access."""

    __slots__ = (
        "backoff",
        "config",
        "flying",
        "limited",
        "max_pause",
        "paused_until",
        "provisional",
        "requests",
        "seq",
        "tokens",
        "waiting",
    )

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self.config = config
        self.max_pause = pause_cap(config)
        self.requests = Pacer()
        self.tokens = Pacer()
        if config.requests_per_minute is not None:
            self.requests.configure(config.requests_per_minute / 60.0, config.requests_per_minute)
        if config.tokens_per_minute is not None:
            self.tokens.configure(config.tokens_per_minute / 60.0, config.tokens_per_minute)
        self.paused_until = _NEVER
        self.backoff = 0.0  # the adaptive pause, grown by 429s without a hint
        self.waiting = 0  # callers asleep until their slot
        self.provisional = False  # the request spacing comes from a pause, not from a rate
        self.limited = False  # a rate limit paused calls, and no call has succeeded since
        self.seq = 0  # the place in line of the last call booked
        self.flying: dict[int, float] = {}  # booked calls not reported yet: place -> tokens

    @property
    def active(self) -> bool:
        """Whether calls must ask the throttle (a known rate, or a pause set)."""
        return self.requests.known or self.tokens.known or self.paused_until != _NEVER

    def reserve(self, now: float, tokens: float = 0.0) -> float:
        """Reserve the next free slot for one call costing ``tokens``; its time (>= now)."""
        slot = max(
            now,
            self.paused_until,
            self.requests.earliest(now, 1.0),
            self.tokens.earliest(now, tokens),
        )
        self.requests.take(slot, 1.0)
        self.tokens.take(slot, tokens)
        return slot

    def cancel(self, tokens: float = 0.0) -> None:
        """Give back a reservation whose caller will not call (cancelled, or waited too long)."""
        self.reported()
        self.requests.give_back(1.0)
        self.tokens.give_back(tokens)

    def wait_for(self, now: float, tokens: float = 0.0) -> float:
        """Seconds until a call costing ``tokens`` would be admitted (nothing is reserved)."""
        slot = max(
            now,
            self.paused_until,
            self.requests.earliest(now, 1.0),
            self.tokens.earliest(now, tokens),
        )
        return slot - now

    def observe(self, limits: RateLimits, now: float) -> None:
        """Follow the rate-limit headers of a response (of the call booked in this context,
        if any: see ``Admission``)."""
        admission = ADMITTED.get()
        while admission is not None and admission[0] is not self:  # a call of another breaker
            admission = admission[3]  # inside one of this one's (or none: headers by hand)
        since: tuple[float, float] | None = None
        tokens_since = None
        if admission is not None and admission[2] in self.flying:  # else it reported already
            place, calls, tokens = admission[2], 0, 0.0
            for later in reversed(self.flying):  # booked after it, not reported yet
                if later <= place:
                    break
                calls += 1
                tokens += self.flying[later]
            since, tokens_since = (admission[1], float(calls)), (admission[1], tokens)
        if limits.requests is not None:
            if self.provisional:
                self.requests.interval, self.provisional = 0.0, False
            self.requests.observe(limits.requests, now, self.max_pause, since)
            self._hold(limits.requests, self.requests, now)
        if limits.tokens is not None:
            self.tokens.observe(limits.tokens, now, self.max_pause, tokens_since)
            self._hold(limits.tokens, self.tokens, now)

    def _hold(self, bucket: Bucket, pacer: Pacer, now: float) -> None:
        """Headers saying nothing is left until the reset, with no limit to pace by (neither
        reported nor learned): nothing goes until then (at most ``max_pause``)."""
        if bucket.remaining == 0 and bucket.reset and not pacer.known:
            self.paused_until = max(self.paused_until, now + min(bucket.reset, self.max_pause))

    def rate_limited(self, now: float, pause: float | None) -> float:
        """A 429 that is a rate limit: pause ``pause`` seconds (the server's hint, spread by
        :func:`spread`) or, without one, the adaptive pause, at most :func:`pause_cap`;
        the pause's length."""
        if pause is None:
            self.backoff = min(_MAX_PAUSE, max(_MIN_PAUSE, self.backoff * 2.0))
            pause = self.backoff
        pause = min(pause, self.max_pause)
        self.paused_until = max(self.paused_until, now + pause)
        self.limited = True
        if not self.requests.known:
            # Callers waiting out the pause leave in order, spread over a tenth of it, instead
            # of all at once; the spacing fades with the successes that follow.
            self.requests.configure(1.0 / max(0.005, pause / 10.0), 1.0)
            self.requests.tat = self.paused_until
            self.provisional = True
            self.backoff = max(self.backoff, _MIN_PAUSE)
        return pause

    def book(self, now: float, tokens: float, max_wait: float) -> float:
        """Reserve a slot for a call costing ``tokens``; the seconds until it. More than
        ``max_wait``: nothing is reserved (the caller is refused)."""
        slot = self.reserve(now, tokens)
        wait = slot - now
        if wait > max_wait:
            self.cancel(tokens)
            return wait
        outer = ADMITTED.get()
        if outer is not None and outer[0] is self:  # booked again (after a pause)
            self.flying.pop(outer[2], None)
            outer = outer[3]
        outer = _enclosing(outer)
        self.seq = place = self.seq + 1
        flying = self.flying
        flying[place] = tokens
        if len(flying) > _MAX_FLYING:  # calls that reported elsewhere, or never did
            del flying[next(iter(flying))]
        ADMITTED.set((self, slot, place, outer))
        return wait

    def reported(self) -> None:
        """The call booked in this context reported, or gave its slot up: it is no longer
        in flight, and its admission ends here."""
        admission = ADMITTED.get()
        if admission is not None and admission[0] is self:
            self.flying.pop(admission[2], None)
            ADMITTED.set(admission[3])

    def report(self, now: float, throttled: bool, succeeded: bool, pause: float | None) -> News:
        """Follow a finished call (a rate limit, or a success); what to announce, if anything:
        ``(True, reason, pause)`` when calls pause, ``(False, reason, 0.0)`` when they resume."""
        admission = ADMITTED.get()  # the call booked in this context reported (``reported``)
        if admission is not None and admission[0] is self:
            self.flying.pop(admission[2], None)
            ADMITTED.set(admission[3])
        if throttled:
            was_limited = self.limited
            pause = self.rate_limited(now, pause)
            if not was_limited:
                return True, f"rate limited (429): paused {pause:.3g}s", pause
        elif succeeded and self.succeeded(now):
            return False, "pause over: a call succeeded", 0.0
        return None

    def succeeded(self, now: float) -> bool:
        """A call went through: the adaptive pause shrinks (and the provisional spacing).
        True when this is the first success since a rate limit paused calls."""
        if self.backoff:
            self.backoff = 0.0 if self.backoff <= _MIN_PAUSE else self.backoff / 2.0
            if not self.backoff and self.provisional:
                self.requests.interval, self.provisional = 0.0, False
        if self.paused_until != _NEVER and now >= self.paused_until:
            self.paused_until = _NEVER
        if self.limited and self.paused_until == _NEVER:
            self.limited = False
            return True
        return False

    def forget(self) -> None:
        """Forget what was learned: pauses, the adaptive backoff, the limits the headers told;
        the configured ``requests_per_minute`` / ``tokens_per_minute`` stay (a reset)."""
        config = self.config
        self.requests, self.tokens = Pacer(), Pacer()
        if config.requests_per_minute is not None:
            self.requests.configure(config.requests_per_minute / 60.0, config.requests_per_minute)
        if config.tokens_per_minute is not None:
            self.tokens.configure(config.tokens_per_minute / 60.0, config.tokens_per_minute)
        self.paused_until = _NEVER
        self.backoff = 0.0
        self.provisional = self.limited = False

    @property
    def quiet(self) -> bool:
        """Whether a success changes nothing here (no pause to shrink or end)."""
        return not self.backoff and not self.limited

    def view(self, now: float) -> dict[str, float | int | None]:
        """``{paused_for, requests_remaining, tokens_remaining, reset_in, waiting}``."""
        requests = self.requests
        reset_in = max(0.0, requests.tat - now) if requests.known else None
        return {
            "paused_for": max(0.0, self.paused_until - now),
            "requests_remaining": requests.level(now),
            "tokens_remaining": self.tokens.level(now),
            "reset_in": reset_in,
            "waiting": self.waiting,
        }
