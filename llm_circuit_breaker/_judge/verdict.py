"""What a failed attempt means: one pure decision for the breaker, the retries and fallbacks.

:func:`judge` turns an exception (classified once, see :mod:`._classify`) and the rules in force
into a frozen :class:`Verdict`: the breaker's outcome (failure, ignored, throttled, or a failure
that opens the circuit now for N seconds), whether ``with_retry`` retries it, the server's wait
hint and a reason in words. Every layer reads its own column of the same verdict.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._judge.classify import classify
from llm_circuit_breaker._judge.kinds import (
    NOT_PROVIDER_FAILURES,
    TRANSPORT_KINDS,
    Classification,
    ErrorKind,
)
from llm_circuit_breaker._judge.probe import attr
from llm_circuit_breaker._judge.refusal import refusal_of
from llm_circuit_breaker._redact import hide_context, redact_text
from llm_circuit_breaker.config import BreakerRules, CircuitBreakerConfig, RetryConfig
from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError

__all__ = ["Verdict", "judge"]

logger = logging.getLogger("llm_circuit_breaker")

# Ends of a call that say nothing about the provider's health (and asyncio's CancelledError,
# checked apart: importing asyncio to name it would cost every program ~10 ms at start-up).
_NEVER_FAILURES = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _cancelled(exc: BaseException) -> bool:
    """A runtime cancelled the call (asyncio, trio, anyio on either, a killed greenlet)."""
    # Nothing can be cancelled by a runtime that is not loaded: only loaded ones are asked.
    for module, name in _CANCELLATIONS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


_CANCELLATIONS = (
    ("asyncio", "CancelledError"),
    ("trio", "Cancelled"),
    ("greenlet", "GreenletExit"),
)


_RETRYABLE_KINDS = TRANSPORT_KINDS  # not POOL: the client's own pool, full, is ours to fix
_DEFAULT_CONFIG = CircuitBreakerConfig()
_DEFAULT_RETRY = RetryConfig()

_NO_RULES = BreakerRules()


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The meaning of one failed attempt, for every layer that handles it."""

    outcome: Outcome  # for the breaker: FAILURE, IGNORED or THROTTLED
    retry: bool  # for with_retry: worth another attempt
    hint: float | None  # the server's wait in seconds (honoured when retrying or pacing)
    open_for: float | None  # open the circuit now for this long (a failure only)
    reason: str  # in words, for CircuitOpenError.reason and the logs
    kind: ErrorKind
    status: int | None


def judge(
    exc: BaseException,
    config: CircuitBreakerConfig = _DEFAULT_CONFIG,
    retry: RetryConfig = _DEFAULT_RETRY,
    rules: BreakerRules = _NO_RULES,
    *,
    name: str = "",
) -> Verdict:
    """Decide what ``exc`` means under ``config`` (the breaker's), ``retry`` and ``rules``.

    Never raises: an error that cannot be judged (a hostile ``__instancecheck__``, a body that
    breaks what reads it) is a failure, not retried, so an attempt is always reported."""
    try:
        return _judge(exc, config, retry, rules, name)
    except Exception:
        hide_context()
        logger.exception(
            "circuit %r: could not judge an error; counted as a failure", redact_text(name)
        )
        return Verdict(Outcome.FAILURE, False, None, None, "unjudged error", ErrorKind.OTHER, None)


def _judge(
    exc: BaseException,
    config: CircuitBreakerConfig,
    retry: RetryConfig,
    rules: BreakerRules,
    name: str,
) -> Verdict:
    if isinstance(exc, ThrottledError):
        wait = exc.retry_after
        retry_it = retry.respect_retry_after and wait <= retry.max_delay
        return Verdict(
            Outcome.IGNORED, retry_it, wait, None, "throttled", ErrorKind.RATE_LIMIT, None
        )
    if isinstance(exc, CircuitOpenError):
        return Verdict(
            Outcome.IGNORED, False, exc.retry_after, None, "circuit open", ErrorKind.OTHER, None
        )
    refused = refusal_of(exc)  # an SDK's error around the httpx transport's refusal
    if refused is not None:
        return _judge(refused, config, retry, rules, name)
    found = classify(exc)
    hint = found.retry_after if retry.respect_retry_after else None
    outcome, open_for, reason = _breaker_column(exc, found, config, rules, name)
    return Verdict(
        outcome, _retried(exc, found, retry, hint), hint, open_for, reason, found.kind, found.status
    )


