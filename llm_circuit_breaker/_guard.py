"""How one decorator or helper reports calls to its breaker, with its own failure rules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from llm_circuit_breaker._classify import ErrorKind, classify
from llm_circuit_breaker._state import Outcome
from llm_circuit_breaker.breaker import CircuitBreaker

__all__ = ["ExcludeTypes", "FailurePredicate", "Guard", "Verdict", "check_rules"]

logger = logging.getLogger("llm_circuit_breaker")

# Ends of a call that say nothing about the provider's health.
_NEVER_FAILURES = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)

ExcludeTypes = type[BaseException] | tuple[type[BaseException], ...]
FailurePredicate = Callable[[BaseException], bool]
Verdict = tuple[Outcome, float | None, str]  # outcome, open the circuit for (s), why
_IGNORED: Verdict = (Outcome.IGNORED, None, "")
_FAILURE: Verdict = (Outcome.FAILURE, None, "")


class Guard:
    """A breaker plus one caller's ``exclude`` / ``failure_predicate`` rules.

    ``enter()`` (a permit, or the CircuitOpenError to raise) and ``succeeded(permit)`` are the
    breaker's own methods, bound once so that a guarded call pays for no extra frame;
    ``failed(permit, exc)`` judges the exception.
    """

    __slots__ = ("_exclude", "_predicate", "breaker", "enter", "succeeded")

    def __init__(
        self,
        breaker: CircuitBreaker,
        exclude: ExcludeTypes = (),
        failure_predicate: FailurePredicate | None = None,
    ) -> None:
        self.breaker = breaker
        # Any: with an asyncio store these return coroutines (the async shells await them).
        self.enter: Callable[[], Any] = breaker.enter
        self.succeeded: Callable[[int], Any] = breaker.record_success
        self._exclude = check_rules(exclude, failure_predicate)
        self._predicate = failure_predicate

    def failed(self, permit: int, exc: BaseException) -> Any:
        """Report that the call holding ``permit`` raised ``exc`` (a coroutine to await when
        the breaker's store is asyncio, else None)."""
        outcome, open_for, why = self.judge(exc)
        return self.breaker.record(permit, outcome, open_for=open_for, why=why)

    def judge(self, exc: BaseException) -> Verdict:
        """Decide what ``exc`` means for the breaker (SPEC section 5a, then the caller's rules)."""
        if isinstance(exc, _NEVER_FAILURES) or (self._exclude and isinstance(exc, self._exclude)):
            return _IGNORED
        found = classify(exc)
        counted = found.counts_as_failure
        if self._predicate is not None:
            try:
                counted = bool(self._predicate(exc))
            except Exception:
                logger.exception(
                    "failure_predicate of circuit %r raised; counting the error as a failure",
                    self.breaker.name,
                )
                counted = True
        if not counted:
            return _IGNORED
        reset_timeout = self.breaker.config.reset_timeout
        if found.kind is ErrorKind.QUOTA:
            return (Outcome.FAILURE, reset_timeout, "quota or billing exhausted")
        hint = found.retry_after
        if hint is not None and hint >= reset_timeout:
            return (Outcome.FAILURE, hint, f"server asked to wait {hint:g}s")
        return _FAILURE


def check_rules(
    exclude: ExcludeTypes, failure_predicate: FailurePredicate | None
) -> tuple[type[BaseException], ...]:
    """Validate a caller's rules; return ``exclude`` as a tuple of exception types."""
    if failure_predicate is not None and not callable(failure_predicate):
        raise TypeError(f"failure_predicate must be callable, got {failure_predicate!r}")
    types = exclude if isinstance(exclude, tuple) else (exclude,)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"exclude takes exception types, got {item!r}")
    return types
