"""The arguments and replies of ``breaker.lua``: what the Redis store sends and reads back."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker._core.state import CircuitState, Outcome, Transition
from llm_circuit_breaker._core.throttle import pause_cap
from llm_circuit_breaker._redact import shown
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.storage.base import Admission, ThrottleNews, View

if TYPE_CHECKING:
    from llm_circuit_breaker._core.budget import BudgetDelta
    from llm_circuit_breaker._core.headers import Bucket, RateLimits
    from llm_circuit_breaker.storage.base import Ride

__all__ = [
    "LISTED_FIELDS",
    "OUTCOMES",
    "admission",
    "circuit_fields",
    "observe_args",
    "landed",
    "plain",
    "record_args",
    "ride_args",
    "script_args",
    "text",
    "view",
]

logger = logging.getLogger("llm_circuit_breaker")

OUTCOMES = {o.value: o for o in Outcome}
_BUDGET = 17  # where a budget sync's answer is in a reply
_TRANSITIONS = 21  # where the transitions start in a reply
_RIDERS = 25  # the op's own arguments are padded to this many, then come the riders


def number(value: Any) -> float | None:
    """A float the script sent as a string ("" is none)."""
    string = text(value)
    return float(string) if string else None


def text(value: Any) -> str:
    """A string the script sent (bytes from a client without decode_responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def script_args(
    clock: Callable[[], float] | None,
    ttl: str,
    op: str,
    config: CircuitBreakerConfig,
    *extra: object,
    tokens: float = 0.0,
) -> list[object]:
    """The ARGV of one script call (``clock`` None: the server's TIME)."""
    return [
        op,
        "" if clock is None else repr(clock()),
        ttl,
        config.failure_threshold,
        repr(float(config.reset_timeout)),
        config.success_threshold,
        config.half_open_max_calls,
        repr(float(config.half_open_probe_timeout)),
        _opt(config.slow_call_duration),
        _opt(config.failure_rate_threshold),
        repr(config.effective_window),
        config.effective_minimum_calls,
        repr(pause_cap(config)) if config.throttle else "",
        repr(float(config.throttle_max_wait)),
        _opt(config.requests_per_minute),
        _opt(config.tokens_per_minute),
        repr(float(tokens)),
        *extra,
    ]


def ride_args(args: list[object], ride: Ride | None) -> list[object]:
    """``args`` with a call's riders (headers, a budget sync) after them, if any."""
    if ride is None:
        return args
    args.extend([""] * (_RIDERS - len(args)))
    limits = ride.limits
    args.extend(observe_args(limits) if limits is not None else ("",) * 8)
    budget = ride.budget
    if budget is not None:
        retry = budget.retry
        args.extend(("", "", "") if retry is None else (repr(x) for x in retry))
        if budget.window is None:
            args.extend(("", ""))
        else:
            limit = "" if budget.limit is None else repr(float(budget.limit))
            args.extend((repr(float(budget.tokens)), repr(budget.window), limit))
    return args


def landed(reply: Sequence[Any], budget: BudgetDelta) -> None:
    """Set what a reply says of the fleet's budgets on the sync it answered."""
    deposits, withdrawals, spent, resets_in = (number(x) for x in reply[_BUDGET:_TRANSITIONS])
    if deposits is not None and withdrawals is not None:
        budget.fleet_retry = (deposits, withdrawals)
    if spent is not None:
        budget.fleet_spend = (spent, resets_in)


def record_args(
    permit: int, outcome: Outcome, open_for: float | None, why: str, pause: float | None
) -> tuple[object, ...]:
    """The op-specific arguments of a report."""
    return (permit, outcome.value, _opt(open_for), why, _opt(pause))


def observe_args(limits: RateLimits) -> tuple[object, ...]:
    """The op-specific arguments of an observation: each bucket as reported?, limit,
    remaining, reset."""

    def bucket(b: Bucket | None) -> tuple[object, ...]:
        if b is None:
            return ("", "", "", "")
        return ("1", _opt(b.limit), _opt(b.remaining), _opt(b.reset))

    return (*bucket(limits.requests), *bucket(limits.tokens))


def view(reply: Sequence[Any], config: CircuitBreakerConfig, key: str) -> View:
    """The circuit (and throttle) a reply describes."""
    transitions = tuple(
        Transition(
            CircuitState(text(reply[i])), CircuitState(text(reply[i + 1])), text(reply[i + 2]), 0.0
        )
        for i in range(_TRANSITIONS, len(reply), 3)
    )
    throttle: dict[str, float | int | None] | None = None
    if config.throttle:
        paused, requests, tokens, reset_in = (number(x) for x in reply[9:13])
        throttle = {
            "paused_for": paused,
            "requests_remaining": None if requests is None else int(requests),
            "tokens_remaining": None if tokens is None else int(tokens),
            "reset_in": reset_in,
        }
    said = text(reply[13])
    news = None
    if said:
        news = ThrottleNews(said == "THROTTLED", text(reply[15]), number(reply[14]) or 0.0)
    repaired = bool(int(reply[6]))
    if repaired:
        logger.warning("corrupt or foreign data under %r replaced by a CLOSED circuit", shown(key))
    return View(
        CircuitState(text(reply[1])),
        int(reply[2]),
        int(reply[3]),
        number(reply[4]),
        number(reply[5]),
        transitions,
        repaired=repaired,
        clean=bool(int(reply[7])),
        throttle=throttle,
        news=news,
    )


def admission(reply: Sequence[Any], config: CircuitBreakerConfig, key: str) -> Admission:
    """The admission a reply describes (its permit, view, throttle wait and lease)."""
    lease = tuple(float(wait) for wait in text(reply[16]).split(",") if wait)
    return Admission(int(reply[0]), view(reply, config, key), float(text(reply[8])), lease)


# The hash fields the status listing reads: circuit, then throttle (paused until, interval,
# capacity, theoretical arrival time).
LISTED_FIELDS = ("state", "fc", "sc", "opened_at", "open_until", "held", "pu", "ri", "rc", "rt")


_STATES = {state.value: state for state in CircuitState}


def plain(value: Any) -> str:
    """A listed field as text ("" when absent)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(string: str) -> float | None:
    """A stored number ("" when absent: None); ``ValueError`` for one that is not finite
    ("inf", "nan", "1e400"): garbage, as letters are (a listing never shows Infinity)."""
    if not string:
        return None
    number = float(string)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {string[:20]!r}")
    return number


def circuit_fields(got: Sequence[str], now: float) -> dict[str, Any] | None:
    """One circuit's ``{state, failure_count, success_count, opened_at, retry_after,
    throttle}`` from its :data:`LISTED_FIELDS` as text (:func:`plain`; "" when absent) at
    server time ``now`` (garbage: None). Runs once per circuit of a listing."""
    state = _STATES.get(got[0])
    if state is None:
        return None
    try:
        open_until = _float(got[4])
        opened_at = _float(got[3])
        failures, successes = int(got[1] or 0), int(got[2] or 0)
    except ValueError:
        return None
    retry_after: float | None = 0.0
    if state is CircuitState.OPEN:
        if got[5] == "1":
            retry_after = None
        elif open_until is not None and now >= open_until:
            state, retry_after = CircuitState.HALF_OPEN, 0.0
        elif open_until is not None:
            retry_after = open_until - now
    return {
        "state": state.value,
        "failure_count": failures,
        "success_count": successes,
        "opened_at": opened_at,
        "retry_after": retry_after,
        "throttle": _throttle_fields(got[6:], now),
    }


def _throttle_fields(fields: Sequence[str], now: float) -> dict[str, float | int | None]:
    """``{paused_for, requests_remaining}`` from a circuit's throttle fields (garbage: none)."""
    if not any(fields):  # no throttle state kept: the common case
        return {"paused_for": None, "requests_remaining": None}
    try:
        paused_until, interval, capacity, tat = (_float(f) for f in fields)
    except ValueError:
        return {"paused_for": None, "requests_remaining": None}
    remaining = None
    if interval and capacity and interval > 0:
        used = max(0.0, (tat if tat is not None else now) - now) / interval
        remaining = max(0, min(int(capacity), int(capacity - used)))
    paused = None if paused_until is None else max(0.0, paused_until - now)
    return {"paused_for": paused, "requests_remaining": remaining}