def _describe(found: Classification) -> str:
    where = f"HTTP {found.status}" if found.status is not None else found.kind.value
    return f"{where} ({_code(found)})" if found.error_type else where


def _code(found: Classification) -> str:
    """The provider's error code as a reason shows it (a hostile one may echo a key)."""
    return redact_text(found.error_type or "")


def _breaker_column(
    exc: BaseException,
    found: Classification,
    config: CircuitBreakerConfig,
    rules: BreakerRules,
    name: str,
) -> tuple[Outcome, float | None, str]:
    if _ignored(exc, rules):
        return Outcome.IGNORED, None, ""
    counted = found.kind not in NOT_PROVIDER_FAILURES  # a rate limit is judged apart
    if rules.failure_predicate is not None:
        try:
            counted = bool(rules.failure_predicate(exc))
        except Exception:
            hide_context()
            logger.exception(
                "failure_predicate of circuit %r raised; counting the error as a failure",
                redact_text(name),
            )
            counted = True
    elif found.kind is ErrorKind.RATE_LIMIT:
        return (
            (Outcome.THROTTLED, None, _describe(found))
            if config.throttle
            else _failure(found, config)
        )
    if not counted:
        return Outcome.IGNORED, None, ""
    return _failure(found, config)


def _ignored(exc: BaseException, rules: BreakerRules, depth: int = 0) -> bool:
    """Whether ``exc`` says nothing of the provider: a cancellation, an interrupt, an
    excluded type, or an exception group made of those alone (a task group cancelled)."""
    if (
        isinstance(exc, _NEVER_FAILURES)
        or _cancelled(exc)
        or (rules.exclude and isinstance(exc, rules.exclude))
    ):
        return True
    if depth >= 8 or not _is_group(exc):
        return False
    group = attr(exc, "exceptions")  # guarded: a hostile attribute says nothing
    if isinstance(group, tuple) and group:
        return all(
            isinstance(each, BaseException) and _ignored(each, rules, depth + 1) for each in group
        )
    return False


def _is_group(exc: BaseException) -> bool:
    return any(cls.__name__ == "BaseExceptionGroup" for cls in type(exc).__mro__)


def _failure(
    found: Classification, config: CircuitBreakerConfig
) -> tuple[Outcome, float | None, str]:
    if found.kind is ErrorKind.QUOTA:
        return (
            Outcome.FAILURE,
            config.reset_timeout,
            f"quota exhausted: {_code(found) if found.error_type else found.status}",
        )
    hint = found.retry_after
    if hint is not None and hint >= config.reset_timeout:
        return Outcome.FAILURE, hint, f"{_describe(found)}: server asked to wait {hint:g}s"
    return Outcome.FAILURE, None, _describe(found)


def _retried(
    exc: BaseException, found: Classification, retry: RetryConfig, hint: float | None
) -> bool:
    if not isinstance(exc, Exception):
        return False
    # Quota, this process's own faults and a wait longer than max_delay end the retries even
    # for a type listed in retry_on (retry_on=(openai.RateLimitError,) meets insufficient_quota)
    if found.kind is ErrorKind.QUOTA or found.kind is ErrorKind.LOCAL:
        return False
    if hint is not None and hint > retry.max_delay:
        return False  # the server wants longer than we may wait: fail now
    if retry.retry_on and isinstance(exc, retry.retry_on):
        return True
    if found.should_retry is not None:
        return found.should_retry
    if found.status is not None:
        return found.status in retry.retry_on_status_codes
    return found.kind in _RETRYABLE_KINDS
