"""``@with_retry``: retries driven by tenacity, with LLM-aware decisions and waits.

The first attempt is a plain call. Only when it fails with a retryable error is a tenacity
``Retrying`` / ``AsyncRetrying`` loop entered, whose attempt 1 replays that failure instead of
calling again. The loop is driven by one :class:`RetryPolicy` (a ``retry`` predicate, a
``wait`` and a ``stop``, plain callables over tenacity's ``RetryCallState``) shared by the sync
and async paths. Generators and async generators are retried while they have yielded nothing.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from typing import Any, ParamSpec, TypeVar, overload

from tenacity import AsyncRetrying, RetryCallState, Retrying

from llm_circuit_breaker._classify import TRANSPORT_KINDS, ErrorKind, classify
from llm_circuit_breaker.errors import CircuitOpenError, redact_text

__all__ = ["DEFAULT_RETRY_STATUS_CODES", "OnRetry", "RetryPolicy", "with_retry"]

logger = logging.getLogger("llm_circuit_breaker")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_RETRY_STATUS_CODES = (408, 409, 429, 500, 502, 503, 504, 529)
OnRetry = Callable[[int, BaseException, float], object]  # (attempt that failed, error, delay)
_RETRYABLE_KINDS = TRANSPORT_KINDS | {ErrorKind.POOL}


class RetryPolicy:
    """What to retry and how long to wait: the strategies handed to tenacity."""

    def __init__(
        self,
        *,
        max_retries: int = 3,
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        backoff_factor: float = 2.0,
        jitter: bool = True,
        retry_on_status_codes: tuple[int, ...] = DEFAULT_RETRY_STATUS_CODES,
        retry_on: tuple[type[BaseException], ...] = (),
        respect_retry_after: bool = True,
        deadline: float | None = None,
        on_retry: OnRetry | None = None,
        clock: Callable[[], float] = time.monotonic,
        random_uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        _check_count("max_retries", max_retries)
        _check_seconds("initial_delay", initial_delay, allow_zero=True)
        _check_seconds("max_delay", max_delay, allow_zero=True)
        if isinstance(backoff_factor, bool) or not isinstance(backoff_factor, (int, float)):
            raise TypeError(f"backoff_factor must be a number, got {backoff_factor!r}")
        if not 1.0 <= backoff_factor < float("inf"):
            raise ValueError(f"backoff_factor must be >= 1, got {backoff_factor!r}")
        if max_delay < initial_delay:
            raise ValueError(
                f"max_delay ({max_delay!r}) must not be less than initial_delay ({initial_delay!r})"
            )
        if deadline is not None:
            _check_seconds("deadline", deadline)
        codes = tuple(retry_on_status_codes)
        for code in codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                raise ValueError(
                    f"retry_on_status_codes holds {code!r}, not an HTTP status 100-599"
                )
        retry_types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        for item in retry_types:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise TypeError(f"retry_on takes exception types, got {item!r}")
        if on_retry is not None and not callable(on_retry):
            raise TypeError(f"on_retry must be callable, got {on_retry!r}")
        self.max_retries = max_retries
        self.initial_delay = float(initial_delay)
        self.max_delay = float(max_delay)
        self.backoff_factor = float(backoff_factor)
        self.jitter = jitter
        self.retry_on_status_codes = frozenset(codes)
        self.retry_on = retry_types
        self.respect_retry_after = respect_retry_after
        self.deadline = deadline
        self.on_retry = on_retry
        self.clock = clock
        self._uniform = random_uniform

    # -- decisions -------------------------------------------------------------------------

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt (SPEC section 5a)."""
        if isinstance(exc, CircuitOpenError) or not isinstance(exc, Exception):
            return False
        if self.retry_on and isinstance(exc, self.retry_on):
            return True
        found = classify(exc)
        if found.kind is ErrorKind.QUOTA:
            return False
        hint = found.retry_after if self.respect_retry_after else None
        if hint is not None and hint > self.max_delay:
            return False  # the server wants longer than we may wait: fail now
        if found.should_retry is not None:
            return found.should_retry
        if found.status is not None:
            return found.status in self.retry_on_status_codes
        return found.kind in _RETRYABLE_KINDS

    def delay(self, retry_number: int, exc: BaseException | None) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based) after ``exc``."""
        if self.respect_retry_after and exc is not None:
            hint = classify(exc).retry_after
            if hint is not None and hint <= self.max_delay:
                return hint
        exponent = min(retry_number - 1, 1000)  # 2.0 ** 1000 is finite; past that it overflows
        ceiling = min(self.max_delay, self.initial_delay * self.backoff_factor**exponent)
        return self._uniform(0.0, ceiling) if self.jitter else ceiling

    # -- tenacity strategies ---------------------------------------------------------------

    def retry(self, state: RetryCallState) -> bool:
        """tenacity ``retry``: retry a failed attempt whose error is retryable."""
        outcome = state.outcome
        return outcome is not None and outcome.failed and self.should_retry(_error(state))

    def wait(self, state: RetryCallState) -> float:
        """tenacity ``wait``: the hint or the (jittered) exponential backoff."""
        return self.delay(state.attempt_number, _error(state))

    def stopper(self, deadline_at: float | None) -> Callable[[RetryCallState], bool]:
        """tenacity ``stop`` for one call: attempts used up, or the next sleep ends too late."""

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > self.max_retries:
                return True
            return deadline_at is not None and self.clock() + state.upcoming_sleep > deadline_at

        return stop

    def before_sleep(self, state: RetryCallState) -> None:
        """tenacity ``before_sleep``: log, count the retry and call ``on_retry``."""
        exc = _error(state)
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
        if self.on_retry is not None:
            try:
                self.on_retry(state.attempt_number, exc, delay)
            except Exception:
                logger.exception("on_retry callback raised; retrying anyway")

    def deadline_at(self, started: float) -> float | None:
        """When a call that started at ``started`` must be done."""
        return None if self.deadline is None else started + self.deadline


def _error(state: RetryCallState) -> BaseException:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    if exc is None:  # pragma: no cover - tenacity asks only about failed attempts
        raise RuntimeError("no failed attempt to inspect")
    return exc


def _replaying(first: BaseException, call: Callable[..., R]) -> Callable[..., R]:
    """``call``, except that its first use raises ``first`` (the plain attempt's failure)."""
    pending = [first]

    @functools.wraps(call)
    def attempt(*args: Any, **kwargs: Any) -> R:
        if pending:
            raise pending.pop()
        return call(*args, **kwargs)

    return attempt


def _areplaying(
    first: BaseException, call: Callable[..., Awaitable[R]]
) -> Callable[..., Awaitable[R]]:
    pending = [first]

    @functools.wraps(call)
    async def attempt(*args: Any, **kwargs: Any) -> R:
        if pending:
            raise pending.pop()
        return await call(*args, **kwargs)

    return attempt


@overload
def with_retry(max_retries: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def with_retry(
    max_retries: int = 3,
    initial_delay: float = 1.0,
    max_delay: float = 30.0,
    backoff_factor: float = 2.0,
    jitter: bool = True,
    retry_on_status_codes: tuple[int, ...] = DEFAULT_RETRY_STATUS_CODES,
    retry_on: tuple[type[BaseException], ...] = (),
    respect_retry_after: bool = True,
    deadline: float | None = None,
    on_retry: OnRetry | None = None,
    *,
    sleep: Callable[[float], None] = ...,
    async_sleep: Callable[[float], Awaitable[None]] = ...,
    clock: Callable[[], float] = ...,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def with_retry(
    max_retries: int | Callable[..., Any] = 3,
    initial_delay: float = 1.0,
    max_delay: float = 30.0,
    backoff_factor: float = 2.0,
    jitter: bool = True,
    retry_on_status_codes: tuple[int, ...] = DEFAULT_RETRY_STATUS_CODES,
    retry_on: tuple[type[BaseException], ...] = (),
    respect_retry_after: bool = True,
    deadline: float | None = None,
    on_retry: OnRetry | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Retry a function on the errors that are worth it (SPEC sections 3 and 5a).

    At most ``max_retries`` retries; the delay before retry n is ``min(max_delay,
    initial_delay * backoff_factor ** (n-1))``, drawn uniformly from [0, that] with ``jitter``.
    A server hint (``retry-after-ms``, ``retry-after``) replaces it when <= ``max_delay``; a
    longer one ends the retries at once. ``deadline`` caps the whole call, waits included.
    The original exception is re-raised when retries run out. ``on_retry(attempt, exc,
    delay)`` is called before each wait. ``sleep`` / ``async_sleep`` / ``clock`` are for tests.
    """
    if callable(max_retries):  # used bare: @with_retry
        return with_retry()(max_retries)
    policy = RetryPolicy(
        max_retries=max_retries,
        initial_delay=initial_delay,
        max_delay=max_delay,
        backoff_factor=backoff_factor,
        jitter=jitter,
        retry_on_status_codes=retry_on_status_codes,
        retry_on=retry_on,
        respect_retry_after=respect_retry_after,
        deadline=deadline,
        on_retry=on_retry,
        clock=clock,
    )
    strategies: dict[str, Any] = {
        "retry": policy.retry,
        "wait": policy.wait,
        "before_sleep": policy.before_sleep,
        "reraise": True,
    }
    retrying = Retrying(sleep=sleep, **strategies)
    aretrying = AsyncRetrying(sleep=async_sleep, **strategies)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if not callable(func):
            raise TypeError(f"with_retry decorates callables, got {func!r}")
        if inspect.isasyncgenfunction(func):
            return _async_gen_shell(func, policy, aretrying)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):
            return _async_shell(func, policy, aretrying)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(func):
            return _gen_shell(func, policy, retrying)  # type: ignore[return-value]
        return _sync_shell(func, policy, retrying)

    return decorate


def _sync_shell(func: Callable[P, R], policy: RetryPolicy, retrying: Retrying) -> Callable[P, R]:
    deadline = policy.deadline

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = policy.clock() if deadline is not None else 0.0
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not policy.should_retry(exc):
                raise
            loop = retrying.copy(stop=policy.stopper(policy.deadline_at(started)))
            return loop(_replaying(exc, func), *args, **kwargs)

    return wrapper


def _async_shell(
    func: Callable[P, Awaitable[R]], policy: RetryPolicy, retrying: AsyncRetrying
) -> Callable[P, Awaitable[R]]:
    deadline = policy.deadline

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = policy.clock() if deadline is not None else 0.0
        try:
            return await func(*args, **kwargs)
        except Exception as exc:
            if not policy.should_retry(exc):
                raise
            loop = retrying.copy(stop=policy.stopper(policy.deadline_at(started)))
            return await loop(_areplaying(exc, func), *args, **kwargs)

    return wrapper


_EXHAUSTED = object()  # a stream that ended before its first item


def _gen_shell(
    func: Callable[..., Generator[Any, Any, Any]], policy: RetryPolicy, retrying: Retrying
) -> Callable[..., Generator[Any, Any, Any]]:
    def start(*args: Any, **kwargs: Any) -> tuple[Generator[Any, Any, Any], Any]:
        stream = func(*args, **kwargs)
        try:
            return stream, next(stream)
        except StopIteration:
            return stream, _EXHAUSTED

    retried_start = _sync_shell(functools.wraps(func)(start), policy, retrying)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        # Retried until the first item arrives; after that a failure is the caller's to see.
        stream, first = retried_start(*args, **kwargs)
        if first is _EXHAUSTED:
            return
        try:
            yield first
            yield from stream
        finally:
            stream.close()

    return wrapper


def _async_gen_shell(
    func: Callable[..., AsyncGenerator[Any, Any]], policy: RetryPolicy, retrying: AsyncRetrying
) -> Callable[..., AsyncIterator[Any]]:
    async def start(*args: Any, **kwargs: Any) -> tuple[AsyncGenerator[Any, Any], Any]:
        stream = func(*args, **kwargs)
        try:
            return stream, await stream.__anext__()
        except StopAsyncIteration:
            return stream, _EXHAUSTED

    retried_start = _async_shell(functools.wraps(func)(start), policy, retrying)

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        stream, first = await retried_start(*args, **kwargs)
        if first is _EXHAUSTED:
            return
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    return wrapper


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
