"""The retry policy: what a failure is worth retrying and how long to wait, as the
strategies handed to tenacity (``retry``, ``wait``, ``stop``, ``before_sleep``: plain callables
over its ``RetryCallState``), shared by the sync and async loops of :mod:`.retry`."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker.config import RetryConfig
from llm_circuit_breaker.errors import ThrottledError

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from llm_circuit_breaker._judge.verdict import Verdict

__all__ = ["RetryPolicy"]

logger = logging.getLogger("llm_circuit_breaker")

_MAX_HINT_JITTER = 1.0  # seconds: a server's wait is spread by up to 10%, at most this
# Waits for a throttle slot use no retry, but a call gives up after this many of them.
_MAX_THROTTLE_WAITS = 10


class RetryPolicy:
    """What to retry and how long to wait: the strategies handed to tenacity."""

    def __init__(
        self,
        config: RetryConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        random_uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.config = config
        self.clock = clock
        self._uniform = random_uniform
        self._last: tuple[BaseException, Verdict] | None = None

    # -- decisions -------------------------------------------------------------------------

    def verdict(self, exc: BaseException) -> Verdict:
        """What ``exc`` means (the verdict module loads with the first failure). The shell,
        tenacity's ``retry`` and ``wait`` all ask about the same failure: judged once."""
        last = self._last
        if last is not None and last[0] is exc:
            return last[1]
        from llm_circuit_breaker._judge.verdict import judge

        verdict = judge(exc, retry=self.config)
        self._last = (exc, verdict)  # one tuple swap: safe for threads sharing the policy
        return verdict

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt."""
        return self.verdict(exc).retry

    def delay(self, retry_number: int, exc: BaseException | None) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based) after ``exc``.

        A server's hint is a minimum: with ``jitter`` it is spread upwards by up to 10% (at
        most 1 s) so that callers told the same wait do not return in lockstep.
        """
        config = self.config
        if exc is not None:
            hint = self.verdict(exc).hint
            if hint is not None and hint <= config.max_delay:
                if not config.jitter:
                    return hint
                return hint + self._uniform(0.0, min(hint * 0.1, _MAX_HINT_JITTER))
        exponent = min(retry_number - 1, 1000)  # 2.0 ** 1000 is finite; past that it overflows
        ceiling = min(config.max_delay, config.initial_delay * config.backoff_factor**exponent)
        return self._uniform(0.0, ceiling) if config.jitter else ceiling

    # -- tenacity strategies ---------------------------------------------------------------

    def retry(self, state: RetryCallState) -> bool:
        """tenacity ``retry``: retry a failed attempt whose error is retryable."""
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        return self.should_retry(_error(state))

    def wait(self, state: RetryCallState) -> float:
        """tenacity ``wait``: the hint or the (jittered) exponential backoff."""
        return self.delay(state.attempt_number, _error(state))

    def stopper(self, deadline_at: float | None) -> Callable[[RetryCallState], bool]:
        """tenacity ``stop`` for one call: attempts used up, or the next sleep ends too late."""

        throttled = 0  # attempts refused by a throttle: waiting for a slot is not a retry

        def stop(state: RetryCallState) -> bool:
            nonlocal throttled
            if isinstance(_error(state), ThrottledError):
                throttled += 1
                if throttled > _MAX_THROTTLE_WAITS:
                    return True
            if state.attempt_number - throttled > self.config.max_retries:
                return True
            return deadline_at is not None and self.clock() + state.upcoming_sleep > deadline_at

        return stop

    def before_sleep(self, state: RetryCallState) -> None:
        """tenacity ``before_sleep``: log, count the retry and call ``on_retry`` (or raise the
        breaker's refusal at once when the breaker under us is open: no sleep first)."""
        from llm_circuit_breaker._redact import redact_text

        exc = _error(state)
        _raise_if_refused(state.fn, exc)
        delay = state.upcoming_sleep
        logger.info(
            "retrying %s in %.3fs after attempt %d failed: %s: %s",
            state.get_fn_name(),
            delay,
            state.attempt_number,
            type(exc).__name__,
            redact_text(str(exc))[:300],
        )
        breaker = getattr(state.fn, "breaker", None)
        if breaker is not None:
            breaker.record_retry(state.attempt_number, exc, delay)
        on_retry = self.config.on_retry
        if on_retry is not None:
            try:
                on_retry(state.attempt_number, exc, delay)
            except Exception:
                logger.exception("on_retry callback raised; retrying anyway")

    def deadline_at(self, started: float) -> float | None:
        """When a call that started at ``started`` must be done."""
        deadline = self.config.deadline
        return None if deadline is None else started + deadline


def _raise_if_refused(fn: Any, exc: BaseException) -> None:
    """When the breaker under us is open now, retrying is pointless: raise its refusal at once,
    chained to the error that made it open (no sleep first)."""
    breaker = getattr(fn, "breaker", None)
    if breaker is None or breaker.is_async:
        return
    refusal = breaker.refusal_now()
    if refusal is not None:
        try:
            raise refusal from exc
        finally:
            del refusal


def _error(state: RetryCallState) -> BaseException:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    if exc is None:  # pragma: no cover - tenacity asks only about failed attempts
        raise RuntimeError("no failed attempt to inspect")
    return exc
